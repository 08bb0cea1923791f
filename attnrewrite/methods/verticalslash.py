"""Vertical-slash attention (MInference's pattern): key columns and diagonals chosen per head.

MInference (Jiang et al., arXiv 2407.02490) found that many heads of long-context models put
their mass on a few key columns ("vertical" lines: sinks, separators, retrieved tokens) and a
few diagonals ("slash" lines: the recent window, periodic offsets), which move with the input.
It estimates both from the last queries and computes exact softmax only there. Per batch entry
and query head, with query i at key position p_i = i + Skv - Sq (bottom-right aligned), causal:

- estimate: A = the exact attention probabilities of the last ``last`` queries (all of them if
  fewer), under the model's own mask; the vertical score of key j is sum_r A[r, j], the slash
  score of offset o is sum_r A[r, p_r - o];
- vertical set V: keys 0 .. sinks-1 (forced), then the keys of highest vertical score, ``vertical``
  keys in all; slash set S: offsets 0 .. local-1 (forced: the recent window), then the offsets of
  highest slash score, ``slash`` offsets in all. Ties go to the lower key or offset (a stable
  sort, the rule of ONNX TopK), so the reference and the ONNX body choose the same sets;
- query i attends with exact softmax to {j in V : j <= p_i} and {p_i - o : o in S, p_i - o >= 0}
  (a key in both counts once), intersected with the model's mask: padding, any additive or
  boolean bias (also one that varies per query) and a model window are honoured exactly.

With vertical >= Skv or slash >= Skv every visible key is kept: exact attention (so a report at
n <= max(vertical, slash) says nothing about the approximation). GQA selects per query head (its
kv head repeated). Causal only: bidirectional attention has no last queries that see every key
nor one-sided diagonals, so it raises ValueError and the tool keeps such blocks exact.

This reference evaluates the dense score matrix (O(Sq Skv d)); the ONNX body
(`attnrewrite.substitute.verticalslash`) computes the same in O(Sq (2 local + vertical + slash) d)
plus the O(last Skv d) estimate. Measured errors: tests/methods/test_verticalslash.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnrewrite.methods import get
from attnrewrite.methods.exact import (
    bias_logits,
    check_inputs,
    compute_dtype,
    expand_kv,
    masked_softmax_av,
    positions_mask,
    soft_cap,
)


def _probabilities(logits: Tensor) -> Tensor:
    """Row softmax with -inf masks; rows with nothing visible are zeros."""
    top = logits.amax(dim=-1, keepdim=True)
    p = torch.exp(logits - torch.where(torch.isfinite(top), top, 0.0))
    den = p.sum(dim=-1, keepdim=True)
    return p / torch.where(den > 0, den, 1.0)


def _top(scores: Tensor, forced: int, k: int) -> Tensor:
    """Bool mask of the first ``forced`` entries and the highest scores, ``k`` in all."""
    first = torch.arange(scores.shape[-1], device=scores.device) < forced
    ranked = scores.masked_fill(first, torch.inf)
    order = ranked.argsort(dim=-1, descending=True, stable=True)[..., :k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, order, True)


def select(
    probs: Tensor, positions: Tensor, *, vertical: int, slash: int, sinks: int, local: int
) -> tuple[Tensor, Tensor]:
    """(vertical keys, slash offsets) as bool [B, H, Skv], from the estimate's probabilities
    [B, H, L, Skv] of the queries at key ``positions`` [L]."""
    skv = probs.shape[-1]
    keys = positions[:, None] - torch.arange(skv, device=probs.device)  # [L, offset]: its key
    on_diagonal = probs.gather(-1, keys.clamp(min=0).expand(probs.shape)) * (keys >= 0)
    return (
        _top(probs.sum(-2), sinks, vertical),
        _top(on_diagonal.sum(-2), local, slash),
    )


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    is_causal: bool,
    bias: Tensor | None = None,
    window: int | None = None,
    vertical: int = 64,
    slash: int = 128,
    last: int = 64,
    sinks: int = 4,
    local: int = 64,
    softcap: float | None = None,
) -> Tensor:
    """Exact softmax over the vertical keys and slash diagonals estimated from the last queries
    (a logit soft-cap applies to the scaled scores of both, before the mask)."""
    get("verticalslash").validate(
        vertical=vertical, slash=slash, last=last, sinks=sinks, local=local
    )
    check_inputs(q, k, v, bias, is_causal, window)
    if not is_causal:
        raise ValueError(
            "verticalslash is causal only: its estimate needs last queries that see every key"
            " and one-sided diagonals; keep this bidirectional block exact"
        )
    sq, skv = q.shape[2], k.shape[2]
    k, v = expand_kv(k, v, q.shape[1])
    ct = compute_dtype(q.dtype)
    logits = soft_cap(scale * (q.to(ct) @ k.to(ct).transpose(-1, -2)), softcap)
    if bias is not None:
        logits = logits + bias_logits(bias, ct)
    visible = positions_mask(sq, skv, True, window, q.device)
    logits = logits.masked_fill(~visible, -torch.inf)

    positions = torch.arange(sq, device=q.device) + (skv - sq)
    n_last = min(last, sq)
    is_vertical, is_slash = select(
        _probabilities(logits[:, :, sq - n_last :]),
        positions[sq - n_last :],
        vertical=vertical,
        slash=slash,
        sinks=sinks,
        local=local,
    )
    rel = positions[:, None] - torch.arange(skv, device=q.device)  # p_i - j: the pair's offset
    on_slash = is_slash.gather(-1, rel.clamp(min=0).flatten().expand(*is_slash.shape[:2], -1))
    allowed = is_vertical[:, :, None, :] | (on_slash.unflatten(-1, (sq, skv)) & (rel >= 0))
    out = masked_softmax_av(logits.masked_fill(~allowed, -torch.inf), v.to(ct))
    return out.to(q.dtype)
