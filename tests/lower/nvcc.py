"""CUDA code of a compiled kernel or model, and nvcc on it: checks, without a GPU, that the code
TVM generates for a CUDA arch compiles for it.

TVM's exported libraries hold CUDA source that is compiled when loaded on the GPU machine.
Used by the CUDA tests and by benchmarks/tvm_fft.py (which ships the fatbins to the GPU).
"""

from __future__ import annotations

from attnrewrite.lower.kernel import Kernel
from attnrewrite.lower.runner import compile_kernel
from attnrewrite.lower.targets import make_target


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

    target = make_target(target)
    arch = str(target.attrs["arch"])
    out = []
    with target:
        for source in cuda_sources(executable):
            binary = nvcc.compile_cuda(source, target_format=fmt, arch=arch, compiler="nvcc")
            out.append(bytes(binary))
    return out


def cuda_binary(kernel: Kernel, target="cuda:sm_90", fmt: str = "fatbin") -> bytes:
    """Compile a kernel for a CUDA arch with nvcc, no GPU needed: the fatbin (or cubin/ptx)."""
    (binary,) = nvcc_compile(compile_kernel(kernel, target, database=None), target, fmt)
    return binary
