"""PolySketch attention (Kacham, Mirrokni, Zhong, arXiv 2310.01655): polynomial kernel, sketched.

Kernel. ``fit="none"`` is the paper's polynomial attention: a = LN(x) (no affine, no scale),
kappa(q, k) = (a_q . a_k)^p, o_i = sum_j kappa v_j / (1 + sum_j kappa): a different function from a
trained softmax head. ``fit="softmax_fit"`` (default) is the training-free fit: with x = scale q.k,
kappa(q, k) = (x + beta)^p and no "1 +", beta per head chosen by least squares against softmax on a
seeded sample (32 visible queries x 64 visible keys, drawn as fixed fractions of the visible spans,
so an ONNX graph draws the same sample at run-time lengths): per sampled row, both (x + beta)^p and
exp(x) are normalised at the row's top sampled score, and beta minimises the summed squared
difference over a grid above -min(row top). Row-wise normalisation matters: softmax is
shift-invariant per row, and a fit pooled over the head (the plain least-squares of exp(x - c) over
all sampled scores) is dominated by the few rows with the largest scores. On n = 256, d = 64 heads
(random and relative-position, temperatures 0.5..4, p = 4 and 8, causal and not) the mean relative
output error of the exact fitted kernel was 0.25, against 0.23 for the best beta per head found by
search and 0.36 for Taylor's (1 + x/p)^p; it grows with the spread of scores (0.02-0.08 at
temperature 0.5, 0.3-0.8 at 4): (x + beta)^p ~ exp(x) exp(-(x - x0)^2/2p) near its fitted point, a
softmax damped for peaked rows. Larger p fits better. Sampling by fixed fractions instead of
length-dependent randint draws left the fit as good: on 32 such settings (random and rotary-like
heads, n = 256, d = 64) the mean error was 0.185 against 0.184 with the earlier sample (Taylor:
0.275). The kernel is an even power of the inner product of (sqrt(scale) q, sqrt(beta)) and
(sqrt(scale) k, sqrt(beta)) (sign carried on the query side), so its features stay non-negative.

Features. phi_1(a) = a; phi_h(a) = ((phi_ceil(h/2)(a) G1) o (phi_floor(h/2)(a) G2)) / sqrt(r) with
G ~ N(0, 1) d x r (a tree of degree-2 sketches, E<phi_h(x), phi_h(y)> = (x.y)^h). Note: the
paper's code scales each G by 1/sqrt(r), estimating (x.y)^2 / r, which matters only because of
its "1 +"; here the sketch targets the same kernel as ``exact_poly``. The squaring trick
phi'(a) = phi_{p/2}(a) (x) phi_{p/2}(a) (r^2 features) gives <phi'(q), phi'(k)> =
<phi(q), phi(k)>^2 >= 0. Variants: "sketch" uses phi' everywhere; "mixed" (default) the exact
kernel inside the diagonal blocks and phi' across blocks; "exact_poly" the exact kernel everywhere
(tensor-power features a^(x)p through the same block scan when (d+1)^p <= 4096, else dense
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

Calibrated variant (an addition to the paper, fitted per head by `attnrewrite.plan.fit`, a
diagonal form of Hedgehog's / LoLCATs' learned feature maps): ``query_gain``, ``key_gain`` and
``key_shift`` ([Hq, d] each) map q -> q o (1 + g_q) and k -> k o (1 + g_k) + c before the kernel,
after beta is fitted on the untouched q, k (so the map's effect is smooth in its numbers, and
it can move beta too: q.c is a per-query shift of the base, a constant one where the queries
share a direction). Softmax is blind to a per-query shift, the polynomial is not: each row can
be moved to where (x + beta)^p follows exp best. None, or zeros, is the training-free kernel.
"""

from __future__ import annotations

import math

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
    refuse_binding_window,
    split_bias,
)
from attnrewrite.methods.polysketch_draws import (
    FIT_GRID,
    FRACTION_BITS,
    MAX_EXACT_FEATURES,
    Sketch,
    fit_fractions,
    sketch_tree,
)


def sketch_half(a: Tensor, half: int, sketch_size: int, seed: int) -> Tensor:
    """phi_half(a) by the seeded tree of degree-2 Gaussian sketches (one call covers q and k)."""
    return _sketch(a, sketch_tree(a.shape[-1], half, sketch_size, seed))


def _sketch(a: Tensor, node: Sketch) -> Tensor:
    if node.left is None or node.right is None:
        return a
    left = _sketch(a, node.left) @ torch.from_numpy(node.g1).to(a)
    right = _sketch(a, node.right) @ torch.from_numpy(node.g2).to(a)
    return left * right / math.sqrt(node.width)


def tensor_power(a: Tensor, power: int) -> Tensor:
    """a^(x)power flattened: <a^(x)p, b^(x)p> = (a.b)^p exactly."""
    out = a
    for _ in range(power - 1):
        out = (out[..., :, None] * a[..., None, :]).flatten(-2)
    return out


def fraction_index(u: Tensor, span: Tensor) -> Tensor:
    """floor(u / 2^FRACTION_BITS * span) in integers: an index in [0, span), exactly."""
    return torch.div(u * span, 1 << FRACTION_BITS, rounding_mode="floor")


def fit_shift(
    q: Tensor,
    k: Tensor,
    w: Tensor,
    *,
    scale: float,
    degree: int,
    is_causal: bool,
    seed: int,
) -> Tensor:
    """beta [B, H] minimising sum_rows sum_keys (kappa / kappa_top - exp(x - x_top))^2.

    Rows are FIT_ROWS sampled queries with FIT_KEYS sampled causally visible keys each (keys of
    weight 0 are left out of the sums): query first + floor(u_r (Sq - first)), key
    floor(u_rm span_r), the fractions u drawn from ``seed`` independently of the lengths (so an
    ONNX graph reproduces the sample at run-time lengths). Both sides are normalised at the
    row's top sampled score, as softmax is per row. beta is searched on a grid above
    -min(row top), so every row's top base is positive. Ties (a flat error: every sampled row
    holds one distinct score, as with a single key) take the largest beta, which keeps the
    kernel's base away from 0, where float32 features would lose it.
    """
    sq, skv = q.shape[2], k.shape[2]
    off = skv - sq
    first = max(0, -off) if is_causal else 0  # queries that see at least one key
    if first >= sq:
        return torch.full(q.shape[:2], float(degree), dtype=q.dtype, device=q.device)
    row_u, key_u = (torch.from_numpy(u) for u in fit_fractions(seed))
    qi = first + fraction_index(row_u, torch.tensor(sq - first))
    span = (qi + off + 1).clamp(max=skv) if is_causal else torch.full_like(qi, skv)
    kj = fraction_index(key_u, span[:, None])
    qi, kj = qi.to(q.device), kj.to(q.device)
    x = scale * (q[:, :, qi, None, :] * k[:, :, kj, :]).sum(-1)  # [B, H, R, M]
    hit = w[:, :, kj] > 0
    top = x.masked_fill(~hit, -torch.inf).amax(-1, keepdim=True)
    hit &= torch.isfinite(top)
    top = torch.where(torch.isfinite(top), top, 0.0)
    low = -top.masked_fill(~hit.any(-1, keepdim=True), torch.inf).amin(-2)  # [B, H, 1]
    xmin = x.masked_fill(~hit, torch.inf).amin(dim=(-1, -2))[..., None]
    steps = torch.arange(1, FIT_GRID + 1, dtype=q.dtype, device=q.device) / FIT_GRID
    grid = low + (degree - low - xmin).clamp(min=1.0) * steps**2  # [B, H, G], dense near low
    g = grid[..., :, None, None]
    ratio = (x[..., None, :, :] + g) / (top[..., None, :, :] + g)
    err = (ratio**degree - torch.exp(x - top)[..., None, :, :]) ** 2
    err = torch.where(hit[..., None, :, :], err, 0.0).sum(dim=(-1, -2))
    best = FIT_GRID - 1 - err.flip(-1).argmin(-1, keepdim=True)  # ties: the largest beta
    beta = grid.gather(-1, best)[..., 0]
    return torch.where(torch.isfinite(low[..., 0]), beta, float(degree))


def fitted_map(
    q: Tensor,
    k: Tensor,
    query_gain: Tensor | None,
    key_gain: Tensor | None,
    key_shift: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """q o (1 + g_q), k o (1 + g_k) + c per head (k already repeated to the query heads)."""
    if query_gain is not None:
        q = q * (1 + query_gain.to(q)[:, None])
    if key_gain is not None:
        k = k * (1 + key_gain.to(k)[:, None])
    if key_shift is not None:
        k = k + key_shift.to(k)[:, None]
    return q, k


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
    lq, lk, power = (hq, hk, 2) if variant == "sketch" else (aq, ak, degree)
    local = _blocks(lq, lead, nq, block) @ _blocks(lk, 0, nk, block)[:, :, kidx].transpose(-1, -2)
    local = local**power * valid[:, None, None]
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
    query_gain: Tensor | None = None,
    key_gain: Tensor | None = None,
    key_shift: Tensor | None = None,
) -> Tensor:
    """Polynomial-kernel attention through sketched features and the block-causal scan."""
    get("polysketch").validate(
        degree=degree, sketch_size=sketch_size, block=block, variant=variant, fit=fit, seed=seed
    )
    check_inputs(q, k, v, bias, is_causal, window)
    for name, array in (
        ("query_gain", query_gain),
        ("key_gain", key_gain),
        ("key_shift", key_shift),
    ):
        check_fitted(name, array, q)
    bsz, hq, sq, _ = q.shape
    skv = k.shape[2]
    refuse_binding_window(
        "polysketch", skv, window, "its prefix state keeps every earlier key; keep this block exact"
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
            seed=seed,
        )
    q, k = fitted_map(q, k, query_gain, key_gain, key_shift)
    aq, ak = feature_inputs(q, k, beta, scale)
    half = degree // 2
    if variant == "exact_poly" and aq.shape[-1] ** degree > MAX_EXACT_FEATURES:
        y = _dense(aq, ak, x, degree=degree, is_causal=is_causal)
    else:
        if variant == "exact_poly":
            hqk = tensor_power(torch.cat([aq, ak], dim=2), half)
        else:
            hqk = sketch_half(torch.cat([aq, ak], dim=2), half, sketch_size, seed)
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
