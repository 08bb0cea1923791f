"""The complex DFT that the ONNX ``DFT`` converter (``attnrewrite.lower.convert``) emits.

The same four steps as the real transforms (``attnrewrite.lower.fft_plan``) for any length
N = N1 x N2 and a real or complex input: DFT_N1 (a matmul), twiddle, DFT_N2 (a matmul), then
the transpose to natural order. Each step is one PrimFunc (``emit_te``), the form dlight's GPU
matmul rule and meta_schedule schedule.
"""

from __future__ import annotations

import math

import numpy as np

from attnrewrite.lower.fft_plan import twiddle_block
from attnrewrite.lower.fft_stages import forward_twiddle, times_matrix
from attnrewrite.lower.kernel import check_dtype


def complex_split(n: int) -> tuple[int, int]:
    """N = N1 x N2 with N1 <= N2 as close to sqrt(N) as possible (any N >= 1; a prime N gives
    N1 = 1, one dense N x N stage)."""
    if n < 1:
        raise ValueError(f"DFT length must be >= 1, got {n}")
    n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n1, n // n1


def complex_constants(n: int, inverse: bool, channels: int) -> list[np.ndarray]:
    """float64 matrices of the complex four-step DFT: f1 [2 N1, N1 C] (rows (k1, out re/im),
    columns (n1, in channel); C = 1: a real input), tw [N1, N2, 2, 2], f2 [2 N2, 2 N2]
    (rows (n2, in re/im), columns (k2, out re/im)); the inverse's 1 / N is folded into f2."""
    n1, n2 = complex_split(n)
    sign = 1.0 if inverse else -1.0
    r1, r2 = np.arange(n1), np.arange(n2)
    blocks = twiddle_block(np.exp(sign * 2j * np.pi * np.outer(r1, r1) / n1))  # [n1, k1, ci, co]
    f1 = blocks[:, :, :channels, :].transpose(1, 3, 0, 2).reshape(2 * n1, n1 * channels)
    tw = twiddle_block(np.exp(sign * 2j * np.pi * np.outer(r1, r2) / n))
    f2 = twiddle_block(np.exp(sign * 2j * np.pi * np.outer(r2, r2) / n2))
    f2 = f2.transpose(0, 2, 1, 3).reshape(2 * n2, 2 * n2) / (n if inverse else 1)
    return [f1, tw, f2]


def emit_dft(bb, x, n: int, inverse: bool, dtype: str, name: str = "dft"):
    """Emit a complex DFT (``inverse``: with 1 / N) of length ``n`` along axis 1 of ``x``
    [rows, L, C] (C = 2: re/im, C = 1: real), zero-padded or truncated to ``n`` as ONNX's DFT.
    Returns [rows, n, 2], in natural order k = k1 + N1 k2."""
    from tvm import relax, te, tirx

    check_dtype(dtype)
    rows, length, channels = (int(v) for v in x.ty.shape.values)
    n1, n2 = complex_split(n)
    f1, tw, f2 = (
        relax.const(np.ascontiguousarray(a, dtype), dtype)
        for a in complex_constants(n, inverse, channels)
    )
    zero = tirx.const(0, dtype)

    def stage1(src, f1):
        r = te.reduce_axis((0, n1 * channels), name="r")

        def body(p, i, s):
            t = (r // channels) * n2 + s
            value = src[p, tirx.min(t, length - 1), r % channels]
            return te.sum(f1[i, r] * tirx.if_then_else(t < length, value, zero), axis=r)

        return te.compute((rows, 2 * n1, n2), body, name="cdft1")

    def twiddle(a, tw):
        return forward_twiddle(te, (rows,), n1, n2, a, tw, "ctwiddle")

    def stage2(b, f2):
        return times_matrix(te, b, f2, "cdft2")

    def natural(y):
        return te.compute(
            (rows, n, 2), lambda p, k, c: y[p, k % n1, 2 * (k // n1) + c], name="corder"
        )

    a = bb.emit_te(stage1, x, f1, primfunc_name_hint=f"{name}_dft1")
    b = bb.emit_te(twiddle, a, tw, primfunc_name_hint=f"{name}_twiddle")
    y = bb.emit_te(stage2, b, f2, primfunc_name_hint=f"{name}_dft2")
    return bb.emit_te(natural, y, primfunc_name_hint=f"{name}_order")
