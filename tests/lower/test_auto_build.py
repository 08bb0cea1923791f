"""`--method auto --target llvm`: the per-head plan's model (head groups gathered and
concatenated back) is compiled too, and the build matches onnxruntime on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("tvm")

from attnrewrite.cli import main
from attnrewrite.lower import load

MODEL = Path(__file__).resolve().parents[2] / "examples" / "tiny_lm" / "tiny-lm.onnx"
TEXT = Path(json.__file__).with_name("decoder.py")


def test_auto_plan_builds_for_llvm_and_matches_onnxruntime(tmp_path) -> None:
    out = tmp_path / "auto"
    argv = [str(MODEL), "--method", "auto", "--max-error", "0.3", "--seq-len", "256"]
    argv += ["--text", str(TEXT), "--tokenizer", "bytes", "--batch", "2", "--no-speed-check"]
    assert main([*argv, "--target", "llvm", "-o", str(out)]) == 0
    plan = json.loads((out / "rewrite.json").read_text())["auto"]
    assert sum(n for label, n in plan["won"].items() if label != "exact") >= 1  # not all exact
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 256, (2, 256)).astype(np.int64)}
    got = load(out).run(feeds)
    want = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )
    for a, b in zip(got, want, strict=True):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
