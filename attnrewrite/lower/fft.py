"""Batched real FFTs and FFT convolution in TE, written to be tuned.

A loop-style FFT (radix-2 stages) leaves meta_schedule nothing to search. Here a length
N = N1 x N2 transform is the four-step (Monarch / FlashFFTConv) factorisation, whose stages
are small dense matmuls plus one elementwise twiddle:

    n = N2 n1 + n2,  k = k1 + N1 k2
    A[k1, n2] = sum_n1 F_N1[k1, n1] x[n1, n2]            (stage 1: N1 x N1 DFT matrix)
    B[k1, n2] = A[k1, n2] W_N^(n2 k1)                     (twiddle)
    X[k2, k1] = sum_n2 B[k1, n2] F_N2[n2, k2]             (stage 2: N2 x N2 DFT matrix)

Complex numbers are a trailing axis of 2 (re, im), and a complex matmul is a real one with a
reduction axis twice as long (2x2 real blocks), so every stage is one dense reduction: the
shape that schedule rules (tiling, vectorisation; tensor cores on GPUs) know. The cost is
2 N (N1 + N2) real multiply-adds per real transform instead of ~2.5 N log2 N flops: more
arithmetic, but matmul-efficient.

Layouts. ``x`` [P, N] is read as [P, N1, N2] (the same memory). Inside, spectra are
"k1-major", S[P, k1, 2 k2 + c], and the real FFT computes only k2 <= N2 / 2 (N2 even).
``rfft_kernel`` / ``rfft_module`` end with a transpose to [P, N2 // 2 + 1, N1, 2], whose flat
order is k: its first N // 2 + 1 rows (reshape to [P, -1, 2]) are ``numpy.fft.rfft``. The
inverse reads that padded layout (``pad_spectrum``; entries past N / 2 ignored) and writes
[P, N1, N2] = [P, N]; the conv kernels stay k1-major between the transforms. DFT matrices and
twiddles (``constants``) are computed in float64 on the host and passed as kernel arguments
(``Kernel.constants``) or embedded as Relax constants (modules).

Two packagings of the same stages: ``*_kernel`` builds one PrimFunc per transform (what
``tune.py`` tunes with meta_schedule on CPUs; ``Runner`` runs it), and ``*_module`` builds a
Relax module with one PrimFunc per stage (``emit_te``), which is what dlight's GPU matmul rule
schedules (shared-memory tiles); the single-PrimFunc kernels only get dlight's fallback on GPUs.
Measured on one H100 (float32, batch 64, dlight defaults, no tuning): rfft N=4096 0.025 ms
(torch.fft 0.016), irfft 0.034 ms (torch 0.041), conv-basis B1 H8 k4 L1024 C64 0.35 ms
(torch 0.23); the single-PrimFunc kernels took 0.22 / 0.084 / 3.9 ms.

``conv_basis`` is the conv-basis kernel: for k bases, y = irfft(sum_i rfft(kern_i) rfft(x_i))
truncated to L, the sum of k causal convolutions, with kern [B, H, k, L], x [B, H, k, L, C],
y [B, H, L, C] (x is zero-padded to N >= 2 L inside the first stage).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

DTYPES = ("float32", "float64")


def split(n: int) -> tuple[int, int]:
    """N = N1 x N2 with N2 even and N1 <= N2 as close to sqrt(N) as possible."""
    if n < 2 or n % 2:
        raise ValueError(f"FFT length must be even and >= 2, got {n}")
    best = None
    for n1 in range(1, math.isqrt(n) + 1):
        if n % n1 == 0 and (n // n1) % 2 == 0:
            best = n1
    assert best is not None
    return best, n // best


def fft_size(length: int) -> int:
    """The FFT length for a linear convolution of ``length`` samples: a power of 2 >= 2 L."""
    return 1 << max(1, (2 * length - 1).bit_length())


def _twiddle_block(w: np.ndarray) -> np.ndarray:
    """Complex w [...] -> real 2x2 blocks [..., 2 (in re/im), 2 (out re/im)] of z -> z w."""
    out = np.empty((*w.shape, 2, 2))
    out[..., 0, 0] = w.real
    out[..., 0, 1] = w.imag
    out[..., 1, 0] = -w.imag
    out[..., 1, 1] = w.real
    return out


def constants(n: int, inverse: bool = False, m1_out: int | None = None) -> list[np.ndarray]:
    """The DFT matrices and twiddle of one factorisation (float64), in kernel argument order.

    Forward: f1 [2 N1, N1] (row 2 k1 + c), tw [N1, N2, 2, 2], f2 [2 N2, 2 H2] (the complex
    N2 x H2 DFT as 2x2 real blocks, H2 = N2 // 2 + 1). Inverse: g2 [2 N2, 2 N2], tw,
    g1 [m1_out, 2 N1] (real part only, 1 / N folded in).
    """
    n1, n2 = split(n)
    h2 = n2 // 2 + 1
    sign = 1.0 if inverse else -1.0
    r1 = np.arange(n1)
    r2 = np.arange(n2)
    tw = _twiddle_block(np.exp(sign * 2j * np.pi * np.outer(r1, r2) / n))  # [k1, n2, ci, co]
    if not inverse:
        w1 = np.exp(sign * 2j * np.pi * np.outer(r1, r1) / n1)  # [k1, r]
        f1 = np.stack([w1.real, w1.imag], axis=1).reshape(2 * n1, n1)
        f2 = _twiddle_block(np.exp(sign * 2j * np.pi * np.outer(r2, r2[:h2]) / n2))
        f2 = f2.transpose(0, 2, 1, 3).reshape(2 * n2, 2 * h2)  # [(s, ci), (k2, co)]
        return [f1, tw, f2]
    g2 = _twiddle_block(np.exp(sign * 2j * np.pi * np.outer(r2, r2) / n2))
    g2 = g2.transpose(0, 2, 1, 3).reshape(2 * n2, 2 * n2)  # [(k2, ci), (m2, co)]
    m1 = n1 if m1_out is None else m1_out
    w = np.exp(sign * 2j * np.pi * np.outer(np.arange(m1), r1) / n1) / n  # [m1, k1]
    g1 = np.stack([w.real, -w.imag], axis=-1).reshape(m1, 2 * n1)  # Re(z w) over (k1, c)
    return [g2, tw, g1]


# --- TE stages over an arbitrary row prefix -----------------------------------------------
#
# Every reduction is a plain (batched) matmul against a shared constant matrix, the shape
# dlight's and meta_schedule's matmul rules know. Spectra are "k1-major": S[*rows, k1, 2 k2 + c].

Loader = Callable[..., object]  # (*rows, r, s) -> value of x[rows, r * N2 + s]


def _forward_twiddle(te, rows: Sequence[int], n1: int, n2: int, a, tw, name: str):
    """Stage 1's ``a`` [*rows, 2 N1, N2] (real and imaginary rows interleaved) times the
    twiddles, to [*rows, N1, 2 N2] (complex pairs last), the layout stage 2 reads."""
    nr = len(rows)

    def twiddle(*idx):
        p, (k1, q) = idx[:nr], idx[nr:]
        s, c = q // 2, q % 2
        return a[(*p, 2 * k1, s)] * tw[k1, s, 0, c] + a[(*p, 2 * k1 + 1, s)] * tw[k1, s, 1, c]

    return te.compute((*rows, n1, 2 * n2), twiddle, name=name)


def _hermitian(te, tirx, rows: Sequence[int], n: int, spec, dtype: str, name: str):
    """The full spectrum [*rows, N1, 2 N2] from a half one, ``spec(*rows, k1, k2, c)`` for
    k2 <= N2 / 2: X[k] = conj(X[N - k]) for k > N / 2, k = k1 + N1 k2 (indices clamped)."""
    n1, n2 = split(n)
    nr = len(rows)
    half = n // 2

    def hermitian(*idx):
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

    return te.compute((*rows, n1, 2 * n2), hermitian, name=name)


def _inverse_twiddle(te, rows: Sequence[int], n1: int, n2: int, d, tw, name: str):
    """The inverse's stage 1 output ``d`` [*rows, N1, 2 N2] times the twiddles, to
    [*rows, 2 N1, N2] (real and imaginary rows interleaved), the layout its stage 2 reads."""
    nr = len(rows)

    def twiddle(*idx):
        p, (i, m2) = idx[:nr], idx[nr:]
        k1, c = i // 2, i % 2
        return d[(*p, k1, 2 * m2)] * tw[k1, m2, 0, c] + d[(*p, k1, 2 * m2 + 1)] * tw[k1, m2, 1, c]

    return te.compute((*rows, 2 * n1, n2), twiddle, name=name)


def _times_matrix(te, x, m, name: str):
    """``x`` [..., A, Q] times a DFT matrix ``m`` [Q, J] -> [..., A, J]: a stage along the
    last axis as a batched matmul (the form schedule rules tile)."""
    *lead, width = (int(d) for d in x.shape)
    q = te.reduce_axis((0, width), name="q")
    return te.compute(
        (*lead, int(m.shape[1])),
        lambda *ix: te.sum(x[(*ix[:-1], q)] * m[q, ix[-1]], axis=q),
        name=name,
    )


def _forward_stages(te, rows: Sequence[int], n: int, load: Loader, dtype: str, name: str):
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
    b = _forward_twiddle(te, rows, n1, n2, a, tw, f"{name}_twiddle")
    return [f1, tw, f2], _times_matrix(te, b, f2, f"{name}_dft2")


def _inverse_stages(te, tirx, rows: Sequence[int], n: int, spec, m1_out: int, dtype: str, name):
    """Inverse real FFT of a half spectrum, ``spec(*rows, k1, k2, c)`` for k2 <= N2 / 2.

    Output [*rows, m1_out, N2]: the first m1_out * N2 samples of the length-N signal.
    """
    n1, n2 = split(n)
    nr = len(rows)
    g2 = te.placeholder((2 * n2, 2 * n2), dtype, name=f"{name}_g2")
    tw = te.placeholder((n1, n2, 2, 2), dtype, name=f"{name}_tw")
    g1 = te.placeholder((m1_out, 2 * n1), dtype, name=f"{name}_g1")
    full = _hermitian(te, tirx, rows, n, spec, dtype, f"{name}_full")
    d = _times_matrix(te, full, g2, f"{name}_idft1")
    e = _inverse_twiddle(te, rows, n1, n2, d, tw, f"{name}_itwiddle")
    i = te.reduce_axis((0, 2 * n1), name="i")

    def stage2(*idx):
        p, (m1, m2) = idx[:nr], idx[nr:]
        return te.sum(g1[m1, i] * e[(*p, i, m2)], axis=i)

    out = te.compute((*rows, m1_out, n2), stage2, name=f"{name}_idft2")
    return [g2, tw, g1], out


# --- kernels -------------------------------------------------------------------------------


@dataclass
class Kernel:
    """A PrimFunc plus the host constants it takes after its data arguments.

    ``func`` arguments: ``inputs`` (data), then ``constants`` (in order), then the output.
    ``inputs`` / ``output`` are (name, shape) pairs in the kernel's own layout (arrays of the
    same size are reshaped to it); ``view`` turns the raw output into the user's layout.
    """

    name: str
    func: object
    inputs: list[tuple[str, tuple[int, ...]]]
    output: tuple[str, tuple[int, ...]]
    constants: list[np.ndarray]
    dtype: str
    view: Callable[[np.ndarray], np.ndarray] = field(default=lambda a: a)
    flops: float = 0.0


def _prim_func(tensors, name: str):
    from tvm import te

    func = te.create_prim_func(tensors)
    return func.with_attr("global_symbol", name)


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype}")


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

    _check_dtype(dtype)
    n1, n2 = split(n)
    h2 = n2 // 2 + 1
    x = te.placeholder((batch, n1, n2), dtype, name="x")
    consts, spec = _forward_stages(te, (batch,), n, lambda p, r, s: x[p, r, s], dtype, "rfft")
    out = te.compute(
        (batch, h2, n1, 2), lambda p, k2, k1, c: spec[p, k1, 2 * k2 + c], name="rfft_out"
    )
    name = f"rfft_{batch}x{n}_{dtype}"
    return Kernel(
        name,
        _prim_func([x, *consts, out], name),
        [("x", (batch, n1, n2))],
        ("X", (batch, h2, n1, 2)),
        constants(n),
        dtype,
        view=lambda a: a.reshape(batch, h2 * n1, 2)[:, : n // 2 + 1],
        flops=_fft_flops(batch, n),
    )


def irfft_kernel(batch: int, n: int, dtype: str = "float32") -> Kernel:
    """X [batch, N // 2 + 1, 2] -> numpy.fft.irfft(X, N) as [batch, N].

    The kernel reads the padded layout [batch, N2 // 2 + 1, N1, 2] (``pad_spectrum``)."""
    from tvm import te, tirx

    _check_dtype(dtype)
    n1, n2 = split(n)
    h2 = n2 // 2 + 1
    spec = te.placeholder((batch, h2, n1, 2), dtype, name="X")
    consts, out = _inverse_stages(
        te, tirx, (batch,), n, lambda p, k1, k2, c: spec[p, k2, k1, c], n1, dtype, "irfft"
    )
    name = f"irfft_{batch}x{n}_{dtype}"
    return Kernel(
        name,
        _prim_func([spec, *consts, out], name),
        [("X", (batch, h2, n1, 2))],
        ("y", (batch, n1, n2)),
        constants(n, inverse=True),
        dtype,
        view=lambda a: a.reshape(batch, n),
        flops=2.0 * batch * (n1 * 2 * n2 * 2 * n2 + 4 * n + n1 * 2 * n1 * n2),
    )


def pad_spectrum(spec: np.ndarray, n: int) -> np.ndarray:
    """[..., N // 2 + 1, 2] -> the padded layout [..., N2 // 2 + 1, N1, 2] ``irfft`` reads."""
    n1, n2 = split(n)
    h2 = n2 // 2 + 1
    out = np.zeros((*spec.shape[:-2], h2 * n1, 2), spec.dtype)
    out[..., : n // 2 + 1, :] = spec
    return out.reshape(*spec.shape[:-2], h2, n1, 2)


def conv_basis_kernel(
    b: int, h: int, k: int, length: int, c: int, dtype: str = "float32", n: int | None = None
) -> Kernel:
    """Sum of k causal convolutions by FFT: y[b,h,t,:] = sum_i sum_s kern[b,h,i,s] x[b,h,i,t-s,:].

    kern [B, H, k, L], x [B, H, k, L, C] -> y [B, H, L, C]; FFT length N >= 2 L.
    """
    from tvm import te, tirx

    _check_dtype(dtype)
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

    kc, kf = _forward_stages(te, (b, h, k), n, load_kern, dtype, "kf")
    xc, xf = _forward_stages(te, (b, h, k, c), n, load_x, dtype, "xf")
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
    ic, yo = _inverse_stages(
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
        _prim_func([kern, x, *kc, *xc, *ic, y], name),
        [("kern", (b, h, k, length)), ("x", (b, h, k, length, c))],
        ("y", (b, h, length, c)),
        constants(n) * 2 + constants(n, inverse=True, m1_out=m1),
        dtype,
        flops=flops,
    )


def conv_basis_reference(kern: np.ndarray, x: np.ndarray) -> np.ndarray:
    """numpy float64: y[b,h,t,:] = sum_i sum_{s<=t} kern[b,h,i,s] x[b,h,i,t-s,:]."""
    length = kern.shape[-1]
    n = fft_size(length)
    kf = np.fft.rfft(kern.astype(np.float64), n=n, axis=-1)
    xf = np.fft.rfft(x.astype(np.float64), n=n, axis=-2)
    y = np.fft.irfft(np.einsum("bhin,bhinc->bhnc", kf, xf), n=n, axis=-2)
    return y[:, :, :length]


# --- compile and run -----------------------------------------------------------------------


def compile_kernel(kernel: Kernel, target="llvm", database="auto"):
    """Compile a kernel: the tuned schedule from ``database`` if it has one for this workload
    (``"auto"``: the records of ``target`` in attnrewrite/targets), else the default schedules
    of ``attnrewrite.lower.schedules`` (dlight on GPUs, our rules on CPUs). Returns a
    ``tvm.runtime.Executable`` (``.jit()`` for a runtime Module, ``.export_library(path)`` for
    a shared library)."""
    import tvm

    from attnrewrite.lower.schedules import schedule
    from attnrewrite.lower.targets import database_for, make_target

    target = make_target(target)
    mod = tvm.IRModule({kernel.name: kernel.func})
    db = database_for(target) if database == "auto" else database
    if db is not None:
        from tvm.s_tir import meta_schedule as ms

        sch = ms.tir_integration.compile_tir(db, mod, target)
        if sch is not None:
            mod = sch.mod
            return tvm.compile(mod, target=target)
    return tvm.compile(schedule(mod, target), target=target)


def cuda_sources(module) -> list[str]:
    """The CUDA C sources in a compiled module tree (an Executable's ``.mod`` or a Module)."""
    from tvm.runtime import Executable

    if isinstance(module, Executable):
        module = module.mod
    out = [module.inspect_source()] if module.kind == "cuda" else []
    for sub in module.imports:
        out.extend(cuda_sources(sub))
    return out


def cuda_source(executable) -> str:
    """The CUDA C source of a kernel compiled for a cuda target."""
    return "\n".join(cuda_sources(executable))


def nvcc_compile(executable, target, fmt: str = "fatbin") -> list[bytes]:
    """Compile every CUDA source of ``executable`` with nvcc for ``target``'s arch (no GPU
    needed): the binaries, in ``cuda_sources`` order."""
    from tvm.support import nvcc

    from attnrewrite.lower.targets import make_target

    target = make_target(target)
    arch = str(target.attrs["arch"])
    out = []
    with target:
        for source in cuda_sources(executable):
            binary = nvcc.compile_cuda(source, target_format=fmt, arch=arch, compiler="nvcc")
            out.append(bytes(binary))
    return out


def use_nvcc_if_no_nvrtc() -> None:
    """TVM compiles CUDA source when a module is loaded, with NVRTC (``cuda-bindings``) by
    default; fall back to nvcc when cuda-bindings is missing."""
    import importlib.util
    import os
    import shutil

    if importlib.util.find_spec("cuda") is None and shutil.which("nvcc"):
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")


def cuda_binary(kernel: Kernel, target="cuda:sm_90", fmt: str = "fatbin") -> bytes:
    """Compile a kernel for a CUDA arch with nvcc, no GPU needed: the fatbin (or cubin/ptx).

    TVM's exported libraries hold CUDA source compiled when loaded on the GPU machine; this
    checks ahead of time that the generated code compiles for the arch."""
    (binary,) = nvcc_compile(compile_kernel(kernel, target, database=None), target, fmt)
    return binary


class Runner:
    """A compiled kernel with its constants on the device: ``runner(*arrays) -> numpy``."""

    def __init__(self, kernel: Kernel, target="llvm", device=None, database="auto"):
        import tvm

        from attnrewrite.lower.targets import make_target

        self.kernel = kernel
        self.target = make_target(target)
        gpu = str(self.target.kind.name) == "cuda"
        if gpu:
            use_nvcc_if_no_nvrtc()
        self.device = device or (tvm.cuda() if gpu else tvm.cpu())
        self.executable = compile_kernel(kernel, self.target, database)
        self.module = self.executable.jit()
        self.func = self.module[kernel.name]
        np_dtype = np.dtype(kernel.dtype)
        self.consts = [
            tvm.runtime.tensor(np.ascontiguousarray(c, np_dtype), device=self.device)
            for c in kernel.constants
        ]
        self.out = tvm.runtime.empty(kernel.output[1], kernel.dtype, self.device)

    def to_device(self, *arrays: np.ndarray) -> list:
        import tvm

        out = []
        for (name, shape), a in zip(self.kernel.inputs, arrays, strict=True):
            a = np.ascontiguousarray(a, dtype=self.kernel.dtype)
            if a.size != math.prod(shape):
                raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
            out.append(tvm.runtime.tensor(a.reshape(shape), device=self.device))
        return out

    def run_device(self, args: list) -> None:
        self.func(*args, *self.consts, self.out)

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        self.run_device(self.to_device(*arrays))
        return self.kernel.view(self.out.numpy())

    def time(self, *arrays: np.ndarray, number: int = 10, repeat: int = 3) -> float:
        """Median seconds per call (device-resident inputs, ``time_evaluator``)."""
        args = self.to_device(*arrays)
        evaluator = self.module.time_evaluator(
            self.kernel.name, self.device, number=number, repeat=repeat
        )
        return float(np.median(evaluator(*args, *self.consts, self.out).results))


# --- Relax ---------------------------------------------------------------------------------


def emit_kernel(bb, kernel: Kernel, *args):
    """Emit ``kernel`` into the Relax function being built by ``bb`` (a BlockBuilder, inside a
    dataflow block): adds the PrimFunc, passes the constants as Relax constants and returns
    the output variable. Inputs must already have the kernel's own layout (``Kernel.inputs``).
    This is how a Relax module calls these kernels (e.g. for an ``attnrewrite`` node converted
    after import)."""
    from tvm import relax

    gvar = bb.add_func(kernel.func, kernel.name)
    consts = [
        relax.const(np.ascontiguousarray(c, kernel.dtype), kernel.dtype) for c in kernel.constants
    ]
    out_ty = relax.TensorType(list(kernel.output[1]), kernel.dtype)
    return bb.emit(relax.call_tir(gvar, relax.Tuple([*args, *consts]), out_ty))


def conv_basis_module(b: int, h: int, k: int, length: int, c: int, dtype: str = "float32"):
    """A Relax IRModule ``main(kern, x) -> y`` around ``conv_basis_kernel``."""
    from tvm import relax

    kernel = conv_basis_kernel(b, h, k, length, c, dtype)
    bb = relax.BlockBuilder()
    kern = relax.Var("kern", relax.TensorType([b, h, k, length], dtype))
    x = relax.Var("x", relax.TensorType([b, h, k, length, c], dtype))
    with bb.function("main", [kern, x]):
        with bb.dataflow():
            y = bb.emit_output(emit_kernel(bb, kernel, kern, x))
        bb.emit_func_output(y)
    return bb.get()


# --- staged Relax modules (one PrimFunc per stage) -----------------------------------------
#
# dlight schedules one main block per PrimFunc (what Relax produces after fusion): the
# multi-stage kernels above get its fallback (one thread per output) on GPUs, whereas one
# PrimFunc per stage gets its matmul rule (shared-memory tiles). These modules chain the same
# stages with ``emit_te``; rows are flat (P = the product of the leading dims).


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
        return _forward_twiddle(te, (rows,), n1, n2, a, tw, "twiddle")

    def stage2(b, f2):
        return _times_matrix(te, b, f2, "dft2")

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

    def hermitian(spec):
        def half(p, k1, k2, c):
            return spec[p, k1, 2 * k2 + c]

        return _hermitian(te, tirx, (rows,), n, half, dtype, "full")

    def stage1(full, g2):
        return _times_matrix(te, full, g2, "idft1")

    def twiddle(d, tw):
        return _inverse_twiddle(te, (rows,), n1, n2, d, tw, "itwiddle")

    def stage2(e, g1):
        i = te.reduce_axis((0, 2 * n1), name="i")
        return te.compute(
            (rows, m1_out, n2),
            lambda p, m1, m2: te.sum(g1[m1, i] * e[p, i, m2], axis=i),
            name="idft2",
        )

    full = bb.emit_te(hermitian, spec, primfunc_name_hint=f"{name}_full")
    d = bb.emit_te(stage1, full, g2, primfunc_name_hint=f"{name}_idft1")
    e = bb.emit_te(twiddle, d, tw, primfunc_name_hint=f"{name}_itwiddle")
    return bb.emit_te(stage2, e, g1, primfunc_name_hint=f"{name}_idft2")


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
    blocks = _twiddle_block(np.exp(sign * 2j * np.pi * np.outer(r1, r1) / n1))  # [n1, k1, ci, co]
    f1 = blocks[:, :, :channels, :].transpose(1, 3, 0, 2).reshape(2 * n1, n1 * channels)
    tw = _twiddle_block(np.exp(sign * 2j * np.pi * np.outer(r1, r2) / n))
    f2 = _twiddle_block(np.exp(sign * 2j * np.pi * np.outer(r2, r2) / n2))
    f2 = f2.transpose(0, 2, 1, 3).reshape(2 * n2, 2 * n2) / (n if inverse else 1)
    return [f1, tw, f2]


def emit_dft(bb, x, n: int, inverse: bool, dtype: str, name: str = "dft"):
    """Emit a complex DFT (``inverse``: with 1 / N) of length ``n`` along axis 1 of ``x``
    [rows, L, C] (C = 2: re/im, C = 1: real), zero-padded or truncated to ``n`` as ONNX's DFT.
    Returns [rows, n, 2]. Four steps as the real transforms above: DFT_N1 (a matmul), twiddle,
    DFT_N2 (a matmul), then the transpose to natural order k = k1 + N1 k2."""
    from tvm import relax, te, tirx

    _check_dtype(dtype)
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
        return _forward_twiddle(te, (rows,), n1, n2, a, tw, "ctwiddle")

    def stage2(b, f2):
        return _times_matrix(te, b, f2, "cdft2")

    def natural(y):
        return te.compute(
            (rows, n, 2), lambda p, k, c: y[p, k % n1, 2 * (k // n1) + c], name="corder"
        )

    a = bb.emit_te(stage1, x, f1, primfunc_name_hint=f"{name}_dft1")
    b = bb.emit_te(twiddle, a, tw, primfunc_name_hint=f"{name}_twiddle")
    y = bb.emit_te(stage2, b, f2, primfunc_name_hint=f"{name}_dft2")
    return bb.emit_te(natural, y, primfunc_name_hint=f"{name}_order")


def rfft_module(batch: int, n: int, dtype: str = "float32"):
    """Relax ``main(x [batch, N]) -> [batch, N2 // 2 + 1, N1, 2]`` (flat order k, as
    ``rfft_kernel``), one PrimFunc per stage."""
    from tvm import relax, te

    _check_dtype(dtype)
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

    _check_dtype(dtype)
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

    _check_dtype(dtype)
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


def compile_module(mod, target="llvm"):
    """Compile a Relax module: dlight schedules on GPUs (per PrimFunc), the tuning records of
    ``target`` when it has any, else TVM's defaults. Returns an Executable."""
    from attnrewrite.lower.relax_import import compile_relax

    return compile_relax(mod, target)
