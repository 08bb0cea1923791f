"""The vertical-slash body equals its torch reference (float64) in onnxruntime on every causal
layer variant (padding, full bias, GQA, a model window, KV-cache and cross lengths), at lengths
unlike the export length, is exact attention when a budget covers every key, keeps
bidirectional blocks exact, and stays sparse (a length whose dense score matrix would not fit
runs, and its rows equal the reference's selection applied row by row)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest
import torch

from attnrewrite.layers import LayerSpec
from attnrewrite.methods import verticalslash
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.signature import Signature
from tests.bodies.harness import (
    SMALL,
    body_error,
    layer_output,
    rank3_error,
    reference,
    relative_error,
    rewrite_layer,
)

TOL = 1e-5
SPECS = {
    "causal": LayerSpec(**SMALL),
    "causal_padding": LayerSpec(mask="padding", **SMALL),
    "causal_gqa": LayerSpec(heads=4, kv_heads=1, head_dim=8),
    "causal_window_bias": LayerSpec(mask="bias", window=4, **SMALL),
    "causal_window_padding": LayerSpec(mask="padding", window=5, **SMALL),
    "causal_bias": LayerSpec(mask="bias", **SMALL),
    "causal_bias_gqa": LayerSpec(mask="bias", heads=4, kv_heads=2, head_dim=8),
}
PARAMS = {
    "all_parts": {"vertical": 3, "slash": 6, "last": 4, "sinks": 1, "local": 2},
    "no_extra_slash": {"vertical": 4, "slash": 4, "last": 64, "sinks": 4, "local": 4},
    "no_band": {"vertical": 5, "slash": 7, "last": 3, "sinks": 0, "local": 0},
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
    return layer_output(spec, "verticalslash", params, feeds)


def _error(
    spec: LayerSpec, params: dict, q_len: int, kv_len: int | None, batch: int = 2, opset: int = 17
) -> float:
    return body_error(
        spec, "verticalslash", params, q_len, kv_len, batch=batch, seed=q_len, opset=opset
    )


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("params", PARAMS)
def test_body_matches_reference(name, params) -> None:
    for q_len, kv_len in LENGTHS:
        err = _error(SPECS[name], PARAMS[params], q_len, kv_len)
        assert err <= TOL, (q_len, kv_len, err)


@pytest.mark.parametrize("name", ["causal", "causal_padding", "causal_bias"])
def test_default_budgets(name) -> None:
    """The defaults (64 columns, 128 diagonals, 64 local) at lengths past both budgets."""
    for q_len, kv_len in [(1, None), (130, None), (300, None), (17, 300)]:
        err = _error(SPECS[name], {}, q_len, kv_len, batch=1)
        assert err <= TOL, (q_len, kv_len, err)


@pytest.mark.parametrize("opset", [13, 18, 21])
@pytest.mark.parametrize("name", ["causal", "causal_padding", "causal_bias_gqa"])
def test_other_opsets(name, opset) -> None:
    spec, params = SPECS[name], PARAMS["all_parts"]
    for q_len, kv_len in [(1, None), (77, None), (4, 61)]:
        err = _error(spec, params, q_len, kv_len, opset=opset)  # asserts no fallback
        assert err <= TOL, (q_len, kv_len, err)


def test_every_length() -> None:
    """Lengths across block and chunk boundaries, self- and cross-attention, one session."""
    spec, params = SPECS["causal"], {"vertical": 2, "slash": 5, "last": 3, "sinks": 1, "local": 3}
    for n in [1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 17]:
        for kv in (None, n + 5):
            err = _error(spec, params, n, kv, batch=1)
            assert err <= TOL, (n, kv, err)


@pytest.mark.parametrize("name", ["causal", "causal_padding", "causal_gqa", "causal_bias"])
def test_budgets_covering_every_key_are_exact_attention(name) -> None:
    spec = SPECS[name]
    for q_len, kv_len in [(1, None), (33, None), (48, None), (5, 40)]:
        feeds = spec.inputs(2, q_len, kv_len, seed=q_len)
        exact = reference(spec, "exact", None, feeds)
        for params in ({"slash": 48, "local": 4}, {"vertical": 48, "sinks": 2, "local": 2}):
            assert relative_error(exact, _run(spec, params, feeds)) <= TOL, params


@pytest.mark.parametrize("name", ["causal_window_bias", "causal_window_padding"])
def test_ties_go_to_the_lowest_keys(name) -> None:
    """Under a model window the last queries see few keys: the other column scores tie at 0,
    and the columns chosen among them (the lowest keys, which early queries see) must agree."""
    params = {"vertical": 12, "slash": 2, "last": 2, "sinks": 0, "local": 2}
    for q_len, kv_len in [(30, None), (64, None), (9, 40)]:
        err = _error(SPECS[name], params, q_len, kv_len)
        assert err <= TOL, (q_len, kv_len, err)


def test_fully_padded_rows_give_zeros() -> None:
    """A model window over padding only: those rows see nothing, the output is 0 (not NaN)."""
    spec = LayerSpec(mask="padding", window=3, **SMALL)
    params = PARAMS["all_parts"]
    feeds = spec.inputs(2, 40, seed=1)
    feeds["mask"][-1, ..., 20:30] = np.finfo(np.float32).min  # rows 22 .. 29 see only these
    out = _run(spec, params, feeds)
    assert np.isfinite(out).all()
    assert not out[-1, :, 22:30].any()
    assert relative_error(reference(spec, "verticalslash", params, feeds), out) <= TOL


def test_float16_computes_in_float32() -> None:
    spec = LayerSpec(mask="padding", dtype=torch.float16, **SMALL)
    params = PARAMS["all_parts"]
    feeds = spec.inputs(2, 77)
    out = _run(spec, params, feeds)
    assert out.dtype == np.float16
    # the reference computes in float32 from the same fp16 inputs; only the output is rounded
    assert relative_error(reference(spec, "verticalslash", params, feeds), out) <= 1e-3


def _rows_reference(feeds: dict, rows: np.ndarray, scale: float, params: dict) -> np.ndarray:
    """Rows of the reference without its dense matrix: the sets from `select` on the last
    queries' exact weights, then each row's softmax over its own keys (self-attention)."""
    q, k, v = (torch.from_numpy(feeds[n]).double() for n in ("query", "key", "value"))
    n = k.shape[2]
    last = params["last"]
    logits = scale * q[:, :, -last:] @ k.transpose(-1, -2)
    positions = torch.arange(n - last, n)
    logits = logits.masked_fill(torch.arange(n) > positions[:, None], -torch.inf)
    keys, offsets = verticalslash.select(
        torch.softmax(logits, dim=-1),
        positions,
        **{p: params[p] for p in ("vertical", "slash", "sinks", "local")},
    )
    out = []
    for i in rows.tolist():
        seen = (keys[..., : i + 1] | offsets[..., : i + 1].flip(-1)).unsqueeze(-2)
        row = scale * q[:, :, i : i + 1] @ k[:, :, : i + 1].transpose(-1, -2)
        weights = torch.softmax(row.masked_fill(~seen, -torch.inf), dim=-1)
        out.append(weights @ v[:, :, : i + 1])
    return torch.cat(out, dim=2).numpy()


def test_cost_is_linear_in_length() -> None:
    """A length whose dense score matrix (2 heads, 40000^2 float32: 12.8 GB) would not fit."""
    spec = SPECS["causal"]
    params = {"vertical": 16, "slash": 32, "last": 16, "sinks": 4, "local": 16}
    feeds = spec.inputs(1, 40_000, seed=3)
    out = _run(spec, params, feeds)
    rows = np.array([0, 1, 15, 16, 17, 999, 20_000, 39_983, 39_999])
    ref = _rows_reference(feeds, rows, spec.scale, params)
    assert relative_error(ref, out[:, :, rows]) <= TOL


@pytest.mark.parametrize("mask", ["none", "keep", "keep_keys"])
def test_rank3_operands_and_boolean_masks(mask) -> None:
    """[B*H, S, d] operands without a mask or with a boolean one, through the function."""
    assert rank3_error("verticalslash", PARAMS["all_parts"], True, mask) <= TOL


def test_bidirectional_blocks_stay_exact() -> None:
    _, result = rewrite_layer(LayerSpec(causal=False, **SMALL), "verticalslash")
    (block,) = result.rewritten
    assert "causal only" in block.fallback


def test_structural_params_select_the_overload() -> None:
    sig = Signature(4, ir.DataType.FLOAT, "none", False, True, False, False, False, False)
    method = get_method("verticalslash", {"vertical": 16, "slash": 32, "local": 8})
    assert method.overload(sig) == "r4_f32_causal_vertical16_slash32_local8"
    assert method.limit(sig) is None
    assert "rank 5" in method.limit(dataclasses.replace(sig, rank=5))
    assert "causal only" in method.limit(dataclasses.replace(sig, causal=False))
