"""The sliding-window-with-sinks body equals its torch reference (float64) in onnxruntime on every
layer variant (causal, bidirectional, padding, full bias, GQA, a model window, cross lengths), at
lengths unlike the export length, is exact attention when the band covers every key, and stays
blocked (lengths far beyond what a dense score matrix would fit run)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest
import torch

from attnrewrite.layers import LayerSpec
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.signature import Signature
from tests.bodies.harness import (
    SMALL,
    SMALL_SPECS,
    body_error,
    layer_output,
    rank3_error,
    reference,
    relative_error,
)

TOL = 1e-5
SPECS = {
    **SMALL_SPECS,
    "causal_window_padding": LayerSpec(mask="padding", window=5, **SMALL),
    "causal_bias": LayerSpec(mask="bias", **SMALL),
    "bidirectional_bias_gqa": LayerSpec(causal=False, mask="bias", heads=4, kv_heads=2, head_dim=8),
}
PARAMS = {
    "w8_s0": {"width": 8, "sinks": 0},
    "w8_s4": {"width": 8, "sinks": 4},
    "w3_s5": {"width": 3, "sinks": 5},  # more sinks than the band is wide
}
# (q_len, kv_len): one token, small odd, a few hundred, KV cache, queries before keys
LENGTHS = [(1, None), (7, None), (203, None), (5, 9), (3, 100), (9, 5), (40, 3)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small float64 references run faster on one torch thread than contending for many."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(spec: LayerSpec, params: dict, feeds: dict) -> np.ndarray:
    return layer_output(spec, "window", params, feeds)


def _error(
    spec: LayerSpec, params: dict, q_len: int, kv_len: int | None, batch: int = 2, opset: int = 17
):
    return body_error(spec, "window", params, q_len, kv_len, batch=batch, seed=q_len, opset=opset)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("params", PARAMS)
def test_body_matchesreference(name, params) -> None:
    for q_len, kv_len in LENGTHS:
        err = _error(SPECS[name], PARAMS[params], q_len, kv_len)
        assert err <= TOL, (q_len, kv_len, err)


@pytest.mark.parametrize("name", ["causal", "bidirectional", "causal_padding", "causal_bias"])
def test_wider_band_and_more_sinks(name) -> None:
    params = {"width": 32, "sinks": 4}
    for q_len, kv_len in [(1, None), (31, None), (97, None), (300, None), (17, 70)]:
        err = _error(SPECS[name], params, q_len, kv_len, batch=1)
        assert err <= TOL, (q_len, kv_len, err)


@pytest.mark.parametrize("opset", [13, 18, 21])
@pytest.mark.parametrize("name", ["causal", "causal_padding", "bidirectional_bias_gqa"])
def test_other_opsets(name, opset) -> None:
    spec, params = SPECS[name], PARAMS["w8_s4"]
    for q_len, kv_len in [(1, None), (77, None), (4, 61)]:
        err = _error(spec, params, q_len, kv_len, opset=opset)  # asserts no fallback
        assert err <= TOL, (q_len, kv_len, err)


@pytest.mark.parametrize("name", ["causal", "bidirectional"])
def test_every_length(name) -> None:
    """Lengths across block boundaries, self- and cross-attention, one session."""
    spec, params = SPECS[name], {"width": 4, "sinks": 2}
    for n in [1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 17]:
        for kv in (None, n + 5):
            err = _error(spec, params, n, kv, batch=1)
            assert err <= TOL, (n, kv, err)


@pytest.mark.parametrize("name", ["causal", "bidirectional", "causal_padding", "causal_gqa"])
def test_band_covering_every_key_is_exact_attention(name) -> None:
    spec = SPECS[name]
    for q_len, kv_len in [(1, None), (33, None), (64, None), (5, 40)]:
        feeds = spec.inputs(2, q_len, kv_len, seed=q_len)
        exact = reference(spec, "exact", None, feeds)
        assert relative_error(exact, _run(spec, {"width": 64, "sinks": 0}, feeds)) <= TOL
        assert relative_error(exact, _run(spec, {"width": 64, "sinks": 3}, feeds)) <= TOL


def test_fully_padded_rows_give_zeros() -> None:
    """Band keys all padding, no sinks: the row sees nothing, the output is 0 (not NaN)."""
    spec, params = SPECS["causal_padding"], {"width": 4, "sinks": 0}
    feeds = spec.inputs(2, 40, seed=1)  # the last sequence: its last 10 keys are padding
    out = _run(spec, params, feeds)
    assert np.isfinite(out).all()
    assert not out[-1, :, -6:].any()
    assert relative_error(reference(spec, "window", params, feeds), out) <= TOL


def test_float16_computes_in_float32() -> None:
    spec = LayerSpec(mask="padding", dtype=torch.float16, **SMALL)
    params = PARAMS["w8_s4"]
    feeds = spec.inputs(2, 77)
    out = _run(spec, params, feeds)
    assert out.dtype == np.float16
    # the reference computes in float32 from the same fp16 inputs; only the output is rounded
    assert relative_error(reference(spec, "window", params, feeds), out) <= 1e-3


def test_cost_is_linear_in_length() -> None:
    """A length whose dense score matrix (2 heads, 40000^2 float32: 12.8 GB) would not fit.
    Causal rows depend only on earlier keys: the first rows equal the reference on a prefix."""
    spec, params = SPECS["causal"], {"width": 16, "sinks": 4}
    feeds = spec.inputs(1, 40_000, seed=3)
    out = _run(spec, params, feeds)
    prefix = {name: x[:, :, :300] for name, x in feeds.items()}
    ref = reference(spec, "window", params, prefix)
    assert relative_error(ref, out[:, :, :300]) <= TOL
    tail = {name: x[:, :, -300:] for name, x in feeds.items()}
    # the last rows see only their band and the sinks: the reference on sinks + the tail keys
    keys = {n: np.concatenate([feeds[n][:, :, :4], tail[n]], axis=2) for n in ("key", "value")}
    ref = reference(spec, "window", params, {"query": tail["query"], **keys})
    assert relative_error(ref[:, :, 16:], out[:, :, -284:]) <= TOL  # full bands in the tail


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mask", ["none", "keep", "keep_keys"])
def test_rank3_operands_and_boolean_masks(causal, mask) -> None:
    """[B*H, S, d] operands without a mask or with a boolean one, through the function."""
    assert rank3_error("window", {"width": 5, "sinks": 2}, causal, mask) <= TOL


def test_structural_params_select_the_overload() -> None:
    sig = Signature(4, ir.DataType.FLOAT, "none", False, True, False, False, False, False)
    method = get_method("window", {"width": 16, "sinks": 2})
    assert method.overload(sig) == "r4_f32_causal_width16_sinks2"
    assert method.limit(sig) is None
    assert "rank 5" in method.limit(dataclasses.replace(sig, rank=5))
