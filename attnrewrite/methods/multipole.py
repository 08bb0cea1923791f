"""Fast multipole attention (Kang, Tran, De Sterck, arXiv 2310.11960), training-free form.

Near keys are attended at full resolution, far keys through average-pooled group summaries whose
size doubles with distance, like the fast multipole method; queries keep full resolution (the
O(n log n) variant). Keys are padded to N = block * 2^J >= Skv. For a query in finest block i:

- near field: key blocks i-1, i (causal, token-masked) and i+1 (bidirectional), exact;
- level l = 1..L (L = J - 1, group size g_l = block * 2^(l-1), i_l = the query's level-l block):
  causal: even i_l -> group i_l-2, odd i_l -> groups i_l-3, i_l-2 (children of the parent's
  left neighbour that are not the query's own neighbours); bidirectional adds the mirror
  (even -> i_l+2, i_l+3; odd -> i_l+2);
- ``levels`` (0: all L) stops early: the coarsest level used then takes every group with
  |g - i_l| >= 2, so the far field stays complete (finer far field, more summaries per query);
- each group holds ``coarse`` summaries, the weighted mean of its g_l / coarse keys and values,
  and its logit gets + log(sum of key weights) (= log(g_l / coarse) without padding): one summary
  stands for that many tokens; all levels share one softmax normaliser.

- ``sinks`` (an addition to the paper, as in the window method): the first keys are taken out
  of every near block and summary and attended exactly by every query that may see them.
  Trained language models put much of a head's mass on them (StreamingLLM's attention sinks);
  pooled into a summary they are averaged away: on SmolLM2-135M at n = 2048 the median head
  error of block 128 falls from 0.71 to 0.17 with 4 sinks.

- ``expansion`` (an addition to the paper, [Hq, d], fitted per head by `attnrewrite.plan.fit`;
  None: plain averages): each summary pools its keys and values with weights
  w_j exp(u.k_j) rather than w_j, and its logit is scale q.kbar + log(sum of those weights)
  minus u.kbar: the first-order expansion of the group's log-sum-exp around the query u, exact
  at scale q = u, whose value is the softmax-weighted mean a query at u reads. Average pooling
  is u = 0. A trained head's queries share a direction, so u = its mean query already halves
  the median head error of SmolLM2-135M at n = 2048 (held-out text, 4 sinks: block 128 0.17
  -> 0.076, block 64 0.25 -> 0.105); plain averages miss both the group's mass and which of
  its values the head reads (giving each summary its exact mass alone does not help).

These lists tile the key axis exactly once, and groups never straddle the causal boundary. With
block >= Skv (or two blocks) everything is near field and the result is exact; with identical
keys it is exact at any setting (the mean key is then every key). Otherwise averaging keys
under-weights the far field by Jensen (exp(q.mean k) <= mean exp(q.k)): the error grows with the
spread of far scores, measured in tests/methods/test_multipole.py.

Masks: causal and bidirectional, GQA, cross-attention and the KV-cache offset (positions are
bottom-right aligned; bidirectional queries left of every key are placed at key 0, so "near" is
a convention for cross-attention, but the tiling stays complete), and key-wise biases (padding
masks [.., 1, Skv], or constant along the query axis) exactly, via per-key weights that enter
the pooled means and counts. A bias varying per query cannot follow a pooled summary: it raises
ValueError, as does a causal ``window`` narrower than Skv (a window cuts through groups; use the
window method). This reference evaluates masked logits against every summary of every level,
O(Sq (3 block + 2 N coarse / block) d); the interaction lists define the masks, a kernel would
gather O(block + coarse L) keys per query.

Measured (relative Frobenius error, n = 128, causal / bidirectional): on a recency head
(q_i . k_j ~ 20 cos(0.02 (i - j))) 0.11 / 0.14 at block 4, 0.044 / 0.053 at block 16,
0.0013 / 0.0015 at block 32; on random content heads (d = 16) at scale 1/4: 0.57 / 0.76 at
block 4, 0.25 / 0.51 at block 32. Fewer levels (finer far field) help a little (block 4,
levels = 1: 0.082 / 0.098 on the recency head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnrewrite.methods import get
from attnrewrite.methods.exact import (
    check_fitted,
    check_inputs,
    compute_dtype,
    expand_kv,
    key_weights,
    masked_softmax_av,
    refuse_binding_window,
    split_bias,
)


def _interaction(il: Tensor, groups: int, *, is_causal: bool, coarsest: bool) -> Tensor:
    """Bool [nq, groups]: which level groups query block index ``il`` attends to."""
    g = torch.arange(groups, device=il.device)[None, :]
    il = il[:, None]
    if coarsest:
        allow = g <= il - 2
        return allow if is_causal else allow | (g >= il + 2)
    odd = il % 2 == 1
    allow = (g == il - 2) | (odd & (g == il - 3))
    return allow if is_causal else allow | (g == il + 2) | (~odd & (g == il + 3))


@dataclass(frozen=True)
class Grid:
    """One call's operands laid out for the fields: keys padded to N = block * 2^J (pooled
    weights ``wp``, the sinks' own ``sink_w``), queries in blocks of ``block`` by their key
    position (``qb`` [B, H, nq, m, d], key block ``kblk``, positions ``qpos``). The fields take
    any subset of the query blocks, so a fit can evaluate a sample of them."""

    q: Tensor
    k: Tensor
    v: Tensor
    kp: Tensor
    vp: Tensor
    wp: Tensor
    sink_w: Tensor
    qb: Tensor
    kblk: Tensor
    qpos: Tensor
    lead: int
    top: int
    scale: float
    is_causal: bool
    block: int
    coarse: int

    @classmethod
    def of(
        cls,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        scale: float,
        is_causal: bool,
        bias: Tensor | None,
        window: int | None,
        block: int,
        coarse: int,
        levels: int,
        sinks: int,
    ) -> Grid:
        check_inputs(q, k, v, bias, is_causal, window)
        bsz, hq, sq, _ = q.shape
        skv = k.shape[2]
        refuse_binding_window(
            "multipole",
            skv,
            window,
            "pooled groups straddle its edge; keep this block exact or use the window method",
        )
        ct = compute_dtype(q.dtype)
        key_bias, full_bias = split_bias(bias, (bsz, hq, sq, skv), ct)
        if full_bias is not None:
            raise ValueError(
                "multipole pools keys into summaries, so it honours only key-wise biases"
                " (padding masks [.., 1, Skv]); this bias varies per query: keep this block exact"
            )
        k, v = expand_kv(k, v, hq)
        q, k, v = q.to(ct), k.to(ct), v.to(ct)
        w = key_weights(key_bias, bsz, hq, skv, q)
        sink_w = w[..., :sinks]
        w = torch.cat([torch.zeros_like(sink_w), w[..., sinks:]], dim=-1)  # sinks: never pooled
        m = block
        depth = math.ceil(math.log2(math.ceil(skv / m))) if skv > m else 0
        n_pad = m << depth
        top = depth - 1 if levels == 0 else min(levels, depth - 1)

        # Queries grouped by the key block of their position (bottom-right aligned).
        off = skv - sq
        lead = off % m
        nq = math.ceil((lead + sq) / m)
        qb = F.pad(q, (0, 0, lead, nq * m - lead - sq)).unflatten(2, (nq, m))
        kblk = torch.arange(nq, device=q.device) + (off - lead) // m
        if not is_causal:  # cross-attention queries before every key count as at the first one
            kblk = kblk.clamp(min=0)
        return cls(
            q=q,
            k=k,
            v=v,
            kp=F.pad(k, (0, 0, 0, n_pad - skv)),
            vp=F.pad(v, (0, 0, 0, n_pad - skv)),
            wp=F.pad(w, (0, n_pad - skv)),
            sink_w=sink_w,
            qb=qb,
            kblk=kblk,
            qpos=(kblk * m)[:, None] + torch.arange(m, device=q.device),
            lead=lead,
            top=top,
            scale=scale,
            is_causal=is_causal,
            block=m,
            coarse=coarse,
        )

    def near(self, chosen: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Logits and values of the near field and the sinks for query blocks ``chosen``."""
        m, q, k, v = self.block, self.qb[:, :, chosen], self.k, self.v
        kblk, qpos = self.kblk[chosen], self.qpos[chosen]
        steps = (-1, 0) if self.is_causal else (-1, 0, 1)
        blocks = self.kp.shape[2] // m
        nidx = kblk[:, None] + torch.tensor(steps, device=q.device)
        nvalid = (nidx >= 0) & (nidx < blocks)
        nidx = nidx.clamp(0, blocks - 1)
        kpos = (nidx * m)[..., None] + torch.arange(m, device=q.device)
        near_k = self.kp.unflatten(2, (-1, m))[:, :, nidx].flatten(3, 4)
        near_v = self.vp.unflatten(2, (-1, m))[:, :, nidx].flatten(3, 4)
        near_w = (self.wp.unflatten(2, (-1, m))[:, :, nidx] * nvalid[..., None]).flatten(3, 4)
        logits = [self.scale * q @ near_k.transpose(-1, -2) + near_w.log()[:, :, :, None, :]]
        values = [near_v]
        if self.is_causal:
            visible = kpos.flatten(1)[:, None, :] <= qpos[:, :, None]
            logits[0] = logits[0].masked_fill(~visible, -torch.inf)
        sinks = self.sink_w.shape[-1]
        if sinks:
            sink_pos = torch.arange(sinks, device=q.device)
            lg = self.scale * q @ k[:, :, None, :sinks].transpose(-1, -2)
            lg = lg + self.sink_w.log()[:, :, None, None, :]
            if self.is_causal:
                lg = lg.masked_fill(~(sink_pos <= qpos[:, :, None]), -torch.inf)
            logits.append(lg)
            values.append(v[:, :, None, :sinks].expand(-1, -1, len(chosen), -1, -1))
        return logits, values

    def far(self, chosen: Tensor, expansion: Tensor | None) -> tuple[list[Tensor], list[Tensor]]:
        """Logits and values of every level's summaries for query blocks ``chosen``, pooled
        around ``expansion`` [Hq, d] (None: plain averages)."""
        q, m, coarse = self.qb[:, :, chosen], self.block, self.coarse
        weights, shift = pooling_weights(self.kp, self.wp, expansion)

        def chunked(x: Tensor) -> Tensor:  # sums over chunks of block / coarse keys
            return x.unflatten(2, (-1, m // coarse)).sum(-2)

        chunk_w = chunked(weights[..., None])
        chunk_k, chunk_v = (
            chunked(self.kp * weights[..., None]),
            chunked(self.vp * weights[..., None]),
        )
        logits, values = [], []
        for level in range(1, self.top + 1):
            size = m << (level - 1)
            groups = self.kp.shape[2] // size

            def pooled(x: Tensor, groups: int = groups) -> Tensor:  # a summary's chunks
                return x.unflatten(2, (groups * coarse, -1)).sum(-2)

            mass = pooled(chunk_w)[..., 0]
            safe = torch.where(mass > 0, mass, 1.0)[..., None]
            kbar, vbar = pooled(chunk_k) / safe, pooled(chunk_v) / safe
            bias = mass.log() + shift
            if expansion is not None:
                bias = bias - (kbar @ expansion.to(kbar.dtype)[:, :, None])[..., 0]
            il = torch.div(self.kblk[chosen], 1 << (level - 1), rounding_mode="floor")
            allow = _interaction(il, groups, is_causal=self.is_causal, coarsest=level == self.top)
            allow = allow.repeat_interleave(coarse, dim=1)
            lg = self.scale * q @ kbar[:, :, None].transpose(-1, -2) + bias[:, :, None, None, :]
            logits.append(lg.masked_fill(~allow[:, None, :], -torch.inf))
            values.append(vbar[:, :, None].expand(-1, -1, len(chosen), -1, -1))
        return logits, values


def pooling_weights(k: Tensor, w: Tensor, expansion: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-key pooling weights w_j exp(u.k_j - c) [B, H, N] and the shift c [B, H, 1] (the
    largest u.k_j of a pooled key, so no weight overflows); (w, 0) without an expansion."""
    if expansion is None:
        return w, torch.zeros_like(w[..., :1])
    tilt = (k @ expansion.to(k.dtype)[:, :, None])[..., 0]  # [B, H, N]
    pooled = torch.where(w > 0, tilt, -torch.inf)  # a sink's exp(u.k) must not overflow
    top = pooled.amax(dim=-1, keepdim=True)
    shift = torch.where(torch.isfinite(top), top, 0.0)
    return w * torch.exp(pooled - shift), shift


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    is_causal: bool,
    bias: Tensor | None = None,
    window: int | None = None,
    block: int = 64,
    coarse: int = 1,
    levels: int = 0,
    sinks: int = 4,
    expansion: Tensor | None = None,
) -> Tensor:
    """Multipole attention; exact when every key falls in a query's near field."""
    get("multipole").validate(block=block, coarse=coarse, levels=levels, sinks=sinks)
    check_fitted("expansion", expansion, q)
    grid = Grid.of(
        q,
        k,
        v,
        scale=scale,
        is_causal=is_causal,
        bias=bias,
        window=window,
        block=block,
        coarse=coarse,
        levels=levels,
        sinks=sinks,
    )
    every = torch.arange(grid.qb.shape[2], device=q.device)
    near_logits, near_values = grid.near(every)
    far_logits, far_values = grid.far(every, expansion)
    logits = torch.cat([*near_logits, *far_logits], dim=-1)
    out = masked_softmax_av(logits, torch.cat([*near_values, *far_values], dim=-2))
    sq = q.shape[2]
    return out.flatten(2, 3)[:, :, grid.lead : grid.lead + sq].to(q.dtype)
