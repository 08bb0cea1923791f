"""Conv-basis attention (Liang, Liu, Shi, Song, Xu, Yin, arXiv 2405.05219).

The causal score matrix H (pre-exp) is modelled as a sum of k "conv" matrices: column j's
profile, read from the diagonal down (distance t = position - j), is S_i, the full profile of the
last change-point column j_i <= j. Then M o exp(H) is k-conv too, with bases
b~_1 = exp(S_1), b~_i = exp(S_i) - exp(S_{i-1}) on the trailing m_i = n - j_i rows (derived in
docs/methods.md; tests/methods/test_convbasis.py checks it), and Y = sum_i conv(b~_i, m_i) [V w, w]
is k causal convolutions. They are applied in the telescoped form, the same sum regrouped by
column segment: Y = sum_i conv(exp(S_i), [V w, w] on columns [j_i, j_{i+1})), k rfft products at
a 5-smooth length >= 2n summed in the frequency domain and inverted once; O = Y[:, :dv] / Y[:, dv].
Every term is non-negative, while the b~ differences cancel: in float32 at k = n = 1024 on a
structured head the b~ form was 37% off (relative Frobenius), the telescoped form 0.6%. One shift
c (the largest recovered score of the head) is used before exp: a per-row max would break the
Toeplitz structure. FFTs run in float64 for float64 inputs and float32 otherwise.

Recovery of the change points (``recovery``), probing T = ``probe`` entries per column:

- "topk" (default): every column's first T entries against the nearest weighted column to its
  left at the same distances (O(n T d), one vectorised pass, static shapes: suits GPUs and
  exported graphs); the k - 1 largest jumps become change points. It wins with a fixed budget
  k on approximately structured heads, but sees only jumps: slow drift goes unnoticed.
- "binary": the paper's search. For i = 2..k, binary-search the first column whose probe
  deviates from the running profile S_{i-1} by more than ``tol`` (max abs pre-exp difference),
  O(k T d log n) probes. It catches drift and stops early when nothing deviates (fewer bases),
  so it wins on long, truly k-conv heads; but it is sequential and assumes deviations are
  monotone (a later step that cancels an earlier one, +0.58 then -0.53, hides both from it:
  error 0.51 on such an exactly 6-conv head, where topk is exact), and ``tol`` must sit above
  the head's score noise (float rounding included: tol = 0 spends the k bases on the first
  columns), or it wastes bases (on the noisy test heads, k = 8: error 0.24 at tol 0.05, 0.034
  at tol 0.3, as topk; the default 0.25 bounds probed weights within e^(+-0.5)).

Defaults: bases = 16, fewer flops than exact attention beyond n ~ 1.25 k log2(2n) (~200 tokens
at k = 16; FFTs are memory-bound, so measure); probe = 8: a change must show within the first T
entries of its column, which costs T n d to scan (T = 1..32 gave the same topk error on the test
heads); recovery = "topk".

With k >= n every column is its own basis: exact to float rounding (binary: with tol = 0). The
error bound (derived in docs/methods.md, true, tested): if every modelled pre-exp entry is within
eps, |O~ - O|_inf <= (e^(2 eps) - 1) |V|_inf.

Extensions. Bidirectional: lower part plus strictly-upper part, the latter as J (strictly lower
k-conv) J with J the reversal, k bases each, one shared shift. Queries at key positions
p_i = i + Skv - Sq (KV cache, cross-attention): rows are positioned on the key axis; when
Skv > Sq the rows above the first query do not exist, and a column starting there reads them
from the first query row along the same diagonal (the Toeplitz model's own extension; a padded
key there reads as -inf), which makes single-query decode exact at any k; rows left of every key
(Sq > Skv) have no lower part.

Masks: key-wise biases (padding masks [.., 1, Skv], or constant along the query axis) exactly,
as key weights on [V, 1]; padded keys never start a basis and jumps skip them, so their content
cannot change the output. A causal ``window`` exactly, by zeroing kernel entries t >= window. A
bias that varies per query (ALiBi, T5 relative bias, 4-D masks) is part of H, so it is folded
into the recovered profiles (-inf entries become exact zeros): it is honoured to the same
approximation as q.k, exactly at k = n; relative-position biases suit the model (ALiBi on a
5-conv head stayed 5-conv: error 7e-15 at k = 5). Rows with no visible weighted key return zeros.
Query centres (``center``, fitted by calibration, `attnrewrite.plan.fit`): scores are
s (q - c).k + s c.k; the second term is a key-wise bias, honoured exactly as above, so the bases
are recovered on (q - c).k only, which varies less along a diagonal when c is the direction a
head's queries share. Zeros are the method itself, and k >= n stays exact for any c.
Limits: rows whose every score sits ~87 (float32) / ~708 (float64) below the head's maximum
underflow under the global shift and return zeros. In float32 the FFT's absolute error is ~1e-7
of the largest row sum, so rows with far smaller sums (the first causal rows) lose relative
accuracy: measured 5-10 rows of 8192 off by > 1% at n = 1024 (pass float64 to avoid it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnrewrite.methods import get
from attnrewrite.methods.exact import (
    check_inputs,
    compute_dtype,
    expand_kv,
    key_weights,
    positions_mask,
    split_bias,
)

FLOOR = -1e30  # masked scores: finite for probe differences, exp underflows to exactly 0


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
        bsz, heads, sq, _ = self.q.shape
        shape = (bsz, heads, *torch.broadcast_shapes(rows.shape, cols.shape)[2:])
        if self.flip:
            rows, cols = sq - 1 - rows, self.k.shape[2] - 1 - cols
        # each operand gathered at its own index shape: a column probed at T rows reads its key
        # once, not T times
        val = self.scale * (_rows_at(self.q, rows, len(shape)) * _rows_at(self.k, cols, len(shape)))
        return self._biased(val.sum(-1), rows, cols)

    def columns(self, rows: Tensor, cols: Tensor) -> Tensor:
        """G at rows [B|1, H|1, k, L] of the k columns cols [B|1, H|1, k]: every query against
        those k keys in one product, then read (far fewer gathers than one per entry)."""
        bsz, heads, sq, _ = self.q.shape
        if self.flip:
            rows, cols = sq - 1 - rows, self.k.shape[2] - 1 - cols
        keys = _rows_at(self.k, cols, 3)  # [B, H, k, d]
        products = self.scale * (self.q @ keys.transpose(-1, -2))  # [B, H, Sq, k]
        val = products.transpose(-1, -2).gather(3, rows.expand(bsz, heads, -1, -1))
        return self._biased(val, rows, cols[..., None])

    def _biased(self, val: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """val + bias at (rows, cols) (flipped already), clamped to FLOOR."""
        if self.bias is not None:
            bsz, heads = val.shape[:2]
            flat = [x.expand(val.shape).reshape(bsz, heads, -1) for x in (rows, cols)]
            bi = torch.arange(bsz, device=val.device)[:, None, None]
            hi = torch.arange(heads, device=val.device)[None, :, None]
            val = val + self.bias[bi, hi, flat[0], flat[1]].view(val.shape)
        return val.clamp(min=FLOOR)


def _rows_at(x: Tensor, index: Tensor, rank: int) -> Tensor:
    """x [B, H, S, d] at an index [B|1, H|1, ...] (right-aligned to `rank` dims), the index's
    own trailing shape kept: [B, H, ..., d]."""
    bsz, heads, _, d = x.shape
    index = index.reshape((1,) * (rank - index.dim()) + tuple(index.shape))
    index = index.expand(bsz, heads, *index.shape[2:])
    flat = index.reshape(bsz, heads, -1)
    return x.gather(2, flat[..., None].expand(-1, -1, -1, d)).view(*index.shape, d)


class _Triangle:
    """One lower-triangular problem: entries G[r, c] where t = r + r0 - c >= t_min.

    Rows r in [0, R) sit at key positions r0 + r, columns c in [0, C) are keys with values
    x [B, H, C, dv + 1] (last column: key weight), distances t in [0, r0 + R). Columns from
    ``live`` on have no entry in any row. Zero-weight (padded) keys never start a basis and
    jumps are measured against the nearest weighted column to the left, so padded keys cannot
    change the result.
    """

    def __init__(
        self, score: _Scores, x: Tensor, *, rows: int, r0: int, t_min: int, window: int | None
    ):
        self.score, self.x, self.rows, self.cols = score, x, rows, x.shape[2]
        self.r0, self.t_min, self.window = r0, t_min, window
        self.length = r0 + rows
        self.live = max(0, min(self.cols, r0 + rows - t_min))
        self.device = x.device
        self.real = x[..., -1] > 0
        idx = torch.arange(self.cols, device=self.device)
        self.last_real = torch.where(self.real, idx, -1).cummax(dim=-1).values
        rev = torch.where(self.real, idx, self.cols).flip(-1).cummin(dim=-1).values.flip(-1)
        self.next_real = torch.cat([rev, torch.full_like(rev[..., :1], self.cols)], dim=-1)
        self.first = self.next_real[..., 0].clamp(max=self.cols - 1)

    def in_range(self, t: Tensor) -> Tensor:
        """Distances the kernel keeps: t >= t_min, and t < window when causal-windowed."""
        keep = t >= self.t_min
        return keep if self.window is None else keep & (t < self.window)

    def _probe(self, cols: Tensor, first: Tensor, probe: int) -> tuple[Tensor, Tensor, Tensor]:
        """Distances t, rows r and validity of ``probe`` entries of each column from ``first``."""
        t = first.clamp(min=self.t_min)[..., None] + torch.arange(probe, device=self.device)
        r = cols[..., None] + t - self.r0
        return t, r.clamp(0, self.rows - 1), (r < self.rows) & self.in_range(t)

    def jumps(self, cols: Tensor, left: Tensor, probe: int) -> Tensor:
        """Max |G[., j] - G[., left]| at equal distances, over the first entries both have."""
        t, r, ok = self._probe(cols, self.r0 - left, probe)
        cur = self.score(r, cols[..., None])
        prev = self.score((left[..., None] + t - self.r0).clamp(0, self.rows - 1), left[..., None])
        return (cur - prev).abs().masked_fill(~ok, 0).amax(-1)

    def drift(self, cols: Tensor, ref: Tensor, probe: int) -> Tensor:
        """Max |G[., j] - S[t]| over column j's first known entries, S a running profile."""
        t, r, ok = self._probe(cols, self.r0 - cols, probe)
        cur = self.score(r, cols[..., None])
        other = ref.gather(-1, t.clamp(max=self.length - 1))
        ok &= torch.isfinite(other)
        return (cur - other).abs().masked_fill(~ok, 0).amax(-1)

    def profiles(self, points: Tensor) -> Tensor:
        """Profiles S_i [B, H, k, length] of change-point columns (-inf: none or padded)."""
        t = torch.arange(self.length, device=self.device)
        cols = points[..., None]
        r = cols + t - self.r0
        vals = self.score.columns(r.clamp(0, self.rows - 1), points)
        if self.r0 > 0:  # rows above the first query: its entry on the same diagonal
            diag = (self.r0 - t).clamp(min=0).expand_as(self.real)
            head = self.score(torch.zeros_like(diag), diag)
            head = head.masked_fill(~self.real.gather(-1, diag), -torch.inf)
            vals = torch.where(r < 0, head[:, :, None], vals)
        keep = self.in_range(t) & (r < self.rows) & self.real.gather(-1, points)[..., None]
        return vals.masked_fill(~keep, -torch.inf)

    def topk(self, bases: int, probe: int) -> Tensor:
        """The first weighted column plus the bases - 1 largest jumps, sorted: [B, H, k]."""
        cols = torch.arange(1, self.cols, device=self.device).expand_as(self.real[..., 1:])
        left = self.last_real[..., :-1]
        score = self.jumps(cols, left.clamp(min=0), probe)
        score = score.masked_fill(
            ~self.real[..., 1:] | (left < 0) | (cols >= self.live), -torch.inf
        )
        picks = score.topk(min(bases - 1, self.cols - 1), dim=-1).indices + 1
        return torch.cat([self.first[..., None], picks], dim=-1).sort(dim=-1).values

    def binary(self, bases: int, probe: int, tol: float) -> Tensor:
        """The paper's search; a head that runs out of change points repeats its last one."""
        points = [self.first]
        ref = self.profiles(points[0][..., None])[:, :, 0]
        for _ in range(bases - 1):
            lo = (points[-1] + 1).clamp(max=self.live)
            hi = torch.full_like(lo, self.live)
            while bool((lo < hi).any()):
                mid = (lo + hi) // 2
                # a padded column answers for the next weighted one; none left: go left
                col = self.next_real.gather(-1, mid[..., None])[..., 0]
                far = self.drift(col.clamp(max=self.cols - 1), ref, probe) > tol
                far = (far | (col >= self.live)) & (lo < hi)
                hi = torch.where(far, mid, hi)
                lo = torch.where(far | (lo >= hi), lo, mid + 1)
            lo = self.next_real.gather(-1, lo[..., None])[..., 0]
            found = lo < self.live
            if not bool(found.any()):
                break
            points.append(torch.where(found, lo, points[-1]))
            ref = self.profiles(points[-1][..., None])[:, :, 0]
        return torch.stack(points, dim=-1)

    def apply(self, logs: Tensor, points: Tensor, shift: Tensor) -> Tensor:
        """sum_i conv(exp(S_i), x on segment i) by FFT; rows [0, R) of it: [B, H, R, dv+1]."""
        kern = torch.exp(logs - shift[..., None, None])
        n_fft = fast_length(self.length + self.cols)
        cols = torch.arange(self.cols, device=self.device)
        ends = torch.cat([points[..., 1:], torch.full_like(points[..., :1], self.cols)], -1)
        acc = torch.zeros((), dtype=self.x.dtype, device=self.device)
        for i in range(points.shape[-1]):
            seg = (cols >= points[:, :, i, None]) & (cols < ends[:, :, i, None])
            xi = self.x * seg[..., None]
            spec = torch.fft.rfft(kern[:, :, i], n=n_fft, dim=-1)[..., None]
            acc = acc + spec * torch.fft.rfft(xi, n=n_fft, dim=2)
        y = torch.fft.irfft(acc, n=n_fft, dim=2)
        return y[:, :, self.r0 : self.r0 + self.rows]

    def apply_direct(self, logs: Tensor, points: Tensor, shift: Tensor, rows: Tensor) -> Tensor:
        """The same sum as `apply` on the triangle's `rows`, as one product with the matrix it
        convolves by: A[r, c] = exp(S_seg(c))[r + r0 - c] (zero above the diagonal and before
        the first change point)."""
        kern = F.pad(torch.exp(logs - shift[..., None, None]), (0, 0, 1, 0))  # row 0: no basis
        cols = torch.arange(self.cols, device=self.device)
        seg = (cols[:, None] >= points[..., None, :]).sum(-1)  # [B, H, C]
        t = self.r0 + rows[None, :] - cols[:, None]  # [C, R], below the triangle's length
        at = seg[..., None] * self.length + t.clamp(min=0)  # into kern's [k + 1, L] rows
        a = kern.flatten(2).gather(2, at.flatten(2)).view(at.shape)  # [B, H, C, R]
        a = a.masked_fill(t < 0, 0.0)
        return a.transpose(-1, -2) @ self.x


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
    tol: float = 0.25,
    transform: str = "direct",
    center: Tensor | None = None,
) -> Tensor:
    """Conv-basis attention: k recovered bases per triangle, applied directly or by FFT.

    ``center`` [Hq, d] (calibration's fitted array; None: zeros): each head's queries less c,
    the bases recovered and applied on (q - c).k, and c.k added back as an exact key-wise bias."""
    return rows_of(
        None,
        q,
        k,
        v,
        scale=scale,
        is_causal=is_causal,
        bias=bias,
        window=window,
        bases=bases,
        probe=probe,
        recovery=recovery,
        tol=tol,
        transform=transform,
        center=center,
    )


def rows_of(
    rows: Tensor | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    is_causal: bool,
    bias: Tensor | None,
    window: int | None,
    bases: int,
    probe: int,
    recovery: str,
    tol: float,
    transform: str,
    center: Tensor | None,
) -> Tensor:
    """`attention`'s query `rows` only, [B, H, len(rows), dv] (None: every row): what
    calibration's fit evaluates on its sample. The bases are recovered from every row, as the
    whole output's are; the rows are computed by the direct transform."""
    get("convbasis").validate(
        bases=bases, probe=probe, recovery=recovery, tol=tol, transform=transform
    )
    check_inputs(q, k, v, bias, is_causal, window)
    if rows is not None and transform != "direct":
        raise ValueError("convbasis computes a subset of rows by the direct transform only")
    bsz, hq, sq, _ = q.shape
    skv = k.shape[2]
    ct = compute_dtype(q.dtype)
    key_bias, full_bias = split_bias(bias, (bsz, hq, sq, skv), ct)
    out_dtype = q.dtype
    k, v = expand_kv(k, v, hq)
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    if center is not None:
        point = center.to(ct)[None, :, None, :]
        tilt = scale * (k * point).sum(-1)[:, :, None, :]  # [B, H, 1, Skv]
        key_bias = tilt if key_bias is None else key_bias + tilt
        q = q - point
    w = key_weights(key_bias, bsz, hq, skv, q)
    x = torch.cat([v * w[..., None], w[..., None]], dim=-1)

    off = skv - sq
    start = max(0, -off)  # rows left of every key have no lower part
    lower = _Triangle(
        _Scores(q[:, :, start:], k, None if full_bias is None else full_bias[:, :, start:], scale),
        x,
        rows=sq - start,
        r0=max(off, 0),
        t_min=0,
        window=window,
    )
    parts = [lower]
    if not is_causal:
        upper = _Scores(q, k, full_bias, scale, flip=True)
        parts.append(_Triangle(upper, x.flip(2), rows=sq, r0=0, t_min=1, window=None))
    found = []
    for tri in parts:
        if tri.rows <= 0 or tri.live == 0:
            continue
        with torch.no_grad():  # a selection: nothing to differentiate (a fit's time saved)
            points = tri.topk(bases, probe) if recovery == "topk" else tri.binary(bases, probe, tol)
        found.append((tri, points, tri.profiles(points)))

    picked = torch.arange(sq, device=q.device) if rows is None else rows
    y = torch.zeros(bsz, hq, len(picked), x.shape[-1], dtype=ct, device=q.device)
    if found:
        top = torch.stack([logs.amax(dim=(-1, -2)) for *_, logs in found]).amax(0)
        shift = torch.where(top > FLOOR / 2, top, 0.0)
        for tri, points, logs in found:
            if transform == "fft":
                part = tri.apply(logs, points, shift)
                y = y + (part.flip(2) if tri.score.flip else F.pad(part, (0, 0, start, 0)))
            else:  # the flipped triangle reads row sq - 1 - r; rows before `start` have no part
                at = sq - 1 - picked if tri.score.flip else picked - start
                part = tri.apply_direct(logs, points, shift, at.clamp(min=0))
                y = y + part * (at >= 0)[:, None]
    den = y[..., -1:]
    sees = _sees_a_key(w > 0, full_bias, sq, is_causal, window)[..., picked]
    ok = (den > 0) & sees[..., None]
    return torch.where(ok, y[..., :-1] / torch.where(ok, den, 1.0), 0.0).to(out_dtype)


def _sees_a_key(
    real: Tensor, full_bias: Tensor | None, sq: int, is_causal: bool, window: int | None
) -> Tensor:
    """[B, H, Sq]: rows with a visible weighted key; the others must be exact zeros, not the
    FFT's rounding noise divided by itself."""
    skv = real.shape[-1]
    if full_bias is not None:
        seen = torch.isfinite(full_bias) & real[..., None, :]
        allowed = positions_mask(sq, skv, is_causal, window, real.device)
        return (seen if allowed is None else seen & allowed).any(-1)
    if not is_causal:
        return real.any(-1, keepdim=True).expand(*real.shape[:-1], sq)
    count = F.pad(real.long().cumsum(-1), (1, 0))  # count[p] = weighted keys before p
    end = (torch.arange(sq, device=real.device) + skv - sq + 1).clamp(0, skv)
    begin = (end - window).clamp(min=0) if window is not None else torch.zeros_like(end)
    return count[..., end] > count[..., begin]
