"""What every method owes the rewrite tool: shapes, GQA, masks, cross-attention, batching."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from attnrewrite.methods import METHODS, exact

from .test_inputs import F64, padding, rand_qkv

SCALE = 0.4

# Approximate settings small enough that every code path (several blocks, levels, bases) runs.
APPROX = [
    ("exact", {}),
    ("convbasis", {"bases": 4}),
    ("convbasis", {"bases": 4, "recovery": "binary"}),
    ("polysketch", {"sketch_size": 8, "block": 8}),
    ("polysketch", {"sketch_size": 8, "block": 4, "variant": "sketch"}),
    ("polysketch", {"block": 8, "variant": "exact_poly", "degree": 2}),
    ("polysketch", {"sketch_size": 8, "block": 8, "fit": "none"}),
    ("multipole", {"block": 4}),
    ("multipole", {"block": 3, "coarse": 3, "levels": 1}),
    ("window", {"width": 5, "sinks": 2}),
    ("verticalslash", {"vertical": 3, "slash": 4, "last": 5, "sinks": 1, "local": 2}),
    ("verticalslash", {"vertical": 1, "slash": 2, "last": 1, "sinks": 0, "local": 0}),
]
# Settings at which a method must reproduce exact attention.
EXACT = [
    ("convbasis", {"bases": 64}),
    ("convbasis", {"bases": 64, "recovery": "binary", "tol": 0.0}),
    ("multipole", {"block": 64}),
    ("window", {"width": 64, "sinks": 0}),
    ("verticalslash", {"vertical": 2, "slash": 64, "sinks": 1, "local": 2}),
    ("verticalslash", {"vertical": 64, "slash": 3, "sinks": 0, "local": 3}),
]
# (Sq, Skv, is_causal): self-attention, KV-cache prefill, decode, cross-attention both ways.
LAYOUTS = [
    (24, 24, True),
    (9, 24, True),
    (1, 24, True),
    (24, 24, False),
    (9, 24, False),
    (30, 17, False),
]


def ids(case: tuple[str, dict]) -> str:
    name, params = case
    return name + "".join(f"-{k}={v}" for k, v in params.items())


def run(case: tuple[str, dict], q: Tensor, k: Tensor, v: Tensor, **kwargs: object) -> Tensor:
    name, params = case
    if not kwargs["is_causal"] and not METHODS[name].bidirectional:
        pytest.skip(f"{name} is causal only (tests/methods/test_registry.py: it refuses)")
    return METHODS[name](q, k, v, scale=SCALE, **kwargs, **params)


@pytest.mark.parametrize("case", APPROX, ids=ids)
@pytest.mark.parametrize(("sq", "skv", "is_causal"), LAYOUTS)
def test_batch_and_heads_equal_per_head_calls(case, sq, skv, is_causal):
    q, k, v = rand_qkv(sq=sq, skv=skv)  # GQA: 4 query heads on 2 kv heads
    bias = padding(skv, left=[3, 0], right=[0, 2])
    out = run(case, q, k, v, is_causal=is_causal, bias=bias)
    assert out.shape == (2, 4, sq, 6) and out.dtype == F64 and torch.isfinite(out).all()
    for b in range(2):
        for h in range(4):
            one = run(
                case,
                q[b : b + 1, h : h + 1],
                k[b : b + 1, h // 2 : h // 2 + 1],
                v[b : b + 1, h // 2 : h // 2 + 1],
                is_causal=is_causal,
                bias=bias[b : b + 1],
            )
            torch.testing.assert_close(out[b : b + 1, h : h + 1], one, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", APPROX, ids=ids)
@pytest.mark.parametrize("is_causal", [True, False])
def test_gqa_equals_repeated_kv(case, is_causal):
    q, k, v = rand_qkv(sq=12, skv=20)
    out = run(case, q, k, v, is_causal=is_causal)
    ref = run(case, q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=is_causal)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("case", APPROX, ids=ids)
@pytest.mark.parametrize(("sq", "skv", "is_causal"), LAYOUTS)
def test_padded_keys_have_no_influence(case, sq, skv, is_causal):
    q, k, v = rand_qkv(sq=sq, skv=skv)
    bias = padding(skv, left=[4, 0], right=[0, 3])
    out = run(case, q, k, v, is_causal=is_causal, bias=bias)
    k2, v2 = k.clone(), v.clone()
    k2[0, :, :4] = 30 * torch.randn_like(k2[0, :, :4])
    v2[1, :, -3:] = 1e3
    torch.testing.assert_close(out, run(case, q, k2, v2, is_causal=is_causal, bias=bias))
    expanded = bias.expand(2, 1, sq, skv)  # a 4-D padding mask that is constant per query
    torch.testing.assert_close(out, run(case, q, k, v, is_causal=is_causal, bias=expanded))


@pytest.mark.parametrize("case", APPROX, ids=ids)
def test_fully_masked_rows_give_zeros(case):
    q, k, v = rand_qkv(sq=20, skv=12)
    bias = padding(12, left=[12, 0], right=[0, 0])  # batch 0: every key padded
    out = run(case, q, k, v, is_causal=True, bias=bias)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(out[1, :, :8], torch.zeros_like(out[1, :, :8]))  # rows before any key
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("case", EXACT, ids=ids)
@pytest.mark.parametrize(("sq", "skv", "is_causal"), LAYOUTS)
def test_exact_settings_reproduce_exact(case, sq, skv, is_causal):
    q, k, v = rand_qkv(sq=sq, skv=skv)
    bias = padding(skv, left=[2, 0], right=[0, 5])
    ref = exact.attention(q, k, v, scale=SCALE, is_causal=is_causal, bias=bias)
    out = run(case, q, k, v, is_causal=is_causal, bias=bias)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", APPROX, ids=ids)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_keeps_the_query_dtype(case, dtype):
    q, k, v = rand_qkv(sq=10, skv=16, dtype=dtype)
    out = run(case, q, k, v, is_causal=True)
    ref = run(case, q.double(), k.double(), v.double(), is_causal=True)
    assert out.dtype == dtype
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", APPROX, ids=ids)
def test_full_bias_is_honoured_or_refused(case):
    q, k, v = rand_qkv(sq=10, skv=16)
    alibi = -0.5 * (torch.arange(10)[:, None] + 6 - torch.arange(16)).abs().to(F64)
    if METHODS[case[0]].full_bias:
        out = run(case, q, k, v, is_causal=True, bias=alibi)
        assert torch.isfinite(out).all()
    else:
        with pytest.raises(ValueError, match="key-wise"):
            run(case, q, k, v, is_causal=True, bias=alibi)


@pytest.mark.parametrize("case", APPROX, ids=ids)
def test_window_is_honoured_or_refused(case):
    q, k, v = rand_qkv(sq=10, skv=16)
    wide = run(case, q, k, v, is_causal=True, window=16)  # hides nothing
    torch.testing.assert_close(wide, run(case, q, k, v, is_causal=True))
    if METHODS[case[0]].window:
        assert torch.isfinite(run(case, q, k, v, is_causal=True, window=5)).all()
    else:
        with pytest.raises(ValueError, match="window"):
            run(case, q, k, v, is_causal=True, window=5)
