"""The TE four-step FFT kernels against numpy (llvm, default schedules, small sizes)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from attnrewrite.lower import fft
from attnrewrite.lower.fft_plan import split
from attnrewrite.lower.relax_import import compile_relax
from attnrewrite.lower.runner import Runner
from tests.lower.fft_staged import conv_basis_staged_module, irfft_module, rfft_module
from tests.lower.references import conv_basis_reference, pad_spectrum
from tests.lower.relax_kernels import conv_basis_module


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("n", [2, 12, 64, 96, 256])
def test_split(n):
    n1, n2 = split(n)
    assert n1 * n2 == n and n2 % 2 == 0 and n1 <= n2


def test_split_rejects_odd():
    with pytest.raises(ValueError):
        split(9)


@pytest.mark.parametrize(("dtype", "tol"), [("float64", 1e-13), ("float32", 1e-5)])
@pytest.mark.parametrize("n", [8, 12, 96, 256])
def test_rfft_irfft_match_numpy(n, dtype, tol):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, n))
    spec = Runner(fft.rfft_kernel(3, n, dtype), "llvm", database=None)(x)
    ref = np.fft.rfft(x)
    assert spec.shape == (3, n // 2 + 1, 2)
    assert rel(spec[..., 0] + 1j * spec[..., 1], ref) < tol
    packed = pad_spectrum(np.stack([ref.real, ref.imag], axis=-1), n)
    y = Runner(fft.irfft_kernel(3, n, dtype), "llvm", database=None)(packed)
    assert y.shape == (3, n)
    assert rel(y, np.fft.irfft(ref, n)) < tol


@pytest.mark.parametrize(("dtype", "tol"), [("float64", 1e-12), ("float32", 1e-5)])
def test_conv_basis_matches_direct_sum(dtype, tol):
    rng = np.random.default_rng(1)
    b, h, k, length, c = 1, 2, 3, 10, 4
    kern = rng.standard_normal((b, h, k, length))
    x = rng.standard_normal((b, h, k, length, c))
    y = Runner(fft.conv_basis_kernel(b, h, k, length, c, dtype), "llvm", database=None)(kern, x)
    direct = np.zeros((b, h, length, c))
    for t in range(length):
        for s in range(t + 1):
            direct[:, :, t] += np.einsum("bhi,bhic->bhc", kern[..., s], x[:, :, :, t - s])
    assert rel(conv_basis_reference(kern, x), direct) < 1e-12
    assert rel(y, direct) < tol


def test_conv_basis_through_relax_vm():
    import tvm
    from tvm import relax

    rng = np.random.default_rng(2)
    kern = rng.standard_normal((1, 2, 3, 10))
    x = rng.standard_normal((1, 2, 3, 10, 4))
    executable = tvm.compile(conv_basis_module(1, 2, 3, 10, 4, "float64"), target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    y = vm["main"](tvm.runtime.tensor(kern), tvm.runtime.tensor(x)).numpy()
    assert rel(y, conv_basis_reference(kern, x)) < 1e-12


def _vm(mod):
    import tvm
    from tvm import relax

    return relax.VirtualMachine(compile_relax(mod, "llvm"), tvm.cpu())["main"]


@pytest.mark.parametrize("n", [12, 256])
def test_staged_modules_match_numpy(n):
    import tvm

    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, n))
    spec = _vm(rfft_module(3, n, "float64"))(tvm.runtime.tensor(x)).numpy()
    spec = spec.reshape(3, -1, 2)[:, : n // 2 + 1]
    ref = np.fft.rfft(x)
    assert rel(spec[..., 0] + 1j * spec[..., 1], ref) < 1e-13
    packed = pad_spectrum(np.stack([ref.real, ref.imag], axis=-1), n)
    y = _vm(irfft_module(3, n, "float64"))(tvm.runtime.tensor(packed)).numpy()
    assert rel(y, x) < 1e-13


def test_staged_conv_basis_matches_reference():
    import tvm

    rng = np.random.default_rng(3)
    kern = rng.standard_normal((1, 2, 3, 10)).astype(np.float32)
    x = rng.standard_normal((1, 2, 3, 10, 4)).astype(np.float32)
    run = _vm(conv_basis_staged_module(1, 2, 3, 10, 4, "float32"))
    y = run(tvm.runtime.tensor(kern), tvm.runtime.tensor(x)).numpy()
    assert rel(y, conv_basis_reference(kern, x)) < 1e-5
