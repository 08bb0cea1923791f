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
three are stages of one PrimFunc (``block_scan_kernel``), a ``kernel.Kernel`` that
``runner.Runner``, ``runner.compile_kernel`` and ``tune.py`` handle as they do the FFTs.

Only whole key blocks enter a prefix used by some query (the last, partial block is only ever
a query's own block), so the states need no padding; queries before the first key (Sq > Skv)
read block 0's prefix, which is zero.
"""

from __future__ import annotations

from attnrewrite.lower.kernel import Kernel, check_dtype, prim_func


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

    check_dtype(dtype)
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
        prim_func([phi_q, phi_k, x, far], name),
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
