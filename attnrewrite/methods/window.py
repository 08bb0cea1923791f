"""Sliding window with attention sinks: the cheap baseline the other methods must beat.

Exact softmax restricted to a sparse pattern: a query at key position p sees the ``width`` keys
ending at p (causal: p - width < j <= p; bidirectional: |j - p| < width) plus the first ``sinks``
keys, which StreamingLLM showed carry much of the mass of trained heads. The model's own mask
is intersected with that pattern, so every bias (padding, ALiBi, full tensors), GQA,
cross-attention, a model ``window`` and a logit soft-cap are honoured exactly. With
width >= max(Sq, Skv) it is exact attention. This reference evaluates the dense masked score
matrix (O(Sq Skv d)); a fused kernel would touch O(Sq (width + sinks) d).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnrewrite.methods import get
from attnrewrite.methods.exact import dense_attention


def pattern(
    sq: int, skv: int, *, is_causal: bool, width: int, sinks: int, device: torch.device
) -> Tensor:
    """Bool [Sq, Skv]: local band around each query's key position, plus the sink keys."""
    rel = torch.arange(sq, device=device)[:, None] + (skv - sq) - torch.arange(skv, device=device)
    band = (rel < width) if is_causal else (rel.abs() < width)
    return band | (torch.arange(skv, device=device) < sinks)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    is_causal: bool,
    bias: Tensor | None = None,
    window: int | None = None,
    width: int = 64,
    sinks: int = 4,
    softcap: float | None = None,
) -> Tensor:
    """Exact softmax over the sink + local pattern (causal keys j > p are still excluded)."""
    get("window").validate(width=width, sinks=sinks)
    allowed = pattern(
        q.shape[2], k.shape[2], is_causal=is_causal, width=width, sinks=sinks, device=q.device
    )
    return dense_attention(
        q,
        k,
        v,
        scale=scale,
        is_causal=is_causal,
        bias=bias,
        window=window,
        allowed=allowed,
        softcap=softcap,
    )
