"""PolySketch attention (Kacham, Mirrokni, Zhong, arXiv 2310.01655): polynomial kernel, sketched.

Kernel. ``fit="none"`` is the paper's polynomial attention: a = LN(x) (no affine, no scale),
kappa(q, k) = (a_q . a_k)^p, o_i = sum_j kappa v_j / (1 + sum_j kappa). It is a different function
from a trained softmax head. ``fit="softmax_fit"`` (default) is the training-free fit: with
x = scale q.k, kappa(q, k) = (x + beta)^p, and beta per head from a weighted least-squares fit of
the line a x + b to exp((x - x_max) / p) over a seeded sample of visible (query, key) scores
(beta = b / a: the p-th root of exp(x - c) is fitted in closed form, the overall scale cancels in
the normaliser, which has no "1 +"). beta is clamped to >= -min(sampled x) so that the base stays
non-negative where scores were seen (an even power would otherwise rise again for very low
scores). The kernel is an even power of an inner product of augmented vectors
(sqrt(scale) q, sqrt(beta)), so it has non-negative features like the paper's. Near the fitted
point (x + beta)^p ~ exp(x) exp(-(x - x0)^2 / (2p)): a softmax with a Gaussian damping of width
sqrt(p), so it flattens peaked heads; tests/methods/test_polysketch.py measures that error.

Features. phi_1(a) = a; phi_h(a) = ((phi_ceil(h/2)(a) G1) o (phi_floor(h/2)(a) G2)) / sqrt(r) with
G ~ N(0, 1) d x r (a tree of degree-2 sketches, E<phi_h(x), phi_h(y)> = (x.y)^h). Note: the
paper's code scales each G by 1/sqrt(r), estimating (x.y)^2 / r, which matters only because of
its "1 +"; here the sketch targets the same kernel as ``exact_poly``. The squaring trick
phi'(a) = phi_{p/2}(a) (x) phi_{p/2}(a) (r^2 features) gives <phi'(q), phi'(k)> =
<phi(q), phi(k)>^2 >= 0. Variants: "sketch" uses phi' everywhere; "mixed" (default) the exact
kernel inside the diagonal blocks and phi' across blocks; "exact_poly" the exact kernel everywhere
(tensor-power features a^(x)p through the same block scan when (d+1)^p <= 2^16, else dense
O(Sq Skv) evaluation): it isolates the fit error from the sketch error. Randomness comes from
``seed`` only, so outputs are deterministic. p = 2 makes phi' exact (phi_1 = a).

Block-causal scan (block size b, a power of two): queries are grouped by the key block of their
position (bottom-right aligned); block l adds phi'(Q_l) Z_l, Z_l = sum of phi'(K_j)^T [V_j, 1]
over key blocks j < l (an exclusive cumsum over blocks), plus its own block with the lower-
triangular mask; the ones column carries the normaliser. Bidirectional attention needs one total
state (mixed: minus the own block, added back exactly). Cost O(n b (r + d) + n r^2 dv).

Masks: causal and bidirectional, GQA, cross-attention, the KV-cache offset, and key-wise biases
(padding masks [.., 1, Skv], or any bias constant along the query axis) exactly, as per-key
weights on [V, 1]. A bias varying per query and a causal ``window`` narrower than Skv cannot be
carried by the prefix state: both raise ValueError.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnrewrite.methods.exact import (
    check_inputs,
    compute_dtype,
    expand_kv,
    key_weights,
    split_bias,
    window_binds,
)

VARIANTS = ("sketch", "mixed", "exact_poly")
FITS = ("none", "softmax_fit")
FIT_SAMPLES = 4096
MAX_EXACT_FEATURES = 1 << 16


def validate(
    *, degree: int, sketch_size: int, block: int, variant: str, fit: str, seed: int
) -> None:
    """The squaring trick needs an even degree; the block scan needs a power-of-two block."""
    for name, val in (("degree", degree), ("sketch_size", sketch_size), ("block", block)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"polysketch {name} must be an int >= 1, got {val!r}")
    if degree % 2:
        raise ValueError(f"polysketch degree must be even (non-negative features), got {degree}")
    if block & (block - 1):
        raise ValueError(f"polysketch block must be a power of two, got {block}")
    if variant not in VARIANTS:
        raise ValueError(f"polysketch variant must be one of {VARIANTS}, got {variant!r}")
    if fit not in FITS:
        raise ValueError(f"polysketch fit must be one of {FITS}, got {fit!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"polysketch seed must be an int, got {seed!r}")


def sketch_half(a: Tensor, half: int, sketch_size: int, gen: torch.Generator) -> Tensor:
    """phi_half(a) by a tree of degree-2 Gaussian sketches (one call must cover q and k)."""
    if half == 1:
        return a
    left = sketch_half(a, (half + 1) // 2, sketch_size, gen)
    right = sketch_half(a, half // 2, sketch_size, gen)
    g1 = torch.randn(left.shape[-1], sketch_size, generator=gen, dtype=torch.float64)
    g2 = torch.randn(right.shape[-1], sketch_size, generator=gen, dtype=torch.float64)
    return (left @ g1.to(a)) * (right @ g2.to(a)) / math.sqrt(sketch_size)


def tensor_power(a: Tensor, power: int) -> Tensor:
    """a^(x)power flattened: <a^(x)p, b^(x)p> = (a.b)^p exactly."""
    out = a
    for _ in range(power - 1):
        out = (out[..., :, None] * a[..., None, :]).flatten(-2)
    return out


def fit_shift(
    q: Tensor,
    k: Tensor,
    w: Tensor,
    *,
    scale: float,
    degree: int,
    is_causal: bool,
    gen: torch.Generator,
) -> Tensor:
    """beta [B, H] such that (x + beta)^p ~ c exp(x) on sampled visible scores x = scale q.k."""
    sq, skv = q.shape[2], k.shape[2]
    qi = torch.randint(0, sq, (FIT_SAMPLES,), generator=gen)
    u = torch.rand(FIT_SAMPLES, generator=gen, dtype=torch.float64)
    if is_causal:
        pos = qi + (skv - sq)
        seen = pos >= 0
        kj = (u * (pos + 1).clamp(min=1)).long().clamp(max=skv - 1)
    else:
        seen = torch.ones(FIT_SAMPLES, dtype=torch.bool)
        kj = (u * skv).long().clamp(max=skv - 1)
    qi, kj, seen = qi.to(q.device), kj.to(q.device), seen.to(q.device)
    x = scale * (q[:, :, qi] * k[:, :, kj]).sum(-1)
    om = w[:, :, kj] * seen
    hit = om > 0
    xmax = x.masked_fill(~hit, -torch.inf).amax(-1, keepdim=True)
    xmin = x.masked_fill(~hit, torch.inf).amin(-1)
    y = torch.exp((x - torch.where(torch.isfinite(xmax), xmax, 0.0)) / degree).masked_fill(~hit, 0)
    tot = om.sum(-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
    xm, ym = (om * x).sum(-1, keepdim=True) / tot, (om * y).sum(-1, keepdim=True) / tot
    var = (om * (x - xm) ** 2).sum(-1)
    slope = (om * (x - xm) * (y - ym)).sum(-1) / var.clamp(min=torch.finfo(x.dtype).tiny)
    xm, ym = xm[..., 0], ym[..., 0]
    taylor = degree - xm  # exp(x) ~ (1 + (x - xm) / p)^p when the sample has no spread
    beta = torch.where((slope > 0) & (var > 0), ym / slope - xm, taylor)
    return torch.where(torch.isfinite(xmin), torch.maximum(beta, -xmin), taylor)


def feature_inputs(
    q: Tensor, k: Tensor, beta: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """Vectors whose inner product is the kernel's base: LN q . LN k, or scale q.k + beta."""
    if beta is None:
        return F.layer_norm(q, q.shape[-1:]), F.layer_norm(k, k.shape[-1:])
    root = math.sqrt(abs(scale))
    rb = beta.abs().sqrt()[:, :, None, None]
    extra_q = (rb * beta.sign()[:, :, None, None]).expand(*q.shape[:-1], 1)
    aq = torch.cat([math.copysign(root, scale) * q, extra_q], dim=-1)
    ak = torch.cat([root * k, rb.expand(*k.shape[:-1], 1)], dim=-1)
    return aq, ak


def _blocks(x: Tensor, lead: int, count: int, size: int) -> Tensor:
    """Pad the sequence axis (lead rows in front) and split it into ``count`` blocks."""
    return F.pad(x, (0, 0, lead, count * size - lead - x.shape[2])).unflatten(2, (count, size))


def _scan(
    hq: Tensor,
    hk: Tensor,
    aq: Tensor,
    ak: Tensor,
    x: Tensor,
    *,
    variant: str,
    degree: int,
    block: int,
    is_causal: bool,
) -> Tensor:
    """sum_j kappa(q_i, k_j) x_j with prefix states across blocks and exact/sketched locals."""
    sq, skv = aq.shape[2], ak.shape[2]
    fq = (hq[..., :, None] * hq[..., None, :]).flatten(-2)
    fk = (hk[..., :, None] * hk[..., None, :]).flatten(-2)
    if not is_causal and variant != "mixed":
        return fq @ (fk.transpose(-1, -2) @ x)
    off = skv - sq
    lead = off % block
    nq, nk = math.ceil((lead + sq) / block), math.ceil(skv / block)
    kblk = torch.arange(nq, device=x.device) + (off - lead) // block
    valid = (kblk >= 0) & (kblk < nk)
    kidx = kblk.clamp(0, nk - 1)
    xb = _blocks(x, 0, nk, block)
    states = _blocks(fk, 0, nk, block).transpose(-1, -2) @ xb
    if variant == "sketch":
        local = _blocks(hq, lead, nq, block) @ _blocks(hk, 0, nk, block)[:, :, kidx].transpose(
            -1, -2
        )
        local = local**2
    else:
        local = _blocks(aq, lead, nq, block) @ _blocks(ak, 0, nk, block)[:, :, kidx].transpose(
            -1, -2
        )
        local = local**degree
    local = local * valid[:, None, None]
    fqb = _blocks(fq, lead, nq, block)
    if is_causal:
        prefix = torch.cumsum(states, dim=2) - states
        tril = torch.ones(block, block, dtype=torch.bool, device=x.device).tril()
        far = fqb @ (prefix[:, :, kidx] * valid[:, None, None])
        local = local * tril
    else:
        far = fqb @ (states.sum(2, keepdim=True) - states[:, :, kidx] * valid[:, None, None])
    out = far + local @ xb[:, :, kidx]
    return out.flatten(2, 3)[:, :, lead : lead + sq]


def _dense(aq: Tensor, ak: Tensor, x: Tensor, *, degree: int, is_causal: bool) -> Tensor:
    """The quadratic formula of the exact kernel, for heads too wide for tensor features."""
    kern = (aq @ ak.transpose(-1, -2)) ** degree
    if is_causal:
        sq, skv = aq.shape[2], ak.shape[2]
        kern = kern.tril(skv - sq)
    return kern @ x


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    is_causal: bool,
    bias: Tensor | None = None,
    window: int | None = None,
    degree: int = 4,
    sketch_size: int = 32,
    block: int = 256,
    variant: str = "mixed",
    fit: str = "softmax_fit",
    seed: int = 0,
) -> Tensor:
    """Polynomial-kernel attention through sketched features and the block-causal scan."""
    validate(
        degree=degree, sketch_size=sketch_size, block=block, variant=variant, fit=fit, seed=seed
    )
    check_inputs(q, k, v, bias, is_causal, window)
    bsz, hq, sq, _ = q.shape
    skv = k.shape[2]
    if window_binds(skv, window):
        raise ValueError(
            f"polysketch cannot honour a sliding window ({window}) narrower than the keys"
            f" ({skv}): its prefix state keeps every earlier key; keep this block exact"
        )
    ct = compute_dtype(q.dtype)
    key_bias, full_bias = split_bias(bias, (bsz, hq, sq, skv), ct)
    if full_bias is not None:
        raise ValueError(
            "polysketch honours only key-wise biases (padding masks [.., 1, Skv]): a bias that"
            " varies per query cannot enter its feature state; keep this block exact"
        )
    out_dtype = q.dtype
    k, v = expand_kv(k, v, hq)
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    w = key_weights(key_bias, bsz, hq, skv, q)
    x = torch.cat([v * w[..., None], w[..., None]], dim=-1)
    beta = None
    if fit == "softmax_fit":
        beta = fit_shift(
            q,
            k,
            w,
            scale=scale,
            degree=degree,
            is_causal=is_causal,
            gen=torch.Generator().manual_seed(seed + 1),
        )
    aq, ak = feature_inputs(q, k, beta, scale)
    half = degree // 2
    if variant == "exact_poly" and aq.shape[-1] ** degree > MAX_EXACT_FEATURES:
        y = _dense(aq, ak, x, degree=degree, is_causal=is_causal)
    else:
        if variant == "exact_poly":
            hqk = tensor_power(torch.cat([aq, ak], dim=2), half)
        else:
            gen = torch.Generator().manual_seed(seed)
            hqk = sketch_half(torch.cat([aq, ak], dim=2), half, sketch_size, gen)
        y = _scan(
            hqk[:, :, :sq],
            hqk[:, :, sq:],
            aq,
            ak,
            x,
            variant=variant,
            degree=degree,
            block=block,
            is_causal=is_causal,
        )
    den = y[..., -1:] + (1.0 if fit == "none" else 0.0)
    return (y[..., :-1] / torch.where(den > 0, den, 1.0)).to(out_dtype)
