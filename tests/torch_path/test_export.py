"""export_onnx: the ONNX file holds the attnrewrite nodes the ONNX path writes, and
onnxruntime reproduces the rewritten torch module (trained weights included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import attnrewrite.torch as art
from tests.torch_path.models import HandAttention, batch, transformer


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options).run(None, feeds)


def _attnrewrite_ops(path: Path) -> list[str]:
    model = onnx.load(str(path))
    return [n.op_type for n in model.graph.node if n.domain == "attnrewrite"]


def test_exact_export_of_a_trained_transformer(tmp_path: Path) -> None:
    model = transformer("llama", "sdpa")
    inputs = batch(labels=False)
    fast = art.rewrite(model, inputs, "exact", strict=False)
    with torch.no_grad():  # a "training step": the export must carry the new weights
        model.lm_head.weight.mul_(1.5)
    report = art.export_onnx(fast, inputs, tmp_path / "fast.onnx")
    assert _attnrewrite_ops(tmp_path / "fast.onnx") == ["ExactAttention"]
    assert report["blocks"][0]["mask"] == "causal_padding"
    [logits] = _ort(tmp_path / "fast.onnx", {k: v.numpy() for k, v in inputs.items()})
    np.testing.assert_allclose(logits, fast(**inputs).logits.detach().numpy(), atol=1e-5)


def test_a_soft_capped_model_exports_with_its_cap(tmp_path: Path) -> None:
    model = transformer("gemma2", "eager")
    inputs = batch(labels=False)
    fast = art.rewrite(model, inputs, "exact", strict=False)
    report = art.export_onnx(fast, inputs, tmp_path / "fast.onnx")
    assert _attnrewrite_ops(tmp_path / "fast.onnx") == ["ExactAttention"]
    assert report["blocks"][0]["softcap"] == 1.5
    [logits] = _ort(tmp_path / "fast.onnx", {k: v.numpy() for k, v in inputs.items()})
    np.testing.assert_allclose(logits, model(**inputs).logits.detach().numpy(), atol=1e-5)


def test_export_refuses_a_plain_module(tmp_path: Path) -> None:
    with pytest.raises(art.AttnRewriteError, match="module returned by"):
        art.export_onnx(HandAttention(), (torch.randn(1, 3, 8),), tmp_path / "x.onnx")
