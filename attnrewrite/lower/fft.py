"""Batched real FFT, inverse FFT and FFT convolution kernels in TE, written to be tuned.

Each is one PrimFunc (a ``Kernel``) chaining the four-step stages of
``attnrewrite.lower.fft_stages`` (the factorisation: ``attnrewrite.lower.fft_plan``): what
``attnrewrite.lower.tune`` tunes with meta_schedule on CPUs and ``attnrewrite.lower.runner``
runs.

Layouts. ``x`` [P, N] is read as [P, N1, N2] (the same memory). Inside, spectra are k1-major,
S[P, k1, 2 k2 + c]. ``rfft_kernel`` ends with a transpose to [P, N2 // 2 + 1, N1, 2], whose
flat order is k: its first N // 2 + 1 rows (reshape to [P, -1, 2]) are ``numpy.fft.rfft``.
The inverse reads that padded layout (entries past N / 2 ignored) and writes [P, N1, N2] =
[P, N]; the conv kernel stays k1-major between the transforms.

On GPUs these single-PrimFunc kernels only get dlight's fallback (one thread per output):
dlight schedules one main block per PrimFunc. The same stages emitted one PrimFunc each
(``emit_te``; the staged Relax modules of tests/lower/fft_staged.py, run by
benchmarks/tvm_fft.py, and the DFT converter's ``attnrewrite.lower.dft``) get its matmul rule
(shared-memory tiles). Measured on one H100 (float32, batch 64, dlight defaults, no tuning):
staged rfft N=4096 0.025 ms (torch.fft 0.016), irfft 0.034 ms (torch 0.041), conv-basis B1 H8
k4 L1024 C64 0.35 ms (torch 0.23); these kernels took 0.22 / 0.084 / 3.9 ms.

``conv_basis_kernel`` is the conv-basis kernel: for k bases, y = irfft(sum_i rfft(kern_i)
rfft(x_i)) truncated to L, the sum of k causal convolutions, with kern [B, H, k, L],
x [B, H, k, L, C], y [B, H, L, C] (x is zero-padded to N >= 2 L inside the first stage).
"""

from __future__ import annotations

from attnrewrite.lower.fft_plan import constants, fft_size, split
from attnrewrite.lower.fft_stages import forward_stages, inverse_stages
from attnrewrite.lower.kernel import Kernel, check_dtype, prim_func


def _fft_flops(rows: int, n: int) -> float:
    """Real multiply-adds x 2 of one forward real FFT (both stages and the twiddle)."""
    n1, n2 = split(n)
    h2 = n2 // 2 + 1
    return 2.0 * rows * (2 * n1 * n1 * n2 + n1 * 2 * h2 * 2 * n2 + 4 * n)


def rfft_kernel(batch: int, n: int, dtype: str = "float32") -> Kernel:
    """x [batch, N] -> numpy.fft.rfft(x) as [batch, N // 2 + 1, 2] (re, im).

    The kernel writes [batch, N2 // 2 + 1, N1, 2] (a last transpose stage from the k1-major
    spectrum), whose flat order is k; ``view`` slices its first N // 2 + 1 rows."""
    from tvm import te

    check_dtype(dtype)
    n1, n2 = split(n)
    h2 = n2 // 2 + 1
    x = te.placeholder((batch, n1, n2), dtype, name="x")
    consts, spec = forward_stages(te, (batch,), n, lambda p, r, s: x[p, r, s], dtype, "rfft")
    out = te.compute(
        (batch, h2, n1, 2), lambda p, k2, k1, c: spec[p, k1, 2 * k2 + c], name="rfft_out"
    )
    name = f"rfft_{batch}x{n}_{dtype}"
    return Kernel(
        name,
        prim_func([x, *consts, out], name),
        [("x", (batch, n1, n2))],
        ("X", (batch, h2, n1, 2)),
        constants(n),
        dtype,
        view=lambda a: a.reshape(batch, h2 * n1, 2)[:, : n // 2 + 1],
        flops=_fft_flops(batch, n),
    )


def irfft_kernel(batch: int, n: int, dtype: str = "float32") -> Kernel:
    """X [batch, N // 2 + 1, 2] -> numpy.fft.irfft(X, N) as [batch, N].

    The kernel reads the padded layout [batch, N2 // 2 + 1, N1, 2]: the first N // 2 + 1 of
    its flat rows are X, the rest are ignored."""
    from tvm import te, tirx

    check_dtype(dtype)
    n1, n2 = split(n)
    h2 = n2 // 2 + 1
    spec = te.placeholder((batch, h2, n1, 2), dtype, name="X")
    consts, out = inverse_stages(
        te, tirx, (batch,), n, lambda p, k1, k2, c: spec[p, k2, k1, c], n1, dtype, "irfft"
    )
    name = f"irfft_{batch}x{n}_{dtype}"
    return Kernel(
        name,
        prim_func([spec, *consts, out], name),
        [("X", (batch, h2, n1, 2))],
        ("y", (batch, n1, n2)),
        constants(n, inverse=True),
        dtype,
        view=lambda a: a.reshape(batch, n),
        flops=2.0 * batch * (n1 * 2 * n2 * 2 * n2 + 4 * n + n1 * 2 * n1 * n2),
    )


def conv_basis_kernel(
    b: int, h: int, k: int, length: int, c: int, dtype: str = "float32", n: int | None = None
) -> Kernel:
    """Sum of k causal convolutions by FFT: y[b,h,t,:] = sum_i sum_s kern[b,h,i,s] x[b,h,i,t-s,:].

    kern [B, H, k, L], x [B, H, k, L, C] -> y [B, H, L, C]; FFT length N >= 2 L.
    """
    from tvm import te, tirx

    check_dtype(dtype)
    n = n or fft_size(length)
    if n < 2 * length - 1:
        raise ValueError(f"FFT length {n} too short for a linear convolution of {length}")
    n1, n2 = split(n)
    kern = te.placeholder((b, h, k, length), dtype, name="kern")
    x = te.placeholder((b, h, k, length, c), dtype, name="x")
    zero = tirx.const(0, dtype)

    def load_kern(bi, hi, i, r, s):
        t = r * n2 + s
        return tirx.if_then_else(t < length, kern[bi, hi, i, tirx.min(t, length - 1)], zero)

    def load_x(bi, hi, i, ci, r, s):
        t = r * n2 + s
        return tirx.if_then_else(t < length, x[bi, hi, i, tirx.min(t, length - 1), ci], zero)

    kc, kf = forward_stages(te, (b, h, k), n, load_kern, dtype, "kf")
    xc, xf = forward_stages(te, (b, h, k, c), n, load_x, dtype, "xf")
    h2 = n2 // 2 + 1
    i = te.reduce_axis((0, k), name="i")

    def product(bi, hi, ci, k1, j):
        # complex product summed over the bases: re = Kr Xr - Ki Xi, im = Kr Xi + Ki Xr
        z = j % 2
        re = j - z
        sign = tirx.Select(z == 0, tirx.const(-1, dtype), tirx.const(1, dtype))
        return te.sum(
            kf[bi, hi, i, k1, re] * xf[bi, hi, i, ci, k1, j]
            + sign * kf[bi, hi, i, k1, re + 1] * xf[bi, hi, i, ci, k1, re + 1 - z],
            axis=i,
        )

    spec = te.compute((b, h, c, n1, 2 * h2), product, name="spectrum")
    m1 = -(-length // n2)
    ic, yo = inverse_stages(
        te,
        tirx,
        (b, h, c),
        n,
        lambda bi, hi, ci, k1, k2, z: spec[bi, hi, ci, k1, 2 * k2 + z],
        m1,
        dtype,
        "iy",
    )
    y = te.compute(
        (b, h, length, c),
        lambda bi, hi, t, ci: yo[bi, hi, ci, t // n2, t % n2],
        name="y",
    )
    name = f"conv_basis_{b}x{h}x{k}x{length}x{c}_{dtype}"
    rows_i = b * h * c
    flops = _fft_flops(b * h * k * (1 + c), n) + 8.0 * rows_i * k * h2 * n1
    flops += 2.0 * rows_i * (n1 * 2 * n2 * 2 * n2 + 4 * n + m1 * 2 * n1 * n2)
    return Kernel(
        name,
        prim_func([kern, x, *kc, *xc, *ic, y], name),
        [("kern", (b, h, k, length)), ("x", (b, h, k, length, c))],
        ("y", (b, h, length, c)),
        constants(n) * 2 + constants(n, inverse=True, m1_out=m1),
        dtype,
        flops=flops,
    )
