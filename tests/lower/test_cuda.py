"""CUDA code generation of the FFT kernels for sm_80 / sm_90 (nvcc, no GPU needed), and GPU
execution where a GPU is present."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from attnrewrite.lower import fft  # noqa: E402
from attnrewrite.lower.relax_import import compile_relax  # noqa: E402
from attnrewrite.lower.runner import Runner, compile_kernel, use_nvcc_if_no_nvrtc  # noqa: E402
from attnrewrite.lower.targets import make_target, target_name  # noqa: E402
from tests.lower.fft_staged import conv_basis_staged_module  # noqa: E402
from tests.lower.nvcc import cuda_binary, cuda_source, nvcc_compile  # noqa: E402
from tests.lower.references import conv_basis_reference  # noqa: E402


def has_gpu() -> bool:
    try:
        return bool(tvm.cuda().exist)
    except Exception:
        return False


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_codegen_compiles(arch, tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH")
    target = make_target(f"cuda:{arch}")
    assert target_name(target) == f"cuda-{arch}"
    for kernel in (fft.rfft_kernel(8, 256), fft.irfft_kernel(8, 256)):
        binary = cuda_binary(kernel, target)
        assert len(binary) > 1000
    executable = compile_kernel(fft.rfft_kernel(8, 256), target, database=None)
    executable.export_library(str(tmp_path / "rfft.so"))
    assert (tmp_path / "rfft.so").stat().st_size > 0


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_staged_cuda_modules_compile(arch):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH")
    target = make_target(f"cuda:{arch}")
    executable = compile_relax(conv_basis_staged_module(1, 2, 3, 100, 8), target)
    source = cuda_source(executable)
    assert "__global__" in source and "__shared__" in source  # dlight tiled the matmul stages
    (binary,) = nvcc_compile(executable, target)
    assert len(binary) > 1000


@pytest.mark.skipif(not has_gpu(), reason="no CUDA GPU")
def test_gpu_rfft_conv_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 1024))
    spec = Runner(fft.rfft_kernel(16, 1024), "cuda", database=None)(x)
    ref = np.fft.rfft(x)
    err = np.abs(spec[..., 0] + 1j * spec[..., 1] - ref).max() / np.abs(ref).max()
    assert err < 1e-5
    kern = rng.standard_normal((1, 2, 3, 100)).astype(np.float32)
    xs = rng.standard_normal((1, 2, 3, 100, 8)).astype(np.float32)
    y = Runner(fft.conv_basis_kernel(1, 2, 3, 100, 8), "cuda", database=None)(kern, xs)
    want = conv_basis_reference(kern, xs)
    assert np.abs(y - want).max() / np.abs(want).max() < 1e-5
    use_nvcc_if_no_nvrtc()
    executable = compile_relax(conv_basis_staged_module(1, 2, 3, 100, 8), "cuda")
    vm = tvm.runtime.vm.VirtualMachine(executable, tvm.cuda())
    y = vm["main"](tvm.runtime.tensor(kern, tvm.cuda()), tvm.runtime.tensor(xs, tvm.cuda()))
    assert np.abs(y.numpy() - want).max() / np.abs(want).max() < 1e-5
