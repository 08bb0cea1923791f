"""The four-step FFTs as Relax modules with one PrimFunc per stage (``emit_te``).

dlight schedules one main block per PrimFunc (what Relax produces after fusion): the
single-PrimFunc kernels of ``attnrewrite.lower.fft`` get its fallback (one thread per output)
on GPUs, whereas one PrimFunc per stage gets its matmul rule (shared-memory tiles). These
modules chain the same stages (``attnrewrite.lower.fft_stages``); rows are flat (P = the
product of the leading dims). Checked against numpy in test_fft.py and test_cuda.py, timed on
GPUs by benchmarks/tvm_fft.py.
"""

from __future__ import annotations

import numpy as np

from attnrewrite.lower.fft_plan import constants, fft_size, split
from attnrewrite.lower.fft_stages import forward_twiddle, hermitian, inverse_twiddle, times_matrix
from attnrewrite.lower.kernel import check_dtype


def _emit_forward(bb, rows: int, n: int, dtype: str, load, src, name: str):
    """Emit a real FFT of ``rows`` rows read through ``load(src, p, t)`` (t < N, zero-padded by
    the loader). Returns the k1-major spectrum [rows, N1, 2 H2]."""
    from tvm import relax, te

    n1, n2 = split(n)
    f1, tw, f2 = (relax.const(np.ascontiguousarray(a, dtype), dtype) for a in constants(n))

    def stage1(src, f1):
        r = te.reduce_axis((0, n1), name="r")
        return te.compute(
            (rows, 2 * n1, n2),
            lambda p, i, s: te.sum(f1[i, r] * load(src, p, r * n2 + s), axis=r),
            name="dft1",
        )

    def twiddle(a, tw):
        return forward_twiddle(te, (rows,), n1, n2, a, tw, "twiddle")

    def stage2(b, f2):
        return times_matrix(te, b, f2, "dft2")

    a = bb.emit_te(stage1, src, f1, primfunc_name_hint=f"{name}_dft1")
    b = bb.emit_te(twiddle, a, tw, primfunc_name_hint=f"{name}_twiddle")
    return bb.emit_te(stage2, b, f2, primfunc_name_hint=f"{name}_dft2")


def _emit_inverse(bb, rows: int, n: int, m1_out: int, dtype: str, spec, name: str):
    """Emit an inverse real FFT of a k1-major half spectrum ``spec`` [rows, N1, 2 H2].
    Returns [rows, m1_out, N2] (the first m1_out N2 samples)."""
    from tvm import relax, te, tirx

    n1, n2 = split(n)
    g2, tw, g1 = (
        relax.const(np.ascontiguousarray(a, dtype), dtype)
        for a in constants(n, inverse=True, m1_out=m1_out)
    )

    def full_spectrum(spec):
        def half(p, k1, k2, c):
            return spec[p, k1, 2 * k2 + c]

        return hermitian(te, tirx, (rows,), n, half, dtype, "full")

    def stage1(full, g2):
        return times_matrix(te, full, g2, "idft1")

    def twiddle(d, tw):
        return inverse_twiddle(te, (rows,), n1, n2, d, tw, "itwiddle")

    def stage2(e, g1):
        i = te.reduce_axis((0, 2 * n1), name="i")
        return te.compute(
            (rows, m1_out, n2),
            lambda p, m1, m2: te.sum(g1[m1, i] * e[p, i, m2], axis=i),
            name="idft2",
        )

    full = bb.emit_te(full_spectrum, spec, primfunc_name_hint=f"{name}_full")
    d = bb.emit_te(stage1, full, g2, primfunc_name_hint=f"{name}_idft1")
    e = bb.emit_te(twiddle, d, tw, primfunc_name_hint=f"{name}_itwiddle")
    return bb.emit_te(stage2, e, g1, primfunc_name_hint=f"{name}_idft2")


def rfft_module(batch: int, n: int, dtype: str = "float32"):
    """Relax ``main(x [batch, N]) -> [batch, N2 // 2 + 1, N1, 2]`` (flat order k, as
    ``rfft_kernel``), one PrimFunc per stage."""
    from tvm import relax, te

    check_dtype(dtype)
    n1, n2 = split(n)
    h2 = n2 // 2 + 1
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([batch, n], dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            spec = _emit_forward(bb, batch, n, dtype, lambda src, p, t: src[p, t], x, "rfft")
            out = bb.emit_te(
                lambda s: te.compute(
                    (batch, h2, n1, 2), lambda p, k2, k1, c: s[p, k1, 2 * k2 + c], name="out"
                ),
                spec,
                primfunc_name_hint="rfft_out",
            )
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


def irfft_module(batch: int, n: int, dtype: str = "float32"):
    """Relax ``main(X [batch, N2 // 2 + 1, N1, 2]) -> [batch, N]`` (``pad_spectrum`` layout)."""
    from tvm import relax, te

    check_dtype(dtype)
    n1, n2 = split(n)
    h2 = n2 // 2 + 1
    bb = relax.BlockBuilder()
    spec = relax.Var("X", relax.TensorType([batch, h2, n1, 2], dtype))
    with bb.function("main", [spec]):
        with bb.dataflow():
            major = bb.emit_te(
                lambda s: te.compute(
                    (batch, n1, 2 * h2), lambda p, k1, j: s[p, j // 2, k1, j % 2], name="k1major"
                ),
                spec,
                primfunc_name_hint="irfft_k1major",
            )
            y = _emit_inverse(bb, batch, n, n1, dtype, major, "irfft")
            y = bb.emit_output(bb.emit(relax.op.reshape(y, [batch, n])))
        bb.emit_func_output(y)
    return bb.get()


def conv_basis_staged_module(b: int, h: int, k: int, length: int, c: int, dtype="float32"):
    """Relax ``main(kern [B, H, k, L], x [B, H, k, L, C]) -> y [B, H, L, C]``: the conv-basis
    sum of causal convolutions (as ``conv_basis_kernel``), one PrimFunc per stage."""
    from tvm import relax, te, tirx

    check_dtype(dtype)
    n = fft_size(length)
    n1, n2 = split(n)
    h2 = n2 // 2 + 1
    m1 = -(-length // n2)
    zero = tirx.const(0, dtype)
    bb = relax.BlockBuilder()
    kern = relax.Var("kern", relax.TensorType([b, h, k, length], dtype))
    x = relax.Var("x", relax.TensorType([b, h, k, length, c], dtype))

    def load_kern(src, p, t):
        return tirx.if_then_else(t < length, src[p, tirx.min(t, length - 1)], zero)

    def load_x(src, p, t):
        return tirx.if_then_else(t < length, src[p // c, tirx.min(t, length - 1), p % c], zero)

    def product(kf, xf):
        i = te.reduce_axis((0, k), name="i")

        def body(p, k1, j):
            bh, ci = p // c, p % c
            z = j % 2
            re = j - z
            sign = tirx.Select(z == 0, tirx.const(-1, dtype), tirx.const(1, dtype))
            row = bh * k + i
            return te.sum(
                kf[row, k1, re] * xf[row * c + ci, k1, j]
                + sign * kf[row, k1, re + 1] * xf[row * c + ci, k1, re + 1 - z],
                axis=i,
            )

        return te.compute((b * h * c, n1, 2 * h2), body, name="spectrum")

    def unpack(yo):
        def body(bi, hi, t, ci):
            return yo[(bi * h + hi) * c + ci, t // n2, t % n2]

        return te.compute((b, h, length, c), body, name="y")

    with bb.function("main", [kern, x]):
        with bb.dataflow():
            k2d = bb.emit(relax.op.reshape(kern, [b * h * k, length]))
            x3d = bb.emit(relax.op.reshape(x, [b * h * k, length, c]))
            kf = _emit_forward(bb, b * h * k, n, dtype, load_kern, k2d, "kf")
            xf = _emit_forward(bb, b * h * k * c, n, dtype, load_x, x3d, "xf")
            spec = bb.emit_te(product, kf, xf, primfunc_name_hint="spectrum")
            yo = _emit_inverse(bb, b * h * c, n, m1, dtype, spec, "iy")
            y = bb.emit_output(bb.emit_te(unpack, yo, primfunc_name_hint="unpack"))
        bb.emit_func_output(y)
    return bb.get()
