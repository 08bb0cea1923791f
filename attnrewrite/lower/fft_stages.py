"""The TE stages of the four-step real FFT (``attnrewrite.lower.fft_plan``) over any row prefix.

Every reduction is a plain (batched) matmul against a shared constant matrix, the shape
dlight's and meta_schedule's matmul rules know. Spectra are "k1-major": S[*rows, k1, 2 k2 + c]
(the real FFT computes only k2 <= N2 / 2, N2 even). The single-PrimFunc kernels
(``attnrewrite.lower.fft``) chain these stages inside one PrimFunc; the complex DFT of the ONNX
converter (``attnrewrite.lower.dft``) emits its stages one PrimFunc each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from attnrewrite.lower.fft_plan import split

Loader = Callable[..., object]  # (*rows, r, s) -> value of x[rows, r * N2 + s]


def forward_twiddle(te, rows: Sequence[int], n1: int, n2: int, a, tw, name: str):
    """Stage 1's ``a`` [*rows, 2 N1, N2] (real and imaginary rows interleaved) times the
    twiddles, to [*rows, N1, 2 N2] (complex pairs last), the layout stage 2 reads."""
    nr = len(rows)

    def twiddle(*idx):
        p, (k1, q) = idx[:nr], idx[nr:]
        s, c = q // 2, q % 2
        return a[(*p, 2 * k1, s)] * tw[k1, s, 0, c] + a[(*p, 2 * k1 + 1, s)] * tw[k1, s, 1, c]

    return te.compute((*rows, n1, 2 * n2), twiddle, name=name)


def hermitian(te, tirx, rows: Sequence[int], n: int, spec, dtype: str, name: str):
    """The full spectrum [*rows, N1, 2 N2] from a half one, ``spec(*rows, k1, k2, c)`` for
    k2 <= N2 / 2: X[k] = conj(X[N - k]) for k > N / 2, k = k1 + N1 k2 (indices clamped)."""
    n1, n2 = split(n)
    nr = len(rows)
    half = n // 2

    def entry(*idx):
        p, (k1, q) = idx[:nr], idx[nr:]
        k2, c = q // 2, q % 2
        k = k1 + n1 * k2
        mirror = n - k
        sign = tirx.Select(c == 0, tirx.const(1, dtype), tirx.const(-1, dtype))
        return tirx.Select(
            k <= half,
            spec(*p, k1, tirx.min(k2, n2 // 2), c),
            spec(*p, tirx.floormod(mirror, n1), tirx.min(tirx.floordiv(mirror, n1), n2 // 2), c)
            * sign,
        )

    return te.compute((*rows, n1, 2 * n2), entry, name=name)


def inverse_twiddle(te, rows: Sequence[int], n1: int, n2: int, d, tw, name: str):
    """The inverse's stage 1 output ``d`` [*rows, N1, 2 N2] times the twiddles, to
    [*rows, 2 N1, N2] (real and imaginary rows interleaved), the layout its stage 2 reads."""
    nr = len(rows)

    def twiddle(*idx):
        p, (i, m2) = idx[:nr], idx[nr:]
        k1, c = i // 2, i % 2
        return d[(*p, k1, 2 * m2)] * tw[k1, m2, 0, c] + d[(*p, k1, 2 * m2 + 1)] * tw[k1, m2, 1, c]

    return te.compute((*rows, 2 * n1, n2), twiddle, name=name)


def times_matrix(te, x, m, name: str):
    """``x`` [..., A, Q] times a DFT matrix ``m`` [Q, J] -> [..., A, J]: a stage along the
    last axis as a batched matmul (the form schedule rules tile)."""
    *lead, width = (int(d) for d in x.shape)
    q = te.reduce_axis((0, width), name="q")
    return te.compute(
        (*lead, int(m.shape[1])),
        lambda *ix: te.sum(x[(*ix[:-1], q)] * m[q, ix[-1]], axis=q),
        name=name,
    )


def forward_stages(te, rows: Sequence[int], n: int, load: Loader, dtype: str, name: str):
    """Real FFT of rows given by ``load``: (placeholders, spectrum [*rows, N1, 2 H2])."""
    n1, n2 = split(n)
    h2 = n2 // 2 + 1
    nr = len(rows)
    f1 = te.placeholder((2 * n1, n1), dtype, name=f"{name}_f1")
    tw = te.placeholder((n1, n2, 2, 2), dtype, name=f"{name}_tw")
    f2 = te.placeholder((2 * n2, 2 * h2), dtype, name=f"{name}_f2")
    r = te.reduce_axis((0, n1), name="r")

    def stage1(*idx):
        p, (i, s) = idx[:nr], idx[nr:]
        return te.sum(f1[i, r] * load(*p, r, s), axis=r)

    a = te.compute((*rows, 2 * n1, n2), stage1, name=f"{name}_dft1")
    b = forward_twiddle(te, rows, n1, n2, a, tw, f"{name}_twiddle")
    return [f1, tw, f2], times_matrix(te, b, f2, f"{name}_dft2")


def inverse_stages(te, tirx, rows: Sequence[int], n: int, spec, m1_out: int, dtype: str, name):
    """Inverse real FFT of a half spectrum, ``spec(*rows, k1, k2, c)`` for k2 <= N2 / 2.

    Output [*rows, m1_out, N2]: the first m1_out * N2 samples of the length-N signal.
    """
    n1, n2 = split(n)
    nr = len(rows)
    g2 = te.placeholder((2 * n2, 2 * n2), dtype, name=f"{name}_g2")
    tw = te.placeholder((n1, n2, 2, 2), dtype, name=f"{name}_tw")
    g1 = te.placeholder((m1_out, 2 * n1), dtype, name=f"{name}_g1")
    full = hermitian(te, tirx, rows, n, spec, dtype, f"{name}_full")
    d = times_matrix(te, full, g2, f"{name}_idft1")
    e = inverse_twiddle(te, rows, n1, n2, d, tw, f"{name}_itwiddle")
    i = te.reduce_axis((0, 2 * n1), name="i")

    def stage2(*idx):
        p, (m1, m2) = idx[:nr], idx[nr:]
        return te.sum(g1[m1, i] * e[(*p, i, m2)], axis=i)

    out = te.compute((*rows, m1_out, n2), stage2, name=f"{name}_idft2")
    return [g2, tw, g1], out
