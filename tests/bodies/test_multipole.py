"""The multipole body equals its torch reference (float64) in onnxruntime on every layer variant
it supports, at lengths unlike the export length (levels that come and go with the length), and
keeps the blocks it cannot honour exact."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

from attnrewrite import methods as references
from attnrewrite.layers import LayerSpec
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.signature import Signature
from tests.bodies.harness import (
    SMALL,
    SMALL_SPECS,
    body_error,
    function_model,
    layer_output,
    reference,
    relative_error,
    rewrite_layer,
    run_onnx,
    session,
)

TOL = 1e-5
SPECS = SMALL_SPECS
PARAMS = {
    "block4": {"block": 4},
    "block4_coarse2_levels2": {"block": 4, "coarse": 2, "levels": 2},
    "block6_coarse3_levels1": {"block": 6, "coarse": 3, "levels": 1},
    "block4_no_sinks": {"block": 4, "sinks": 0},
    "block4_sinks11": {"block": 4, "coarse": 2, "sinks": 11},  # sinks across several blocks
}
# (q_len, kv_len): a single token, small odd, several levels, KV cache, queries before keys
LENGTHS = [(1, None), (7, None), (203, None), (5, 9), (3, 100), (9, 5)]


def _run(spec: LayerSpec, params: dict, feeds: dict) -> np.ndarray:
    return layer_output(spec, "multipole", params, feeds)


def _error(spec: LayerSpec, params: dict, q_len: int, kv_len: int | None, opset: int = 17):
    return body_error(spec, "multipole", params, q_len, kv_len, seed=q_len, opset=opset)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("params", PARAMS)
def test_body_matches_reference(name, params) -> None:
    for q_len, kv_len in LENGTHS:
        err = _error(SPECS[name], PARAMS[params], q_len, kv_len)
        assert err <= TOL, (q_len, kv_len, err)


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("name", ["causal_padding", "bidirectional_padding_gqa"])
def test_body_matches_reference_at_newer_opsets(name, opset) -> None:
    params = PARAMS["block4_coarse2_levels2"]
    for q_len, kv_len in [(1, None), (77, None), (4, 61)]:
        assert _error(SPECS[name], params, q_len, kv_len, opset) <= TOL


@pytest.mark.parametrize(
    ("name", "params"),
    [("causal", {"block": 2, "coarse": 2}), ("bidirectional", {"block": 2})],
)
def test_every_length(name, params) -> None:
    """Lengths across every level boundary (block 2: J = 0 .. 7), one session."""
    spec = SPECS[name]
    for n in [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 64, 65, 129]:
        feeds = spec.inputs(1, n, seed=n)
        err = relative_error(reference(spec, "multipole", params, feeds), _run(spec, params, feeds))
        assert err <= TOL, (n, err)


@pytest.mark.parametrize("name", ["causal", "bidirectional", "causal_padding", "causal_gqa"])
def test_one_block_is_exact_attention(name) -> None:
    """block >= Skv: everything is near field, the body computes exact attention."""
    spec = SPECS[name]
    for q_len, kv_len in [(1, None), (33, None), (64, None), (5, 40)]:
        feeds = spec.inputs(2, q_len, kv_len, seed=q_len)
        exact = reference(spec, "exact", None, feeds)
        assert relative_error(exact, _run(spec, {"block": 64}, feeds)) <= TOL


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (LayerSpec(mask="padding", window=5, **SMALL), "window"),
        (LayerSpec(causal=False, mask="bias", **SMALL), "key-wise"),
    ],
)
def test_blocks_it_cannot_honour_stay_exact(spec, reason) -> None:
    proto, result = rewrite_layer(spec, "multipole", {"block": 4})
    (block,) = result.rewritten
    assert block.method.name == "exact"
    assert block.fallback is not None and reason in block.fallback
    feeds = spec.inputs(2, 37)
    assert relative_error(reference(spec, "exact", None, feeds), run_onnx(proto, feeds)) <= 1e-6


def test_float16_computes_in_float32() -> None:
    spec = LayerSpec(mask="padding", dtype=torch.float16, **SMALL)
    params = PARAMS["block4_coarse2_levels2"]
    feeds = spec.inputs(2, 77)
    out = _run(spec, params, feeds)
    assert out.dtype == np.float16
    # the reference computes in float32 from the same fp16 inputs; only the output is rounded
    assert relative_error(reference(spec, "multipole", params, feeds), out) <= 1e-3


@pytest.mark.parametrize("causal", [True, False])
def test_rank3_operands(causal) -> None:
    """[B*H, S, d] operands, as some exporters write them, through the function directly."""
    method = get_method("multipole", {"block": 4, "coarse": 2})
    sig = Signature(3, ir.DataType.FLOAT, "none", False, causal, False, False, False, False)
    model = function_model(method, sig)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, n, 8, generator=gen) for n in (21, 50, 50))
    feeds = {"query": q.numpy(), "key": k.numpy(), "value": v.numpy()}
    ref = references.get("multipole")(
        *(x[None].double() for x in (q, k, v)), scale=0.3, is_causal=causal, block=4, coarse=2
    )[0]
    assert relative_error(ref.numpy(), run_onnx(model, feeds)) <= TOL


def _fitted_output(spec: LayerSpec, params: dict, expansion: np.ndarray, cases) -> list:
    """(onnxruntime output, float64 reference) of the calibrated node on each (q_len, kv_len)."""
    proto, result = rewrite_layer(spec, "multipole", params, fitted={"expansion": expansion})
    (block,) = result.rewritten
    assert block.fallback is None and block.overload.endswith("_fitted")
    runner = session(proto)
    u = torch.from_numpy(expansion).double()
    pairs = []
    for q_len, kv_len in cases:
        feeds = spec.inputs(2, q_len, kv_len, seed=q_len)
        expected = reference(spec, "multipole", {**params, "expansion": u}, feeds)
        pairs.append((runner.run(None, feeds)[0], expected))
    return pairs


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("params", ["block4", "block4_coarse2_levels2", "block4_sinks11"])
def test_fitted_body_matches_reference(name, params) -> None:
    """The calibrated overload (expansion points as the node's initializer) equals the
    reference with the same points, which differ from the plain method by O(1) here."""
    spec = SPECS[name]
    expansion = np.random.default_rng(0).standard_normal((spec.heads, spec.head_dim))
    pairs = _fitted_output(spec, PARAMS[params], expansion.astype(np.float32), LENGTHS)
    for (out, expected), case in zip(pairs, LENGTHS, strict=True):
        assert relative_error(expected, out) <= TOL, case
    feeds = spec.inputs(2, 203, seed=203)
    plain = reference(spec, "multipole", PARAMS[params], feeds)
    assert relative_error(plain, pairs[2][0]) > 0.1


@pytest.mark.parametrize("name", ["causal", "causal_padding", "bidirectional_padding_gqa"])
def test_zero_expansion_body_is_the_plain_body(name) -> None:
    spec = SPECS[name]
    params = PARAMS["block4_coarse2_levels2"]
    zeros = np.zeros((spec.heads, spec.head_dim), np.float32)
    for (out, _), (q_len, kv_len) in zip(
        _fitted_output(spec, params, zeros, LENGTHS), LENGTHS, strict=True
    ):
        feeds = spec.inputs(2, q_len, kv_len, seed=q_len)
        assert relative_error(_run(spec, params, feeds), out) <= 1e-6, (q_len, kv_len)
