"""A logit soft-cap in the exact, window and vertical-slash bodies: each node, run in onnxruntime
with its `softcap` attribute, equals its torch reference in float64 (which caps the scaled
scores before the mask, as Gemma 2 does), on causal, windowed, masked and grouped-query blocks
and on lengths that split the exact body into chunks; and the references agree with each other
and with the cap written out."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import pytest
import torch

from attnrewrite import methods as references
from attnrewrite.methods.exact import bias_logits, masked_softmax_av, positions_mask
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.signature import Signature
from attnrewrite.substitute.standalone import node_model
from tests.bodies.harness import relative_error, run_onnx

CAP, SCALE, TOL = 1.5, 0.3, 1e-5
PLAIN = Signature(4, ir.DataType.FLOAT, "none", False, True, False, False, False, False)
SIGNATURES = {
    "causal": PLAIN,
    "bidirectional_bias": dataclasses.replace(PLAIN, causal=False, bias="additive"),
    "causal_window_gqa": dataclasses.replace(PLAIN, window=True, kv_repeat=True),
    "causal_padding": dataclasses.replace(PLAIN, bias="additive", keywise=True),
    "fp16_softmax32": dataclasses.replace(PLAIN, dtype=ir.DataType.FLOAT16, float32_softmax=True),
}
TOLERANCE = {"fp16_softmax32": 2e-3}  # the operands and the output rounded to fp16
METHODS = {
    "exact": {"chunks": 4},
    "window": {"width": 8, "sinks": 2},
    "verticalslash": {"vertical": 4, "slash": 6, "last": 3, "sinks": 1, "local": 2},
}
LENGTHS = [(1, 1), (13, 13), (37, 37), (5, 20)]


def _operands(sig: Signature, q_len: int, kv_len: int, seed: int) -> dict[str, torch.Tensor]:
    """q, k, v with scores of a few units (so the cap bends them) and the signature's mask."""
    gen = torch.Generator().manual_seed(seed)
    kv_heads = 1 if sig.kv_repeat else 2
    found = {
        "query": 2 * torch.randn(2, 2, q_len, 8, generator=gen),
        "key": 2 * torch.randn(2, kv_heads, kv_len, 8, generator=gen),
        "value": torch.randn(2, kv_heads, kv_len, 8, generator=gen),
    }
    if sig.bias == "additive":
        rows = 1 if sig.keywise else q_len
        bias = torch.randn(2, 1, rows, kv_len, generator=gen)
        found["mask"] = bias.masked_fill(torch.rand(bias.shape, generator=gen) < 0.2, -1e9)
    dtype = torch.float16 if sig.dtype == ir.DataType.FLOAT16 else torch.float32
    return {name: x.to(dtype) for name, x in found.items()}


@pytest.mark.parametrize("name", SIGNATURES)
@pytest.mark.parametrize("method", METHODS)
def test_body_caps_the_scores_as_the_reference(name: str, method: str) -> None:
    sig, params, tol = SIGNATURES[name], METHODS[method], TOLERANCE.get(name, TOL)
    if not sig.causal and not references.METHODS[method].bidirectional:
        pytest.skip(f"{method} is causal only")
    window = 6 if sig.window else None
    chosen = get_method(method, params)
    assert "softcap" in chosen.overload(dataclasses.replace(sig, softcap=True))
    model = node_model(
        chosen, dataclasses.replace(sig, softcap=True), scale=SCALE, window=window, softcap=CAP
    )
    for q_len, kv_len in LENGTHS:
        inputs = _operands(sig, q_len, kv_len, seed=q_len)
        out = run_onnx(model, {n: x.numpy() for n, x in inputs.items()})
        q, k, v = (inputs[n].double() for n in ("query", "key", "value"))
        mask = inputs.get("mask")
        common = {"scale": SCALE, "is_causal": sig.causal, "window": window, **params}
        ref = references.get(method)(q, k, v, bias=mask, softcap=CAP, **common)
        uncapped = references.get(method)(q, k, v, bias=mask, **common)
        assert relative_error(ref.numpy(), out) <= tol, (q_len, kv_len)
        if q_len > 1:  # the cap shows: the node is not the uncapped attention
            assert relative_error(uncapped.numpy(), out) > 10 * tol, (q_len, kv_len)


def test_references_agree_with_the_cap_written_out() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (2 * torch.randn(1, 2, 30, 8, generator=gen, dtype=torch.float64) for _ in "qkv")
    bias = torch.randn(1, 1, 30, 30, generator=gen, dtype=torch.float64)
    logits = CAP * torch.tanh(SCALE * q @ k.transpose(-1, -2) / CAP) + bias_logits(bias, q.dtype)
    allowed = positions_mask(30, 30, True, 7, q.device)
    written = masked_softmax_av(logits.masked_fill(~allowed, -torch.inf), v)
    common = {"scale": SCALE, "is_causal": True, "bias": bias, "window": 7, "softcap": CAP}
    exact = references.get("exact")(q, k, v, **common)
    window = references.get("window")(q, k, v, width=30, sinks=0, **common)  # every key
    assert torch.allclose(exact, written, rtol=0, atol=1e-12)
    assert torch.allclose(window, exact, rtol=0, atol=1e-12)


def test_methods_without_the_cap_refuse_it() -> None:
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="multipole cannot honour logit soft-capping"):
        references.get("multipole")(q, q, q, scale=SCALE, is_causal=True, softcap=CAP)
    with pytest.raises(ValueError, match="softcap must be a positive finite number"):
        references.get("exact")(q, q, q, scale=SCALE, is_causal=True, softcap=-1.0)
