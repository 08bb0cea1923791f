"""Compile a ``Kernel`` for a target and run it on numpy arrays, timed or not.

A kernel gets the tuned schedule recorded for its target when there is one
(``attnrewrite.lower.targets``), else the default schedules of ``attnrewrite.lower.schedules``.
"""

from __future__ import annotations

import math

import numpy as np

from attnrewrite.lower.kernel import Kernel
from attnrewrite.lower.targets import database_for, make_target


def compile_kernel(kernel: Kernel, target="llvm", database="auto"):
    """Compile a kernel: the tuned schedule from ``database`` if it has one for this workload
    (``"auto"``: the records of ``target`` in attnrewrite/targets), else the default schedules
    of ``attnrewrite.lower.schedules`` (dlight on GPUs, our rules on CPUs). Returns a
    ``tvm.runtime.Executable`` (``.jit()`` for a runtime Module, ``.export_library(path)`` for
    a shared library)."""
    import tvm

    # schedules imports TVM's compiler: kept out of importing this module, which the tune
    # command's --help imports
    from attnrewrite.lower.schedules import schedule

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


def use_nvcc_if_no_nvrtc() -> None:
    """TVM compiles CUDA source when a module is loaded, with NVRTC (``cuda-bindings``) by
    default; fall back to nvcc when cuda-bindings is missing."""
    import importlib.util
    import os
    import shutil

    if importlib.util.find_spec("cuda") is None and shutil.which("nvcc"):
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")


class Runner:
    """A compiled kernel with its constants on the device: ``runner(*arrays) -> numpy``."""

    def __init__(self, kernel: Kernel, target="llvm", device=None, database="auto"):
        import tvm

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
