"""Inputs shared by the method tests, and checks that they have the structure they claim."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

F64 = torch.float64


def rand_qkv(
    b: int = 2,
    hq: int = 4,
    hkv: int = 2,
    sq: int = 24,
    skv: int = 24,
    *,
    d: int = 8,
    dv: int = 6,
    seed: int = 0,
    dtype: torch.dtype = F64,
) -> tuple[Tensor, Tensor, Tensor]:
    """Content-driven heads: scores depend on the tokens, not on their distance."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, sq, d, generator=g, dtype=F64)
    k = torch.randn(b, hkv, skv, d, generator=g, dtype=F64)
    v = torch.randn(b, hkv, skv, dv, generator=g, dtype=F64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def relative_qkv(
    n: int,
    *,
    b: int = 1,
    h: int = 2,
    changes: Sequence[int] = (5, 13, 29),
    noise: float = 0.0,
    freq: float = 0.5,
    seed: int = 0,
    dv: int = 4,
) -> tuple[Tensor, Tensor, Tensor]:
    """Position-driven heads: q_i . k_j = f(i - j) + a sink at key 0 + steps at ``changes``.

    f is a sum of 4 cosines (rotary-like pairs), so without noise the causal score matrix is
    exactly (len(changes) + 2)-conv: bases start at columns 0, 1 (after the sink) and each change.
    """
    g = torch.Generator().manual_seed(seed)
    om = torch.rand(b, h, 1, 4, generator=g, dtype=F64) * freq
    amp = torch.randn(b, h, 1, 4, generator=g, dtype=F64) * 1.5
    ang = om * torch.arange(n, dtype=F64)[:, None]
    q = torch.cat([amp * ang.cos(), amp * ang.sin()], dim=-1)
    k = torch.cat([ang.cos(), ang.sin()], dim=-1)
    steps = torch.zeros(b, h, n, len(changes) + 1, dtype=F64)
    steps[:, :, 0, 0] = 3.0
    for i, col in enumerate(changes):
        steps[:, :, col:, i + 1] = 2 * torch.randn(b, h, 1, generator=g, dtype=F64)
    q = torch.cat([q, torch.ones_like(steps)], dim=-1)
    k = torch.cat([k, steps], dim=-1)
    q = q + noise * torch.randn(q.shape, generator=g, dtype=F64)
    k = k + noise * torch.randn(k.shape, generator=g, dtype=F64)
    v = torch.randn(b, h, n, dv, generator=g, dtype=F64)
    return q, k, v


def padding(
    skv: int, left: Sequence[int], right: Sequence[int], dtype: torch.dtype = F64
) -> Tensor:
    """[B, 1, 1, Skv] key-padding mask with finfo.min, as Hugging Face builds it."""
    bias = torch.zeros(len(left), 1, 1, skv, dtype=dtype)
    for i, (lo, hi) in enumerate(zip(left, right, strict=True)):
        bias[i, ..., :lo] = torch.finfo(dtype).min
        bias[i, ..., skv - hi :] = torch.finfo(dtype).min
    return bias


def rel_err(approx: Tensor, ref: Tensor) -> float:
    """Relative Frobenius error, the summary every convergence number uses."""
    return ((approx.double() - ref.double()).norm() / ref.double().norm()).item()


def test_relative_scores_change_only_at_declared_columns():
    q, k, _ = relative_qkv(40, changes=(7, 20))
    h = q @ k.transpose(-1, -2)
    step = (h[..., 1:, 1:] - h[..., :-1, :-1]).abs().amax(dim=(0, 1, 2))  # per column j >= 1
    changed = torch.zeros(39, dtype=torch.bool)
    changed[[0, 6, 19]] = True  # columns 1, 7, 20
    assert step[~changed].max() < 1e-12
    assert step[changed].min() > 1e-3


def test_padding_masks_requested_keys():
    bias = padding(10, left=[2, 0], right=[0, 3])
    masked = bias[:, 0, 0] == torch.finfo(F64).min
    assert masked.sum(-1).tolist() == [2, 3]
    assert masked[0, :2].all() and masked[1, -3:].all()
