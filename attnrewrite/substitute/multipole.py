"""The ONNX body of fast multipole attention (reference: `attnrewrite.methods.multipole`).

The reference evaluates every query against every summary of every level and masks; this body
gathers only each query block's interaction list, so its cost is O(n (block + coarse L) d)
(with ``levels`` > 0, the dense coarsest level adds the reference's coarse Skv / group size):

- queries are grouped into blocks of ``block`` by their key position (bottom-right aligned,
  bidirectional queries left of every key at block 0), padded at both ends;
- near field: the 2 (causal) or 3 (bidirectional) key blocks around the query block, gathered
  token by token; padded, out-of-range, causally hidden or masked keys get -inf;
- far field: per level 2 (causal) or 3 (bidirectional) groups of ``coarse`` summaries, chosen by
  the parity of the query's level block; with ``levels`` > 0 the coarsest level (``levels``)
  takes every group its rule allows, as the reference;
- each query block's keys (values) are its near tokens and its summaries, gathered by one Gather
  from [tokens; every block's summaries]: one MatMul, one softmax, one MatMul. Rows with no
  visible key give zeros (the reference's convention).

Summaries: keys and values (times the key weights, `key_weights`, under a key-wise mask) are
summed per chunk of block / coarse tokens (Pad, Reshape, ReduceSum), then prefix-summed over
the chunks in float64 (CumSum), so a summary [start, end) is the difference of two prefix rows
divided by its summed weight (its token count without a mask), exactly at any length.

Levels: their number depends on the run-time length (N = block * 2^J >= Skv). Rather than a Loop
over levels (a subgraph, per-iteration overhead, loop-carried pooled tensors changing shape) or
a fixed unrolled maximum (every absent level would still cost its gathers and logit columns, and
the maximum would cap the length), the levels are a run-time axis, Range(1, J), of small int64
index tensors; prefix sums give any level's summaries without pooling level by level. Groups
past the keys are empty (count 0, logit -inf), so every length works. A sliding window or a
bias that varies per query cannot follow a pooled summary: those blocks stay exact (its
declaration in attnrewrite.methods says so).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from attnrewrite.substitute.body import (
    Body,
    Params,
    clamp,
    dim,
    dims,
    fitted_inputs,
    from_rank4,
    key_weights,
    repeat_kv,
    to_rank4,
    unsqueeze,
    vec,
)
from attnrewrite.substitute.signature import Signature

F32 = ir.DataType.FLOAT
F64 = ir.DataType.DOUBLE
I64 = ir.DataType.INT64
POWERS = [1 << t for t in range(62)]


def _floor_div(b: Body, x: ir.Value, d: ir.Value) -> ir.Value:
    """floor(x / d) for int64 (Div truncates; Mod with fmod=0 takes the divisor's sign)."""
    return b.op("Div", b.op("Sub", x, b.op("Mod", x, d)), d)


def _chunks(
    b: Body, groups: ir.Value, size: ir.Value, sub: ir.Value, coarse: int
) -> tuple[ir.Value, ir.Value]:
    """[start, end) of the `coarse` summaries of each group: [nq, ...] -> [nq, ... * coarse]."""
    start = b.op(
        "Add",
        unsqueeze(b, b.op("Mul", groups, size), -1),
        b.op("Mul", sub, b.const(np.arange(coarse))),
    )
    end = b.op("Add", start, sub)
    flat = b.const([0, -1])
    return b.op("Reshape", start, flat), b.op("Reshape", end, flat)


def build(b: Body, sig: Signature, inputs: Sequence[ir.Value], params: Params) -> ir.Value:
    m, coarse, levels = int(params["block"]), int(params["coarse"]), int(params["levels"])
    n_sinks = int(params["sinks"])
    operands = inputs[:3] if sig.dtype == F32 else [b.op("Cast", x, to=F32) for x in inputs[:3]]
    fitted = fitted_inputs(sig, inputs)
    expansion = fitted[0] if fitted else None  # [Hq, d] float32
    query, key, value = (to_rank4(b, x, sig.rank) for x in operands)
    if sig.kv_repeat:
        key, value = repeat_kv(b, key, query), repeat_kv(b, value, query)
    zero, one, none, block = b.const(0), b.const(1), b.const(-1), b.const(m)
    q_len = dim(b, query, 2)
    kv_len = dim(b, key, 2)

    # Query blocks by key position: `lead` rows pad the first block, nq blocks in all; kblk is
    # each query block's key block (bidirectional queries left of every key: block 0).
    offset = b.op("Sub", kv_len, q_len)
    lead = b.op("Mod", offset, block)
    filled = b.op("Add", lead, q_len)
    nq = b.op("Div", b.op("Add", filled, b.const(m - 1)), block)
    tail = b.op("Sub", b.op("Mul", nq, block), filled)
    kblk = b.op("Add", b.op("Range", zero, nq, one), b.op("Div", b.op("Sub", offset, lead), block))
    if not sig.causal:
        kblk = b.op("Max", kblk, zero)
    two = b.const([0, 0])
    pads = b.op("Concat", two, vec(b, lead), b.const([0]), two, vec(b, tail), b.const([0]), axis=0)
    blocks_shape = b.op(
        "Concat", dims(b, query, 0, 2), b.const([-1, m]), dims(b, query, 3, 4), axis=0
    )
    qb = b.op("Reshape", b.op("Pad", query, pads), blocks_shape)  # [B, H, nq, m, d]

    # Near field: key blocks kblk-1, kblk (and kblk+1), token indices [nq, S*m].
    steps = [-1, 0] if sig.causal else [-1, 0, 1]
    near = b.op("Mul", b.op("Add", unsqueeze(b, kblk, 1), b.const(steps)), block)
    idx = b.op(
        "Reshape",
        b.op("Add", unsqueeze(b, near, 2), b.const(np.arange(m))),
        b.const([-1, len(steps) * m]),
    )
    valid = b.op("And", b.op("GreaterOrEqual", idx, zero), b.op("Less", idx, kv_len))
    near_idx = clamp(b, idx, zero, b.op("Sub", kv_len, one))
    if sig.causal:
        qpos = b.op("Add", unsqueeze(b, b.op("Mul", kblk, block), 1), b.const(np.arange(m)))
        seen = b.op("LessOrEqual", unsqueeze(b, idx, 1), unsqueeze(b, qpos, 2))
        allowed = b.op("And", unsqueeze(b, valid, 1), seen)  # [nq, m, S*m]
    else:
        allowed = unsqueeze(b, valid, 1)  # [nq, 1, S*m]
    weights = None  # per-key weights [Bw, Hw, Skv] (the mask's, sinks taken out), or none
    if sig.bias != "none":
        w4 = key_weights(b, sig, inputs[3], F32)
        w4 = b.op("Add", w4, b.const(np.zeros((1, 1, 1, 1)), np.float32))  # rank 4
        weights = b.op("Squeeze", w4, b.const([2]))  # [Bw, Hw, Skv]
    sink_idx = sink_bias = None
    if n_sinks:
        positions = b.op("Range", zero, kv_len, one)
        pooled = b.op("Cast", b.op("GreaterOrEqual", positions, b.const(n_sinks)), to=F32)
        sink_idx, sink_bias = _sinks(b, sig, n_sinks, weights, kv_len, qpos if sig.causal else None)
        pooled = b.op("Reshape", pooled, b.const([1, 1, -1]))
        weights = pooled if weights is None else b.op("Mul", weights, pooled)
    if weights is not None:
        gathered = unsqueeze(b, b.op("Gather", weights, near_idx, axis=2), 3)
        near_bias = b.op("Log", b.op("Mul", gathered, b.op("Cast", allowed, to=F32)))
    else:
        minus_inf = b.const(-np.inf, np.float32)
        near_bias = b.op("Where", allowed, b.const(0.0, np.float32), minus_inf)

    # Far field: [start, end) of every summary each query block attends, [nq, K].
    powers = b.const(POWERS)
    needed = b.op("Div", b.op("Add", kv_len, b.const(m - 1)), block)  # ceil(Skv / m)
    depth = b.reduce(
        "ReduceSum", b.op("Cast", b.op("Less", b.const(POWERS[:48]), needed), to=I64), [0], 0
    )  # J = ceil(log2(ceil(Skv / m)))
    end_level = depth if levels == 0 else b.op("Min", depth, b.const(levels))
    level = b.op("Range", one, end_level, one)  # regular levels: 1 .. top (.. top - 1: dense)
    factor = b.op("Gather", powers, b.op("Sub", level, one))  # [L] = 2^(l-1)
    size = b.op("Mul", factor, block)
    il = _floor_div(b, unsqueeze(b, kblk, 1), factor)  # [nq, L]
    odd = b.op("Equal", b.op("Mod", il, b.const(2)), one)

    def shifted(delta: int) -> ir.Value:
        return b.op("Add", il, b.const(delta))

    if sig.causal:
        slots = [shifted(-2), b.op("Where", odd, shifted(-3), none)]
    else:
        slots = [shifted(-2), shifted(2), b.op("Where", odd, shifted(-3), shifted(3))]
    groups = b.op("Concat", *(unsqueeze(b, slot, 2) for slot in slots), axis=2)  # [nq, L, S]
    size3 = b.op("Reshape", size, b.const([1, -1, 1]))
    sub4 = b.op("Reshape", b.op("Div", size, b.const(coarse)), b.const([1, -1, 1, 1]))
    starts, ends = _chunks(b, groups, size3, sub4, coarse)
    if levels > 0:  # the coarsest level takes every group its rule allows
        dense = m << (levels - 1)
        count = b.op("Div", b.op("Add", kv_len, b.const(dense - 1)), b.const(dense))
        gr = b.op("Range", zero, count, one)  # [G]
        il_d = _floor_div(b, unsqueeze(b, kblk, 1), b.const(1 << (levels - 1)))  # [nq, 1]
        gap = b.op("Sub", gr, il_d)
        if sig.causal:
            allow = b.op("LessOrEqual", gap, b.const(-2))
        else:
            allow = b.op("GreaterOrEqual", b.op("Abs", gap), b.const(2))
        chosen = b.op("Where", allow, gr, none)  # [nq, G]
        s_d, e_d = _chunks(b, chosen, b.const(dense), b.const(dense // coarse), coarse)
        starts = b.op("Concat", starts, s_d, axis=1)
        ends = b.op("Concat", ends, e_d, axis=1)
    starts, ends = clamp(b, starts, zero, kv_len), clamp(b, ends, zero, kv_len)

    # Summaries: keys and values summed per chunk of s = block / coarse tokens (zero-padded to
    # whole chunks), then float64 prefix sums over chunks: a summary [start, end) (multiples of
    # s, or Skv) is the difference of two, divided by the summed key weights.
    s = m // coarse
    step = b.const(s)
    n_chunks = b.op("Div", b.op("Add", kv_len, b.const(s - 1)), step)
    chunk_pad = b.op("Sub", b.op("Mul", n_chunks, step), kv_len)
    axis2 = b.const(2)

    def chunk_sums(x: ir.Value) -> ir.Value:  # [N, C, Skv, d] -> [N, C, chunks, d]
        if s == 1:
            return x
        zeros = b.const([0] * 6)
        padded = b.op("Pad", x, b.op("Concat", zeros, vec(b, chunk_pad), b.const([0]), axis=0))
        shape = b.op("Concat", dims(b, x, 0, 2), b.const([-1, s]), dims(b, x, 3, 4), axis=0)
        return b.reduce("ReduceSum", b.op("Reshape", padded, shape), [3], 0)

    def prefix(x: ir.Value, rank: int) -> ir.Value:  # float64, a leading zero row on axis 2
        pads = [0] * (2 * rank)
        pads[2] = 1
        return b.op("Pad", b.op("CumSum", b.op("Cast", x, to=F64), axis2), b.const(pads))

    def ceil_chunk(x: ir.Value) -> ir.Value:
        return b.op("Div", b.op("Add", x, b.const(s - 1)), step)

    first, after = ceil_chunk(starts), ceil_chunk(ends)

    def between(prefixed: ir.Value) -> ir.Value:
        return b.op(
            "Sub",
            b.op("Gather", prefixed, after, axis=2),
            b.op("Gather", prefixed, first, axis=2),
        )

    key_w, value_w = key, value
    pool, shift = weights, None  # the weights keys are pooled with, and their shift
    if expansion is not None:
        pool, shift = _tilted(b, key, weights, expansion)
    if pool is not None:
        col = unsqueeze(b, pool, 3)  # [Bw, Hw, Skv, 1]
        key_w, value_w = b.op("Mul", key, col), b.op("Mul", value, col)
        w_sums = b.op("Squeeze", chunk_sums(col), b.const([3]))
        counts = between(prefix(w_sums, 3))  # [Bw, Hw, nq, K]
    else:
        counts = b.op("Cast", b.op("Sub", ends, starts), to=F64)  # [nq, K]
    positive = b.op("Greater", counts, b.const(0.0, np.float64))
    safe = unsqueeze(b, b.op("Where", positive, counts, b.const(1.0, np.float64)), -1)

    def summaries(weighted: ir.Value) -> ir.Value:  # [B, H, nq, K, d] float32
        return b.op("Cast", b.op("Div", between(prefix(chunk_sums(weighted), 4)), safe), to=F32)

    key_means = summaries(key_w)
    far_bias = b.op("Log", b.op("Cast", counts, to=F32))
    if expansion is not None:  # the group's log-sum-exp expanded around u: + shift - u.kbar
        u = b.op("Unsqueeze", expansion, b.const([0, 2, 4]))  # [1, Hq, 1, d, 1]
        centre = b.op("Squeeze", b.op("MatMul", key_means, u), b.const([4]))  # [B, Hq, nq, K]
        far_bias = b.op("Sub", b.op("Add", far_bias, unsqueeze(b, shift, 3)), centre)
        heads = b.op("Concat", dims(b, key, 0, 2), b.const([1, 1, 1]), axis=0)
        near_bias = b.op("Expand", near_bias, heads)  # [B, Hq, nq, m, S*m], as far_bias
    far_bias = unsqueeze(b, far_bias, -2)  # [.., nq, 1, K]
    if sig.causal:
        far_bias = b.op("Expand", far_bias, b.const([1, m, 1]))
    bias = b.op("Concat", near_bias, far_bias, axis=-1)

    # Each query block's keys: its near tokens and its summaries, gathered in one go from the
    # tokens followed by every block's summaries ([B, H, Skv + nq*K, d]).
    n_far = dims(b, starts, 1, 2)
    far_idx = b.op(
        "Add",
        b.op("Mul", unsqueeze(b, b.op("Range", zero, nq, one), 1), n_far),
        b.op("Add", b.op("Range", zero, b.op("Squeeze", n_far, b.const([0])), one), kv_len),
    )
    every = b.op("Concat", near_idx, far_idx, axis=1)  # [nq, S*m + K]
    if sink_idx is not None:  # then the sinks: [nq, S*m + K + sinks]
        per_block = b.op("Concat", vec(b, nq), b.const([1]), axis=0)
        every = b.op("Concat", every, b.op("Expand", unsqueeze(b, sink_idx, 0), per_block), axis=1)
        lead_dims = b.op("Slice", b.op("Shape", bias), b.const([0]), b.const([-1]))
        sink_shape = b.op("Concat", lead_dims, b.const([n_sinks]), axis=0)
        bias = b.op("Concat", bias, b.op("Expand", sink_bias, sink_shape), axis=-1)

    def interactions(tokens: ir.Value, means: ir.Value) -> ir.Value:
        flat = b.op("Concat", b.const([0, 0, -1]), dims(b, means, 4, 5), axis=0)
        bank = b.op("Concat", tokens, b.op("Reshape", means, flat), axis=2)
        return b.op("Gather", bank, every, axis=2)  # [B, H, nq, S*m + K, d]

    keys = interactions(key, key_means)
    values = interactions(value, summaries(value_w))

    # One softmax over near keys and summaries, one MatMul with their values.
    scaled = b.op("Mul", qb, b.float_attr("scale"))
    scores = b.op("MatMul", scaled, b.op("Transpose", keys, perm=[0, 1, 2, 4, 3]))
    probs = b.op("Softmax", b.op("Add", scores, bias), axis=-1)
    out = b.op("MatMul", probs, values)  # [B, H, nq, m, dv]
    flat = b.op("Concat", dims(b, out, 0, 2), b.const([-1]), dims(b, out, 4, 5), axis=0)
    out = b.op("Reshape", out, flat)
    if sig.bias != "none":  # rows whose keys are all masked: zeros, not NaN
        out = b.op("Slice", out, vec(b, lead), vec(b, filled), b.const([2]))
        out = b.op("Where", b.op("IsNaN", out), b.const(0.0, np.float32), out)
    elif sig.causal:  # queries left of every key see nothing: zeros
        hidden = b.op("Max", b.op("Neg", offset), zero)
        out = b.op("Slice", out, vec(b, b.op("Add", lead, hidden)), vec(b, filled), b.const([2]))
        front = b.op("Concat", two, vec(b, hidden), b.const([0] * 5), axis=0)
        out = b.op("Pad", out, front)
    else:
        out = b.op("Slice", out, vec(b, lead), vec(b, filled), b.const([2]))
    if sig.dtype != F32:
        out = b.op("Cast", out, to=sig.dtype)
    return from_rank4(b, out, sig.rank)


def _tilted(
    b: Body, key: ir.Value, weights: ir.Value | None, expansion: ir.Value
) -> tuple[ir.Value, ir.Value]:
    """Pooling weights w_j exp(u.k_j - c) [B, Hq, Skv] and the shift c [B, Hq, 1], the largest
    u.k_j of a pooled key (0 if none), as the reference's `pooling_weights`."""
    tilt = b.op("Squeeze", b.op("MatMul", key, unsqueeze(b, expansion, -1)), b.const([3]))
    pooled = tilt
    if weights is not None:
        hidden = b.op("LessOrEqual", weights, b.const(0.0, np.float32))
        pooled = b.op("Where", hidden, b.const(-np.inf, np.float32), tilt)
    top = b.reduce("ReduceMax", pooled, [-1])
    shift = b.op("Where", b.op("IsInf", top), b.const(0.0, np.float32), top)
    tilted = b.op("Exp", b.op("Sub", pooled, shift))  # hidden keys: exp(-inf) = 0, never inf
    return (tilted if weights is None else b.op("Mul", weights, tilted)), shift


def _sinks(
    b: Body,
    sig: Signature,
    n_sinks: int,
    weights: ir.Value | None,
    kv_len: ir.Value,
    qpos: ir.Value | None,
) -> tuple[ir.Value, ir.Value]:
    """Token indices [sinks] of the sink keys and their logit bias: [.., nq, m, sinks] (causal:
    -inf where the query may not see the sink yet), or [.., 1, 1, sinks]; the mask's weight
    enters as its log, a sink past the keys gets -inf."""
    idx = b.op("Range", b.const(0), b.const(n_sinks), b.const(1))
    valid = b.op("Cast", b.op("Less", idx, kv_len), to=F32)  # [sinks]
    clamped = b.op("Min", idx, b.op("Sub", kv_len, b.const(1)))
    if qpos is not None:
        seen = b.op("LessOrEqual", b.op("Reshape", idx, b.const([1, 1, -1])), unsqueeze(b, qpos, 2))
        valid = b.op("Mul", valid, b.op("Cast", seen, to=F32))  # [nq, m, sinks]
    else:
        valid = b.op("Reshape", valid, b.const([1, 1, -1]))
    if weights is not None:
        own = unsqueeze(b, b.op("Gather", weights, clamped, axis=2), 2)  # [Bw, Hw, 1, sinks]
        valid = b.op("Mul", valid, unsqueeze(b, own, 2))
    return clamped, b.op("Log", valid)
