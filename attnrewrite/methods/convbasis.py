"""Conv-basis attention (Liang, Liu, Shi, Song, Xu, Yin, arXiv 2405.05219).

The causal score matrix H (pre-exp) is modelled as a sum of k "conv" matrices: column j's
profile, read from the diagonal down (distance t = position - j), is S_i, the full profile of the
last change-point column j_i <= j. Then M o exp(H) is k-conv too, with bases
b~_1 = exp(S_1), b~_i = exp(S_i) - exp(S_{i-1}) on the trailing m_i = n - j_i rows (METHODS.md's
derived claim; tests/methods/test_convbasis.py checks it), and Y = sum_i conv(b~_i, m_i) [V w, w]
is k causal convolutions. They are applied in the telescoped form, the same sum regrouped by
column segment: Y = sum_i conv(exp(S_i), [V w, w] on columns [j_i, j_{i+1})), k rfft products at
a 5-smooth length >= 2n summed in the frequency domain and inverted once; O = Y[:, :dv] / Y[:, dv].
Every term is non-negative, while the b~ differences cancel: in float32 at k = n = 1024 on a
structured head the b~ form was 37% off (relative Frobenius), the telescoped form 0.6%. One shift
c (the largest recovered score of the head) is used before exp: a per-row max would break the
Toeplitz structure. FFTs run in float64 for float64 inputs and float32 otherwise.

Recovery of the change points (``recovery``), probing T = ``probe`` entries per column:

- "topk" (default): every column's first T entries against its left neighbour's at the same
  distances (O(n T d), one vectorised pass, static shapes: suits GPUs and exported graphs); the
  k - 1 largest jumps become change points. It wins with a fixed budget k on approximately
  structured heads, but sees only jumps: a slow drift across many columns goes unnoticed.
- "binary": the paper's search. For i = 2..k, binary-search the first column whose probe
  deviates from the running profile S_{i-1} by more than ``tol`` (max abs pre-exp difference),
  O(k T d log n) probes. It catches drift and stops early when nothing deviates (fewer bases),
  so it wins on long, truly k-conv heads; but it is sequential and assumes deviations are
  monotone, and on content-dependent heads it spends its k bases on the first deviating columns.

With k >= n every column is its own basis: exact to float rounding, both recoveries. The error
bound of the paper (derived in METHODS.md): if every modelled pre-exp entry is within eps,
|O~ - O|_inf <= (e^(2 eps) - 1) |V|_inf.

Extensions. Bidirectional: lower part plus strictly-upper part, the latter as J (strictly lower
k-conv) J with J the reversal, k bases each, one shared shift. Queries at key positions
p_i = i + Skv - Sq (KV cache, cross-attention): rows are positioned on the key axis; when
Skv > Sq the rows above the first query do not exist, and a column starting there reads them
from the first query row along the same diagonal (the Toeplitz model's own extension), which
makes single-query decode exact at any k; rows left of every key (Sq > Skv) have no lower part.

Masks: key-wise biases (padding masks [.., 1, Skv], or constant along the query axis) exactly,
as key weights on [V, 1]; a causal ``window`` exactly, by zeroing kernel entries t >= window; a
bias that varies per query (ALiBi, T5 relative bias, full masks) is part of H, so it is folded
into the recovered profiles (-inf entries become exact zeros): it is honoured to the same
approximation as q.k, exactly at k = n, and relative-position biases suit the model well.
Limits: rows whose every score sits ~87 (float32) / ~708 (float64) below the head's maximum
underflow under the global shift and return zeros. In float32 the FFT's absolute error is ~1e-7
of the largest row sum, so rows with far smaller sums (the first causal rows) lose relative
accuracy: measured 5-10 rows of 8192 off by > 1% at n = 1024 (pass float64 to avoid it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnrewrite.methods.exact import (
    check_inputs,
    compute_dtype,
    expand_kv,
    key_weights,
    split_bias,
)

RECOVERIES = ("topk", "binary")
FLOOR = -1e30  # masked scores: finite for probe differences, exp underflows to exactly 0


def validate(*, bases: int, probe: int, recovery: str, tol: float) -> None:
    """Reject settings that would silently recover nothing."""
    for name, val in (("bases", bases), ("probe", probe)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"convbasis {name} must be an int >= 1, got {val!r}")
    if recovery not in RECOVERIES:
        raise ValueError(f"convbasis recovery must be one of {RECOVERIES}, got {recovery!r}")
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol >= 0:
        raise ValueError(f"convbasis tol must be a number >= 0, got {tol!r}")


def fast_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFT libraries are fastest on 5-smooth sizes."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


class _Scores:
    """G[r, c] = scale q_r . k_c + bias[r, c] at index tensors [B|1, H|1, ...], clamped to FLOOR.

    ``flip`` reads row Sq-1-r and column Skv-1-c: the strictly-upper part as a lower problem.
    """

    def __init__(self, q: Tensor, k: Tensor, bias: Tensor | None, scale: float, flip: bool = False):
        self.q, self.k, self.bias, self.scale, self.flip = q, k, bias, scale, flip

    def __call__(self, rows: Tensor, cols: Tensor) -> Tensor:
        bsz, heads, sq, d = self.q.shape
        rows, cols = torch.broadcast_tensors(rows, cols)
        shape = (bsz, heads, *rows.shape[2:])
        if self.flip:
            rows, cols = sq - 1 - rows, self.k.shape[2] - 1 - cols
        rows = rows.expand(shape).reshape(bsz, heads, -1)
        cols = cols.expand(shape).reshape(bsz, heads, -1)
        qr = self.q.gather(2, rows[..., None].expand(-1, -1, -1, d))
        kc = self.k.gather(2, cols[..., None].expand(-1, -1, -1, d))
        val = self.scale * (qr * kc).sum(-1)
        if self.bias is not None:
            bi = torch.arange(bsz, device=rows.device)[:, None, None]
            hi = torch.arange(heads, device=rows.device)[None, :, None]
            val = val + self.bias[bi, hi, rows, cols]
        return val.clamp(min=FLOOR).view(shape)


class _Triangle:
    """One lower-triangular problem: entries G[r, c] where t = r + r0 - c >= t_min.

    Rows r in [0, R) sit at key positions r0 + r, columns c in [0, C) are keys, distances
    t in [0, r0 + R). Columns from ``live`` on have no entry in any row.
    """

    def __init__(
        self, score: _Scores, *, rows: int, cols: int, r0: int, t_min: int, window: int | None
    ):
        self.score, self.rows, self.cols = score, rows, cols
        self.r0, self.t_min, self.window = r0, t_min, window
        self.length = r0 + rows
        self.live = max(0, min(cols, r0 + rows - t_min))
        self.device = score.q.device

    def in_range(self, t: Tensor) -> Tensor:
        """Distances the kernel keeps: t >= t_min, and t < window when causal-windowed."""
        keep = t >= self.t_min
        return keep if self.window is None else keep & (t < self.window)

    def _probe(self, cols: Tensor, first: Tensor, probe: int) -> tuple[Tensor, Tensor, Tensor]:
        """Distances t, rows r and validity of ``probe`` entries of each column from ``first``."""
        t = first.clamp(min=self.t_min)[..., None] + torch.arange(probe, device=self.device)
        r = cols[..., None] + t - self.r0
        return t, r.clamp(0, self.rows - 1), (r < self.rows) & self.in_range(t)

    def jumps(self, cols: Tensor, probe: int) -> Tensor:
        """Max |G[r, j] - G[r-1, j-1]| over the first known entries shared with the left column."""
        _, r, ok = self._probe(cols, self.r0 - cols + 1, probe)
        cur = self.score(r, cols[..., None])
        left = self.score((r - 1).clamp(min=0), cols[..., None] - 1)
        return (cur - left).abs().masked_fill(~ok, 0).amax(-1)

    def drift(self, cols: Tensor, ref: Tensor, probe: int) -> Tensor:
        """Max |G[., j] - S[t]| over column j's first known entries, S a running profile."""
        t, r, ok = self._probe(cols, self.r0 - cols, probe)
        cur = self.score(r, cols[..., None])
        other = ref.gather(-1, t.clamp(max=self.length - 1))
        return (cur - other).abs().masked_fill(~ok, 0).amax(-1)

    def profiles(self, points: Tensor) -> Tensor:
        """Profiles S_i [B, H, k, length] of change-point columns (-inf where none)."""
        t = torch.arange(self.length, device=self.device)
        cols = points[..., None]
        r = cols + t - self.r0
        vals = self.score(r.clamp(0, self.rows - 1), cols)
        if self.r0 > 0:  # rows above the first query: its entry on the same diagonal
            head = self.score(
                torch.zeros_like(t)[None, None], (self.r0 - t).clamp(min=0)[None, None]
            )
            vals = torch.where(r < 0, head[:, :, None], vals)
        return vals.masked_fill(~(self.in_range(t) & (r < self.rows)), -torch.inf)

    def topk(self, bsz: int, heads: int, bases: int, probe: int) -> Tensor:
        """Column 0 plus the bases - 1 largest neighbour jumps, sorted: [B, H, k]."""
        cols = torch.arange(1, self.cols, device=self.device).expand(bsz, heads, -1)
        score = self.jumps(cols, probe).masked_fill(cols >= self.live, -torch.inf)
        picks = score.topk(min(bases - 1, self.cols - 1), dim=-1).indices + 1
        start = torch.zeros(bsz, heads, 1, dtype=torch.long, device=self.device)
        return torch.cat([start, picks], dim=-1).sort(dim=-1).values

    def binary(self, bsz: int, heads: int, bases: int, probe: int, tol: float) -> Tensor:
        """The paper's search; a head that runs out of change points repeats its last one."""
        points = [torch.zeros(bsz, heads, dtype=torch.long, device=self.device)]
        ref = self.profiles(points[0][..., None])[:, :, 0]
        for _ in range(bases - 1):
            lo = (points[-1] + 1).clamp(max=self.live)
            hi = torch.full_like(lo, self.live)
            while bool((lo < hi).any()):
                mid = (lo + hi) // 2
                far = (self.drift(mid.clamp(max=self.cols - 1), ref, probe) > tol) & (lo < hi)
                hi = torch.where(far, mid, hi)
                lo = torch.where(far | (lo >= hi), lo, mid + 1)
            found = lo < self.live
            if not bool(found.any()):
                break
            points.append(torch.where(found, lo, points[-1]))
            ref = self.profiles(points[-1][..., None])[:, :, 0]
        return torch.stack(points, dim=-1)

    def apply(self, logs: Tensor, points: Tensor, x: Tensor, shift: Tensor) -> Tensor:
        """sum_i conv(exp(S_i), x on segment i) by FFT; rows [0, R) of it: [B, H, R, dv+1]."""
        kern = torch.exp(logs - shift[..., None, None])
        n_fft = fast_length(self.length + self.cols)
        cols = torch.arange(self.cols, device=self.device)
        ends = torch.cat([points[..., 1:], torch.full_like(points[..., :1], self.cols)], -1)
        acc = torch.zeros((), dtype=x.dtype, device=self.device)
        for i in range(points.shape[-1]):
            seg = (cols >= points[:, :, i, None]) & (cols < ends[:, :, i, None])
            xi = x * seg[..., None]
            spec = torch.fft.rfft(kern[:, :, i], n=n_fft, dim=-1)[..., None]
            acc = acc + spec * torch.fft.rfft(xi, n=n_fft, dim=2)
        y = torch.fft.irfft(acc, n=n_fft, dim=2)
        return y[:, :, self.r0 : self.r0 + self.rows]


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    is_causal: bool,
    bias: Tensor | None = None,
    window: int | None = None,
    bases: int = 16,
    probe: int = 8,
    recovery: str = "topk",
    tol: float = 0.05,
) -> Tensor:
    """Conv-basis attention: k recovered bases per triangle, applied by FFT."""
    validate(bases=bases, probe=probe, recovery=recovery, tol=tol)
    check_inputs(q, k, v, bias, is_causal, window)
    bsz, hq, sq, _ = q.shape
    skv = k.shape[2]
    ct = compute_dtype(q.dtype)
    key_bias, full_bias = split_bias(bias, (bsz, hq, sq, skv), ct)
    out_dtype = q.dtype
    k, v = expand_kv(k, v, hq)
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    w = key_weights(key_bias, bsz, hq, skv, q)
    x = torch.cat([v * w[..., None], w[..., None]], dim=-1)

    off = skv - sq
    start = max(0, -off)  # rows left of every key have no lower part
    lower = _Triangle(
        _Scores(q[:, :, start:], k, None if full_bias is None else full_bias[:, :, start:], scale),
        rows=sq - start,
        cols=skv,
        r0=max(off, 0),
        t_min=0,
        window=window,
    )
    parts = [(lower, x)]
    if not is_causal:
        upper = _Scores(q, k, full_bias, scale, flip=True)
        parts.append((_Triangle(upper, rows=sq, cols=skv, r0=0, t_min=1, window=None), x.flip(2)))
    found = []
    for tri, xp in parts:
        if tri.rows <= 0 or tri.live == 0:
            continue
        if recovery == "topk":
            points = tri.topk(bsz, hq, bases, probe)
        else:
            points = tri.binary(bsz, hq, bases, probe, tol)
        found.append((tri, xp, points, tri.profiles(points)))

    y = torch.zeros(bsz, hq, sq, x.shape[-1], dtype=ct, device=q.device)
    if found:
        top = torch.stack([logs.amax(dim=(-1, -2)) for *_, logs in found]).amax(0)
        shift = torch.where(top > FLOOR / 2, top, 0.0)
        for tri, xp, points, logs in found:
            part = tri.apply(logs, points, xp, shift)
            if tri.score.flip:
                y = y + part.flip(2)
            else:
                y[:, :, start:] += part
    den = y[..., -1:]
    return torch.where(den > 0, y[..., :-1] / torch.where(den > 0, den, 1.0), 0.0).to(out_dtype)
