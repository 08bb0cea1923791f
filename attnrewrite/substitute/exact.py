"""The exact method: the same attention, one node. Its parity with the original model
proves the match captured q, k, v, scale and mask.

Causal attention is computed in ``chunks`` query chunks (reference:
`attnrewrite.methods.exact`): chunk c of ceil(Sq / chunks) queries multiplies only the keys its
last query can see (and, with a model window, none before its first query's window), so about
(chunks - 1) / (2 chunks) of the score matrix, its softmax and its memory are never computed.
Each chunk is the plain masked softmax of its rows, so the outputs are the same numbers. A logit
soft-cap (sig.softcap; its value the node's `softcap` attribute) maps each chunk's scaled scores
to softcap * tanh(s / softcap) before the mask, as the original does.
Chunk bounds are computed at run time (Slice clamps them), so every length works; chunks past
the queries are empty tensors. The causal mask is one small additive [rows, keys] tensor per
chunk (a broadcast Add of 0 / lowest is 2-3x cheaper than a broadcast Where on the scores),
added to the model's mask before the scores: one pass over the [heads, rows, keys] scores,
not two (the whole-matrix original node ran 22% faster so at n = 4096). Where the model's mask
hides future keys itself (sig.causal_in_bias: an exported causal mask), the chunk's part of it
is all the masking, as in the original.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from attnrewrite.substitute.body import (
    Body,
    Params,
    dim,
    dims,
    repeat_kv,
    soft_cap,
    swap_last_two,
    unsqueeze,
    vec,
)
from attnrewrite.substitute.signature import Signature


def build(b: Body, sig: Signature, inputs: Sequence[ir.Value], params: Params) -> ir.Value:
    """softmax(scale * q k^T + mask) v, with the original's softmax precision."""
    query, key, value = inputs[:3]
    mask = inputs[3] if sig.bias != "none" else None
    scale = b.float_attr("scale")
    if sig.dtype != ir.DataType.FLOAT:
        scale = b.op("Cast", scale, to=sig.dtype)
    scaled = b.op("Mul", query, scale)
    if sig.kv_repeat:
        key, value = repeat_kv(b, key, query), repeat_kv(b, value, query)
    chunks = int(params["chunks"])
    if not sig.causal:
        return _attend(b, sig, scaled, key, value, mask, None)
    if chunks == 1:
        rows = Rows(b.const(0), dim(b, query, -2), b.const(0), dim(b, key, -2))
        return _attend(b, sig, scaled, key, value, mask, rows)
    q_len, kv_len = dim(b, query, -2), dim(b, key, -2)
    size = b.op("Div", b.op("Add", q_len, b.const(chunks - 1)), b.const(chunks))
    offset = b.op("Sub", kv_len, q_len)
    zero = b.const(0)
    outputs = []
    for index in range(chunks):
        start = b.op("Min", b.op("Mul", size, b.const(index)), q_len)
        end = b.op("Min", b.op("Mul", size, b.const(index + 1)), q_len)
        key_end = b.op("Max", b.op("Min", b.op("Add", end, offset), kv_len), zero)
        key_start = zero
        if sig.window:
            first = b.op("Sub", b.op("Add", start, offset), b.int_attr("window"))
            key_start = b.op("Min", b.op("Max", b.op("Add", first, b.const(1)), zero), key_end)
        rows = Rows(start, end, key_start, key_end)
        outputs.append(
            _attend(
                b,
                sig,
                _slice(b, scaled, start, end),
                _slice(b, key, key_start, key_end),
                _slice(b, value, key_start, key_end),
                None if mask is None else _mask_part(b, mask, rows),
                rows,
            )
        )
    return b.op("Concat", *outputs, axis=-2)


class Rows:
    """Which queries [start, end) and keys [key_start, key_end) one causal chunk covers."""

    def __init__(
        self, start: ir.Value, end: ir.Value, key_start: ir.Value, key_end: ir.Value
    ) -> None:
        self.start, self.end, self.key_start, self.key_end = start, end, key_start, key_end


def _slice(b: Body, x: ir.Value, start: ir.Value, end: ir.Value) -> ir.Value:
    return b.op("Slice", x, vec(b, start), vec(b, end), b.const([-2]))


def _attend(
    b: Body,
    sig: Signature,
    scaled: ir.Value,
    key: ir.Value,
    value: ir.Value,
    mask: ir.Value | None,
    rows: Rows | None,
) -> ir.Value:
    """Masked softmax attention of these queries on these keys (rows: their causal bounds;
    the mask already cut to them)."""
    scores = b.op("MatMul", scaled, b.op("Transpose", key, perm=swap_last_two(sig.rank)))
    compute = sig.compute_dtype
    if compute != sig.dtype:
        scores = b.op("Cast", scores, to=compute)
    if sig.softcap:
        scores = soft_cap(b, scores, compute)
    keep = bias = None
    if sig.bias == "additive":
        bias = b.op("Cast", mask, to=compute)
    elif sig.bias == "keep":
        keep = mask
    if rows is not None and not sig.causal_in_bias:  # else the mask, cut to rows, hides them
        allowed = _causal(b, sig, rows)
        if keep is None:
            hidden = b.op(
                "Where",
                allowed,
                b.op("Cast", b.const(0.0, "float32"), to=compute),
                b.lowest(compute),
            )
            bias = hidden if bias is None else b.op("Add", bias, hidden)  # heads broadcast after
        else:
            keep = b.op("And", keep, allowed)
    if bias is not None:
        scores = b.op("Add", scores, bias)
    if keep is not None:
        scores = b.op("Where", keep, scores, b.lowest(compute))
    probs = b.op("Softmax", scores, axis=-1)
    if sig.nan_guard:
        zero = b.op("Cast", b.const(0.0, "float32"), to=compute)
        probs = b.op("Where", b.op("IsNaN", probs), zero, probs)
    if compute != sig.dtype:
        probs = b.op("Cast", probs, to=sig.dtype)
    return b.op("MatMul", probs, value)


def _causal(b: Body, sig: Signature, rows: Rows) -> ir.Value:
    """Bool [rows, keys]: query i (key position i + Skv - Sq) sees key j <= its position, and
    j > position - window under a model window."""
    offset = b.op("Sub", rows.key_end, rows.end)  # = Skv - Sq while the chunk has keys
    positions = b.op("Add", b.op("Range", rows.start, rows.end, b.const(1)), offset)
    cols = b.op("Range", rows.key_start, rows.key_end, b.const(1))
    last = unsqueeze(b, positions, 1)
    allowed = b.op("Not", b.op("Greater", cols, last))
    if sig.window:
        allowed = b.op(
            "And", allowed, b.op("Greater", cols, b.op("Sub", last, b.int_attr("window")))
        )
    return allowed


def _mask_part(b: Body, mask: ir.Value, rows: Rows) -> ir.Value:
    """The mask's entries for this chunk: its rows [start, end) and keys [key_start, key_end)
    in one Slice (a contiguous copy: gathering the rows, then the columns, cost 5x more); an
    axis of size 1 broadcasts, so it is read whole."""
    broadcast = b.op("Equal", dims(b, mask, -2, 2**62), b.const([1, 1]))
    starts = b.op("Concat", vec(b, rows.start), vec(b, rows.key_start), axis=0)
    ends = b.op("Concat", vec(b, rows.end), vec(b, rows.key_end), axis=0)
    return b.op(
        "Slice",
        mask,
        b.op("Where", broadcast, b.const([0, 0]), starts),
        b.op("Where", broadcast, b.const([1, 1]), ends),
        b.const([-2, -1]),
    )
