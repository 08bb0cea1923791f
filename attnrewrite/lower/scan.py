"""PolySketch's block scan (prefix sums of per-block states) in TE, written to be tuned.

PolySketch's causal part across blocks (``attnrewrite.methods.polysketch._scan``, the ``far``
term): with query features phi_q [P, Sq, R], key features phi_k [P, Skv, R], values
x [P, Skv, E] (the caller's [v, 1], the ones column carrying the normaliser) and block b,

    Z_j      = sum_{t in key block j} phi_k[t]^T x[t]         (block states, R x E)
    prefix_l = sum_{j < l} Z_j                                 (exclusive prefix over blocks)
    far[i]   = phi_q[i] prefix_{blk(i)},  blk(i) = (i + Skv - Sq) // b   (bottom-right aligned)

The within-block (diagonal) part is not here: the method computes it with the exact kernel.

A serial scan over blocks is the cheapest arithmetic but leaves meta_schedule nothing to search
(and GPUs nothing to parallelise). Here each step is one dense reduction: the states a batched
matmul over a block's tokens, the exclusive prefix a masked reduction over earlier blocks
(nk^2 R E multiply-adds instead of nk R E, no more than the states' Skv R E while Skv <= b^2),
the query side a batched matmul against the state of the query's block. The
three are stages of one PrimFunc (``block_scan_kernel``), a ``fft.Kernel`` that ``fft.Runner``,
``fft.compile_kernel`` and ``tune.py`` handle as they do the FFTs.

Only whole key blocks enter a prefix used by some query (the last, partial block is only ever
a query's own block), so the states need no padding; queries before the first key (Sq > Skv)
read block 0's prefix, which is zero.

``prefix_sum`` is the cumulative sum that CPU builds legalize ONNX ``CumSum`` (Relax
``cumsum``) to, which is how the PolySketch body's exclusive prefix over block states runs in a
compiled model (``LEGALIZE``, applied by ``relax_import.legalize`` on llvm).
"""

from __future__ import annotations

import numpy as np

from attnrewrite.lower.fft import Kernel, _check_dtype, _prim_func, emit_kernel


def _geometry(sq: int, skv: int, block: int) -> tuple[int, int, int]:
    """(offset Skv - Sq, key blocks nk, full blocks that enter some prefix)."""
    if block < 1 or sq < 1 or skv < 1:
        raise ValueError(f"block scan needs positive sizes, got Sq={sq} Skv={skv} b={block}")
    nk = -(-skv // block)
    return skv - sq, nk, nk - 1


def block_scan_kernel(
    rows: int,
    sq: int,
    skv: int,
    features: int,
    width: int,
    block: int,
    dtype: str = "float32",
) -> Kernel:
    """phi_q [rows, Sq, R], phi_k [rows, Skv, R], x [rows, Skv, E] -> far [rows, Sq, E]."""
    from tvm import te, tirx

    _check_dtype(dtype)
    off, nk, full = _geometry(sq, skv, block)
    phi_q = te.placeholder((rows, sq, features), dtype, name="phi_q")
    phi_k = te.placeholder((rows, skv, features), dtype, name="phi_k")
    x = te.placeholder((rows, skv, width), dtype, name="x")
    # One state even when no block is whole (Skv <= b): it is computed (clamped reads) and
    # never summed, since every query then sits in block 0.
    nstate = max(full, 1)
    last = skv - 1
    t = te.reduce_axis((0, block), name="t")

    def state(p, j, r, e):
        tok = j * block + t if full else tirx.min(j * block + t, last)
        return te.sum(phi_k[p, tok, r] * x[p, tok, e], axis=t)

    states = te.compute((rows, nstate, features, width), state, name="states")
    j = te.reduce_axis((0, nstate), name="j")
    zero = tirx.const(0, dtype)
    prefix = te.compute(
        (rows, nk, features, width),
        lambda p, blk, r, e: te.sum(tirx.if_then_else(j < blk, states[p, j, r, e], zero), axis=j),
        name="prefix",
    )
    r = te.reduce_axis((0, features), name="r")

    def query(p, i, e):
        blk = tirx.max(tirx.floordiv(i + off, block), 0)
        return te.sum(phi_q[p, i, r] * prefix[p, blk, r, e], axis=r)

    far = te.compute((rows, sq, width), query, name="far")
    name = f"block_scan_{rows}x{sq}x{skv}x{features}x{width}_b{block}_{dtype}"
    flops = 2.0 * rows * features * width * (nstate * block + nk * nstate + sq)
    return Kernel(
        name,
        _prim_func([phi_q, phi_k, x, far], name),
        [
            ("phi_q", (rows, sq, features)),
            ("phi_k", (rows, skv, features)),
            ("x", (rows, skv, width)),
        ],
        ("far", (rows, sq, width)),
        [],
        dtype,
        flops=flops,
    )


def block_scan_reference(
    phi_q: np.ndarray, phi_k: np.ndarray, x: np.ndarray, block: int
) -> np.ndarray:
    """numpy float64: far[p, i] = phi_q[p, i] @ sum of phi_k[t]^T x[t] over whole key blocks
    before the block of query i (bottom-right aligned), by an exclusive cumsum over blocks."""
    phi_q, phi_k, x = (np.asarray(a, np.float64) for a in (phi_q, phi_k, x))
    rows, sq, _ = phi_q.shape
    skv = phi_k.shape[1]
    off, nk, _ = _geometry(sq, skv, block)
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


def prefix_sum(data, axis: int, exclusive: bool = False, dtype: str | None = None):
    """Cumulative sum of a TE tensor along ``axis`` (``exclusive``: of the earlier entries
    only), for CPUs: parallel over the entries before the axis and over chunks of the
    contiguous entries after it, serial along the axis, each chunk one vector.

    topi's ``cumsum`` (what Relax legalizes ``cumsum`` to) runs one scalar serial scan per
    element of the trailing dims, striding through memory: PolySketch's exclusive prefix over
    its block states ([1, 8, 16, 65, 1024] float32 at n = 4096) took 38 ms of its 190."""
    import math

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
