"""numpy float64 references of the lowered kernels, and the input layout the inverse FFT reads.

Shared by the kernel tests and the benchmarks (benchmarks/tvm_fft.py, benchmarks/tvm_scan.py);
numpy only, so the GPU side of a benchmark needs no TVM compiler to import them.
"""

from __future__ import annotations

import numpy as np

from attnrewrite.lower.fft_plan import fft_size, split


def pad_spectrum(spec: np.ndarray, n: int) -> np.ndarray:
    """[..., N // 2 + 1, 2] -> the padded layout [..., N2 // 2 + 1, N1, 2] ``irfft`` reads."""
    n1, n2 = split(n)
    h2 = n2 // 2 + 1
    out = np.zeros((*spec.shape[:-2], h2 * n1, 2), spec.dtype)
    out[..., : n // 2 + 1, :] = spec
    return out.reshape(*spec.shape[:-2], h2, n1, 2)


def conv_basis_reference(kern: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y[b,h,t,:] = sum_i sum_{s<=t} kern[b,h,i,s] x[b,h,i,t-s,:]."""
    length = kern.shape[-1]
    n = fft_size(length)
    kf = np.fft.rfft(kern.astype(np.float64), n=n, axis=-1)
    xf = np.fft.rfft(x.astype(np.float64), n=n, axis=-2)
    y = np.fft.irfft(np.einsum("bhin,bhinc->bhnc", kf, xf), n=n, axis=-2)
    return y[:, :, :length]


def block_scan_reference(
    phi_q: np.ndarray, phi_k: np.ndarray, x: np.ndarray, block: int
) -> np.ndarray:
    """far[p, i] = phi_q[p, i] @ sum of phi_k[t]^T x[t] over whole key blocks before the block
    of query i (bottom-right aligned), by an exclusive cumsum over blocks."""
    phi_q, phi_k, x = (np.asarray(a, np.float64) for a in (phi_q, phi_k, x))
    rows, sq, _ = phi_q.shape
    skv = phi_k.shape[1]
    off, nk = skv - sq, -(-skv // block)
    pad = nk * block - skv
    kb = np.pad(phi_k, ((0, 0), (0, pad), (0, 0))).reshape(rows, nk, block, -1)
    xb = np.pad(x, ((0, 0), (0, pad), (0, 0))).reshape(rows, nk, block, -1)
    states = np.einsum("pjtr,pjte->pjre", kb, xb)
    prefix = np.cumsum(states, axis=1) - states
    blk = np.maximum((np.arange(sq) + off) // block, 0)
    out = np.empty((rows, sq, x.shape[-1]))
    for b in np.unique(blk):
        sel = blk == b
        out[:, sel] = phi_q[:, sel] @ prefix[:, b]
    return out
