"""The four-step factorisation of a real FFT length and its DFT matrices (host side, numpy).

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

The DFT matrices and twiddles (``constants``) are computed here in float64 and passed to the
TE stages (``attnrewrite.lower.fft_stages``) as kernel arguments (``Kernel.constants``) or
embedded as Relax constants.
"""

from __future__ import annotations

import math

import numpy as np


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


def twiddle_block(w: np.ndarray) -> np.ndarray:
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
    tw = twiddle_block(np.exp(sign * 2j * np.pi * np.outer(r1, r2) / n))  # [k1, n2, ci, co]
    if not inverse:
        w1 = np.exp(sign * 2j * np.pi * np.outer(r1, r1) / n1)  # [k1, r]
        f1 = np.stack([w1.real, w1.imag], axis=1).reshape(2 * n1, n1)
        f2 = twiddle_block(np.exp(sign * 2j * np.pi * np.outer(r2, r2[:h2]) / n2))
        f2 = f2.transpose(0, 2, 1, 3).reshape(2 * n2, 2 * h2)  # [(s, ci), (k2, co)]
        return [f1, tw, f2]
    g2 = twiddle_block(np.exp(sign * 2j * np.pi * np.outer(r2, r2) / n2))
    g2 = g2.transpose(0, 2, 1, 3).reshape(2 * n2, 2 * n2)  # [(k2, ci), (m2, co)]
    m1 = n1 if m1_out is None else m1_out
    w = np.exp(sign * 2j * np.pi * np.outer(np.arange(m1), r1) / n1) / n  # [m1, k1]
    g1 = np.stack([w.real, -w.imag], axis=-1).reshape(m1, 2 * n1)  # Re(z w) over (k1, c)
    return [g2, tw, g1]
