"""Exact attention is the ground truth: it must agree with PyTorch SDPA and define the masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from attnrewrite.methods import exact

from .test_inputs import F64, padding, rand_qkv

SCALE = 0.4


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """PyTorch's reference, with kv heads repeated for GQA."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=SCALE)


@pytest.mark.parametrize("is_causal", [True, False])
def test_matches_sdpa_square(is_causal):
    q, k, v = rand_qkv()
    mask = torch.ones(24, 24, dtype=torch.bool).tril() if is_causal else None
    out = exact.attention(q, k, v, scale=SCALE, is_causal=is_causal)
    torch.testing.assert_close(out, sdpa(q, k, v, mask), rtol=1e-12, atol=1e-12)


def test_causal_is_bottom_right_aligned():
    q, k, v = rand_qkv(sq=5, skv=24)
    mask = torch.ones(5, 24, dtype=torch.bool).tril(diagonal=19)
    out = exact.attention(q, k, v, scale=SCALE, is_causal=True)
    torch.testing.assert_close(out, sdpa(q, k, v, mask), rtol=1e-12, atol=1e-12)


def test_window_keeps_the_last_w_keys():
    q, k, v = rand_qkv(sq=10, skv=24)
    rel = torch.arange(10)[:, None] + 14 - torch.arange(24)
    mask = (rel >= 0) & (rel < 6)
    out = exact.attention(q, k, v, scale=SCALE, is_causal=True, window=6)
    torch.testing.assert_close(out, sdpa(q, k, v, mask), rtol=1e-12, atol=1e-12)


def test_bias_forms_agree():
    q, k, v = rand_qkv(sq=6, skv=9)
    alibi = -0.3 * (torch.arange(6)[:, None] + 3 - torch.arange(9)).abs().to(F64)
    out = exact.attention(q, k, v, scale=SCALE, is_causal=False, bias=alibi)
    torch.testing.assert_close(out, sdpa(q, k, v, alibi), rtol=1e-12, atol=1e-12)
    keep = torch.rand(2, 1, 1, 9, generator=torch.Generator().manual_seed(1)) > 0.3
    keep[..., 0] = True
    as_bool = exact.attention(q, k, v, scale=SCALE, is_causal=False, bias=keep)
    as_inf = exact.attention(
        q,
        k,
        v,
        scale=SCALE,
        is_causal=False,
        bias=torch.zeros(keep.shape).masked_fill(~keep, -torch.inf),
    )
    as_min = exact.attention(
        q,
        k,
        v,
        scale=SCALE,
        is_causal=False,
        bias=torch.zeros(keep.shape, dtype=F64).masked_fill(~keep, torch.finfo(F64).min),
    )
    torch.testing.assert_close(as_bool, as_inf, rtol=0, atol=1e-14)
    torch.testing.assert_close(as_bool, as_min, rtol=0, atol=1e-14)


def test_rows_without_keys_are_zero():
    q, k, v = rand_qkv(sq=30, skv=20)
    out = exact.attention(q, k, v, scale=SCALE, is_causal=True)  # first 10 rows see nothing
    assert torch.equal(out[:, :, :10], torch.zeros_like(out[:, :, :10]))
    bias = padding(20, left=[20, 0], right=[0, 0])  # batch 0 fully padded, finfo.min
    out = exact.attention(q, k, v, scale=SCALE, is_causal=False, bias=bias)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isfinite(out).all()


def test_low_precision_computes_in_float32():
    q, k, v = rand_qkv(dtype=torch.bfloat16)
    out = exact.attention(q, k, v, scale=SCALE, is_causal=True)
    ref = exact.attention(q.float(), k.float(), v.float(), scale=SCALE, is_causal=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref.to(torch.bfloat16), rtol=0, atol=0)


def test_split_bias_recognises_key_padding():
    shape = (2, 4, 6, 9)
    key = padding(9, left=[2, 0], right=[0, 1])
    kb, full = exact.split_bias(key, shape, F64)
    assert full is None and kb.shape == (2, 4, 1, 9) and torch.isinf(kb[0, 0, 0, :2]).all()
    kb, full = exact.split_bias(key.expand(2, 1, 6, 9), shape, F64)  # expanded 4-D padding
    assert full is None and kb is not None
    alibi = -(torch.arange(6)[:, None] - torch.arange(9)).abs().to(F64)
    kb, full = exact.split_bias(alibi, shape, F64)
    assert kb is None and full.shape == shape


@pytest.mark.parametrize(
    ("shapes", "kwargs", "message"),
    [
        (((2, 4, 5, 8), (2, 2, 5, 8), (2, 2, 5, 3)), {"bias": torch.zeros(3, 5)}, "broadcast"),
        (((2, 4, 5, 8), (2, 3, 5, 8), (2, 3, 5, 3)), {}, "multiple of kv heads"),
        (((2, 4, 5, 8), (1, 2, 5, 8), (1, 2, 5, 3)), {}, "batch"),
        (((2, 4, 5, 8), (2, 2, 5, 7), (2, 2, 5, 3)), {}, "head dims"),
        (((2, 4, 5, 8), (2, 2, 5, 8), (2, 2, 6, 3)), {}, "disagree"),
        (((4, 5, 8), (2, 5, 8), (2, 5, 3)), {}, "4-D"),
        (((2, 4, 5, 8), (2, 2, 5, 8), (2, 2, 5, 3)), {"window": 0, "is_causal": True}, "window"),
        (((2, 4, 5, 8), (2, 2, 5, 8), (2, 2, 5, 3)), {"window": 3}, "causal"),
    ],
)
def test_malformed_calls_raise(shapes, kwargs, message):
    q, k, v = (torch.zeros(s) for s in shapes)
    kwargs = {"is_causal": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        exact.attention(q, k, v, scale=1.0, **kwargs)


@pytest.mark.parametrize("chunks", [2, 5, 64])
@pytest.mark.parametrize(
    ("sq", "skv", "window"), [(24, 24, None), (5, 24, None), (24, 5, None), (10, 24, 6)]
)
def test_causal_chunks_compute_the_whole_matrix(chunks, sq, skv, window):
    """Chunked causal attention is the whole masked matrix, bias cut per chunk included."""
    q, k, v = rand_qkv(sq=sq, skv=skv)
    bias = padding(skv, left=[2, 0], right=[0, 1])
    whole = exact.attention(
        q, k, v, scale=SCALE, is_causal=True, bias=bias, window=window, chunks=1
    )
    out = exact.attention(
        q, k, v, scale=SCALE, is_causal=True, bias=bias, window=window, chunks=chunks
    )
    torch.testing.assert_close(out, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunks", [0, 65, 2.0, True])
def test_chunks_out_of_range_are_refused(chunks):
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match="chunks"):
        exact.attention(q, k, v, scale=SCALE, is_causal=True, chunks=chunks)
