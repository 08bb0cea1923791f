"""Standalone kernels (``attnrewrite.lower.kernel.Kernel``) called from a Relax module.

How a Relax function calls the FFT and block-scan kernels (``call_tir`` with the constants as
Relax constants), as a converter for an ``attnrewrite`` node would after import; the tests check
that the kernels give the same numbers through Relax's VM as through ``runner.Runner``.
"""

from __future__ import annotations

import numpy as np

from attnrewrite.lower.fft import conv_basis_kernel
from attnrewrite.lower.kernel import Kernel
from attnrewrite.lower.scan import block_scan_kernel


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


def emit_block_scan(bb, phi_q, phi_k, x, block: int):
    """Emit the block scan into the Relax function ``bb`` is building (inside a dataflow
    block): ``phi_q`` [P, Sq, R], ``phi_k`` [P, Skv, R], ``x`` [P, Skv, E] Relax expressions of
    static shape and one dtype. Returns ``far`` [P, Sq, E]; a converter for PolySketch nodes
    adds the within-block part and divides by the last column."""
    shapes = [[int(d) for d in a.ty.shape] for a in (phi_q, phi_k, x)]
    (rows, sq, features), (_, skv, _), (_, _, width) = shapes
    dtype = str(x.ty.dtype)
    kernel = block_scan_kernel(rows, sq, skv, features, width, block, dtype)
    return emit_kernel(bb, kernel, phi_q, phi_k, x)
