"""Compile and run one TE-built PrimFunc on this CPU (llvm for the host), for kernel tests."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx

from attnrewrite.lower.targets import make_target

TARGET = make_target("llvm")


def prim_func(tensors) -> tirx.PrimFunc:
    """``te.create_prim_func`` named ``main``."""
    return te.create_prim_func(tensors).with_attr("global_symbol", "main")


def run(func: tirx.PrimFunc, inputs: list[np.ndarray], out_shape, dtype: str) -> np.ndarray:
    """``func(*inputs, out)`` compiled for ``TARGET``; returns ``out``."""
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET).jit()
    args = [tvm.runtime.tensor(a) for a in inputs]
    out = tvm.runtime.tensor(np.zeros(out_shape, dtype))
    lib["main"](*args, out)
    return out.numpy()
