"""A vectorised cumulative sum for CPU builds, in place of topi's ``cumsum``.

``prefix_sum`` is the cumulative sum that CPU builds legalize ONNX ``CumSum`` (Relax
``cumsum``) to, which is how the PolySketch body's exclusive prefix over block states runs in a
compiled model (``LEGALIZE``, applied by ``relax_import.legalize`` on llvm).
"""

from __future__ import annotations

import math


def prefix_sum(data, axis: int, exclusive: bool = False, dtype: str | None = None):
    """Cumulative sum of a TE tensor along ``axis`` (``exclusive``: of the earlier entries
    only), for CPUs: parallel over the entries before the axis and over chunks of the
    contiguous entries after it, serial along the axis, each chunk one vector.

    topi's ``cumsum`` (what Relax legalizes ``cumsum`` to) runs one scalar serial scan per
    element of the trailing dims, striding through memory: PolySketch's exclusive prefix over
    its block states ([1, 8, 16, 65, 1024] float32 at n = 4096) took 38 ms of its 190."""
    from tvm import te, tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    shape = [int(d) for d in data.shape]
    axis %= len(shape)
    dtype = dtype or data.dtype
    before, length, after = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])
    chunk = math.gcd(after, 16)
    groups = after // chunk

    def load(buffer, index):
        value = buffer[index]
        return value if dtype == data.dtype else tirx.Cast(dtype, value)

    def ir(src, dst):
        with IRBuilder() as ib:
            src, dst = T.buffer_proxy(src), T.buffer_proxy(dst)
            with T.parallel(0, before * groups) as fused:
                base = (fused // groups) * length * after + (fused % groups) * chunk
                with T.vectorized(0, chunk) as v:
                    dst[base + v] = tirx.const(0, dtype) if exclusive else load(src, base + v)
                with T.serial(0, length - 1) as step:
                    here = base + (step + 1) * after
                    with T.vectorized(0, chunk) as v:
                        read = here - after + v if exclusive else here + v
                        dst[here + v] = dst[here - after + v] + load(src, read)
            return ib.get()

    out = tirx.decl_buffer(shape, dtype, "prefix")
    return te.extern(
        [shape],
        [data],
        lambda ins, outs: ir(ins[0], outs[0]),
        dtype=dtype,
        out_buffers=[out],
        name="prefix_sum",
        tag="prefix_sum",
    )


def _legalize_cumsum(bb, call):
    """``relax.cumsum`` along one axis as ``prefix_sum`` (over the flattened tensor, with no
    axis, as topi does)."""
    from tvm import topi

    (x,) = call.args
    attrs = call.attrs
    dtype = str(attrs.dtype) if attrs.dtype else None
    if attrs.axis is None:
        return bb.call_te(topi.cumsum, x, None, dtype, bool(attrs.exclusive))
    return bb.call_te(prefix_sum, x, int(attrs.axis), bool(attrs.exclusive), dtype)


LEGALIZE = {"relax.cumsum": _legalize_cumsum}
