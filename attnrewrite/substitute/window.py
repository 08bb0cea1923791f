"""The ONNX body of sliding-window attention with sinks (reference: `attnrewrite.methods.window`).

The reference masks the dense score matrix; this body is blocked, so its cost is
O(n (2 width + sinks) d) rather than O(Sq Skv d):

- queries are grouped into blocks of ``width`` by their key position p = i + Skv - Sq (bottom-right
  aligned), padded at both ends to whole blocks at run time (one Gather of clamped rows), so
  every length works;
- each query block gathers the key blocks its band can reach (causal: previous and own;
  bidirectional: previous, own and next) and the ``sinks`` first keys, by one Gather of token
  indices [blocks, K] (K = 2 or 3 width + sinks) for the keys and one for the values;
- a boolean [blocks, width, K] keeps exactly the band (causal p - width < j <= p, bidirectional
  |j - p| < width), intersected with the key range, causality and a model window; a sink column
  is kept only where its key is outside the band, so a sink inside the band counts once;
- the model's mask is gathered at the same indices: a key-wise mask (padding) as per-key logits
  from its last query row, any other (a full per-query bias, or a key-wise mask combined with a
  model window, whose last row hides the early keys) element by element from its flattened
  [rows * cols] view (broadcast axes indexed at 0, so no O(Sq Skv) copy is made); entries at or
  below half the dtype's lowest value count as -inf (the reference's convention);
- a logit soft-cap (sig.softcap) maps the scaled scores to softcap * tanh(s / softcap) before
  the mask, as exact attention does;
- one MatMul, one softmax over the concatenation, one MatMul; rows with no visible key (queries
  left of every key, fully masked rows) give zeros, the reference's convention.

Everything is computed in float32 (fp16/bf16 operands are cast, the output cast back).
``width`` and ``sinks`` are structural: they fix the block size and the gathered key count.
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
    from_rank4,
    last_row,
    mask_as_rank4,
    mask_logits,
    repeat_kv,
    soft_cap,
    to_rank4,
    unsqueeze,
    vec,
)
from attnrewrite.substitute.signature import Signature

F32 = ir.DataType.FLOAT


def build(b: Body, sig: Signature, inputs: Sequence[ir.Value], params: Params) -> ir.Value:
    w, n_sinks = int(params["width"]), int(params["sinks"])
    operands = inputs[:3] if sig.dtype == F32 else [b.op("Cast", x, to=F32) for x in inputs[:3]]
    query, key, value = (to_rank4(b, x, sig.rank) for x in operands)
    if sig.kv_repeat:
        key, value = repeat_kv(b, key, query), repeat_kv(b, value, query)
    zero, one, width = b.const(0), b.const(1), b.const(w)
    q_len, kv_len = dim(b, query, 2), dim(b, key, 2)

    # Query blocks by key position: `lead` rows pad the first block, nq blocks in all; kblk is
    # each block's key block (negative for queries left of every key: they see only sinks).
    offset = b.op("Sub", kv_len, q_len)
    lead = b.op("Mod", offset, width)
    filled = b.op("Add", lead, q_len)
    nq = b.op("Div", b.op("Add", filled, b.const(w - 1)), width)
    kblk = b.op("Add", b.op("Range", zero, nq, one), b.op("Div", b.op("Sub", offset, lead), width))
    qpos = b.op("Add", unsqueeze(b, b.op("Mul", kblk, width), 1), b.const(np.arange(w)))  # [nq, w]
    # the blocks' query rows (padding rows repeat an edge query; their outputs are dropped)
    rows = b.op("Sub", qpos, offset)
    q_rows = clamp(b, rows, zero, b.op("Sub", q_len, one))
    qb = b.op("Gather", query, q_rows, axis=2)  # [B, H, nq, w, d]

    # Key columns of each block: its reachable key blocks token by token, then the sinks.
    steps = [-1, 0] if sig.causal else [-1, 0, 1]
    starts = b.op("Mul", b.op("Add", unsqueeze(b, kblk, 1), b.const(steps)), width)  # [nq, S]
    cols = b.op(
        "Reshape",
        b.op("Add", unsqueeze(b, starts, 2), b.const(np.arange(w))),
        b.const([-1, len(steps) * w]),
    )  # [nq, S*w]
    if n_sinks:
        sink_cols = b.op(
            "Expand",
            b.const(np.arange(n_sinks)[None, :]),
            b.op("Concat", vec(b, nq), b.const([n_sinks]), axis=0),
        )
        cols = b.op("Concat", cols, sink_cols, axis=1)  # [nq, K]
    n_cols = len(steps) * w + n_sinks
    idx = clamp(b, cols, zero, b.op("Sub", kv_len, one))

    # Which (query, column) pairs are visible: [nq, w, K].
    rel = b.op("Sub", unsqueeze(b, qpos, 2), unsqueeze(b, cols, 1))  # p - j
    in_band = b.op("Less", rel if sig.causal else b.op("Abs", rel), width)
    if n_sinks:  # a sink column only where its key is outside the band: counted once
        is_sink = b.const(np.arange(n_cols) >= n_cols - n_sinks, np.bool_)
        in_band = b.op("Xor", in_band, is_sink)
    valid = b.op("And", b.op("GreaterOrEqual", cols, zero), b.op("Less", cols, kv_len))
    allowed = b.op("And", in_band, unsqueeze(b, valid, 1))
    if sig.causal:
        allowed = b.op("And", allowed, b.op("GreaterOrEqual", rel, zero))
    if sig.window:
        allowed = b.op("And", allowed, b.op("Less", rel, b.int_attr("window")))

    # The model's mask at the same indices (broadcast axes indexed at 0).
    logits = None
    if sig.bias != "none":
        mask = inputs[3]
        # A key-wise mask's last query row holds every key's bias, unless a model window hides
        # the early keys from that row: then the mask is read element by element too.
        per_key = sig.keywise and not sig.window
        if per_key:
            mask = last_row(b, mask)
        mask = mask_as_rank4(b, mask)
        m_rows, m_cols = dim(b, mask, 2), dim(b, mask, 3)
        flat = b.op("Reshape", mask, b.const([0, 0, -1]))  # [Bm, Hm, rows * cols]
        key_idx = b.op("Min", idx, b.op("Sub", m_cols, one))
        if per_key:
            gathered = unsqueeze(b, b.op("Gather", flat, key_idx, axis=2), 3)  # [Bm, Hm, nq, 1, K]
        else:
            rows = clamp(b, rows, zero, b.op("Sub", m_rows, one))
            flat_idx = b.op(
                "Add", unsqueeze(b, b.op("Mul", rows, m_cols), 2), unsqueeze(b, key_idx, 1)
            )
            gathered = b.op("Gather", flat, flat_idx, axis=2)  # [Bm, Hm, nq, w, K]
        logits, keep = mask_logits(b, sig, gathered)
        if keep is not None:
            allowed = b.op("And", allowed, keep)

    keys = b.op("Gather", key, idx, axis=2)  # [B, H, nq, K, d]
    values = b.op("Gather", value, idx, axis=2)
    scaled = b.op("Mul", qb, b.float_attr("scale"))
    scores = b.op("MatMul", scaled, b.op("Transpose", keys, perm=[0, 1, 2, 4, 3]))
    if sig.softcap:
        scores = soft_cap(b, scores, F32)
    minus_inf = b.const(-np.inf, np.float32)
    visible = None
    if logits is None and sig.bias == "none":
        # No mask: a small [nq, w, K] additive bias (a broadcast Add is cheaper than a broadcast
        # Where on the scores), finite so that empty rows stay finite: they are zeroed by a
        # [nq, w, 1] row indicator instead of a NaN test on the output.
        lowest = b.const(np.finfo(np.float32).min, np.float32)
        scores = b.op("Add", scores, b.op("Where", allowed, b.const(0.0, np.float32), lowest))
        visible = b.reduce("ReduceMax", b.op("Cast", allowed, to=F32), [-1])  # [nq, w, 1]
    elif logits is None:  # a boolean mask: already folded into `allowed`
        scores = b.op("Where", allowed, scores, minus_inf)
    else:
        scores = b.op("Add", scores, b.op("Where", allowed, logits, minus_inf))
    probs = b.op("Softmax", scores, axis=-1)
    out = b.op("MatMul", probs, values)  # [B, H, nq, w, dv]
    if visible is not None:
        out = b.op("Mul", out, visible)
    flat_out = b.op("Concat", dims(b, out, 0, 2), b.const([-1]), dims(b, out, 4, 5), axis=0)
    out = b.op("Reshape", out, flat_out)
    out = b.op("Slice", out, vec(b, lead), vec(b, filled), b.const([2]))
    if visible is None:  # rows with no visible key: softmax of -inf everywhere is NaN -> zeros
        out = b.op("Where", b.op("IsNaN", out), b.const(0.0, np.float32), out)
    if sig.dtype != F32:
        out = b.op("Cast", out, to=sig.dtype)
    return from_rank4(b, out, sig.rank)
