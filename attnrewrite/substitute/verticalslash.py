"""The ONNX body of vertical-slash attention (reference: `attnrewrite.methods.verticalslash`).

The reference masks the dense score matrix; this body costs O(Sq (2 local + vertical + slash) d)
plus O(last Skv d) for the estimate, and never holds an [Sq, Skv] tensor:

- estimate: the last ``last`` queries against every key (one MatMul, [B, H, L, Skv]) under the
  causal mask, a model window and the model's mask; softmax; a ReduceSum over the queries gives
  the column scores, and the same probabilities read along diagonals (GatherElements at key
  p_r - o) the diagonal scores;
- select: the forced sinks and local offsets get +inf and TopK (ties to the lower index, as the
  reference's stable sort) takes ``vertical`` keys and ``slash`` offsets per batch entry and
  head; -inf sentinels past the last key keep the shapes static when Skv is short (a sentinel
  is an invalid key, always masked);
- attend, in a Loop over chunks of query rows, so memory is bounded by the chunk, not by Sq:
  the local offsets 0 .. local-1 as the window method's band (queries in blocks of ``local`` by
  key position, each block against its own and the previous key block: one MatMul, no gather
  per query); the vertical keys, gathered once, in one MatMul; the other slash offsets gathered
  per query (the keys at p - o, [B, H, rows, slash - local, d]) in a batched MatMul. One softmax
  over the three parts, each pair counted once (a vertical key only outside the band, a slash
  key only if it is not a vertical one); the model's mask (broadcast axes included) is read at
  the same (row, key) pairs from its flattened view, a key-wise mask from its last row.

A logit soft-cap (sig.softcap, the node's ``softcap``) maps the scaled scores to
cap * tanh(s / cap) before the mask, in the estimate as in the attention.
Rows with no visible key give zeros, the reference's convention. Everything is computed in
float32 (fp16/bf16 operands are cast, the output cast back). ``vertical``, ``slash`` and
``local`` are structural (they fix shapes and the block size); ``last`` and ``sinks`` are read
from the node's attributes. Bidirectional blocks stay exact (the reference refuses them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from attnrewrite.substitute.body import (
    Body,
    LoopBody,
    Params,
    clamp,
    dim,
    dims,
    from_rank4,
    last_row,
    mask_as_rank4,
    mask_logits,
    repeat_kv,
    to_rank4,
    unsqueeze,
    vec,
)
from attnrewrite.substitute.signature import Signature

F32 = ir.DataType.FLOAT
CHUNK_PAIRS = 1 << 17  # query-key pairs per head in one Loop iteration (bounds its memory)


class _Mask:
    """The model's mask read at (query row, key) pairs, per batch entry and head."""

    def __init__(self, b: Body, sig: Signature, mask: ir.Value, query: ir.Value) -> None:
        self.sig = sig
        if sig.keywise and not sig.window:  # its last row holds every key's bias
            mask = last_row(b, mask)
        mask = mask_as_rank4(b, mask)
        batches, heads, self.rows, self.cols = (dim(b, mask, axis) for axis in range(4))
        self.flat = b.op("Reshape", mask, b.const([-1]))
        # where each (batch entry, head) of the operands starts in the flat mask ([B, H])
        batch = b.op("Mod", b.op("Range", b.const(0), dim(b, query, 0), b.const(1)), batches)
        head = b.op("Mod", b.op("Range", b.const(0), dim(b, query, 1), b.const(1)), heads)
        pair = b.op("Add", unsqueeze(b, b.op("Mul", batch, heads), 1), unsqueeze(b, head, 0))
        self.start = b.op("Mul", pair, b.op("Mul", self.rows, self.cols))

    def at(
        self, b: Body, rows: ir.Value, keys: ir.Value, rank: int
    ) -> tuple[ir.Value | None, ir.Value | None]:
        """(logits, keep) at query ``rows`` (in range) and ``keys`` (clamped here), [B, H, ...]
        of rank ``rank``."""
        start = b.op("Reshape", self.start, b.const([0, 0] + [1] * (rank - 2)))
        row = b.op("Min", rows, b.op("Sub", self.rows, b.const(1)))
        col = clamp(b, keys, b.const(0), b.op("Sub", self.cols, b.const(1)))
        index = b.op("Add", start, b.op("Add", b.op("Mul", row, self.cols), col))
        return mask_logits(b, self.sig, b.op("Gather", self.flat, index, axis=0))


def _masked(
    b: Body,
    scores: ir.Value,
    allowed: ir.Value,
    mask: tuple[ir.Value | None, ir.Value | None],
    shared: bool = False,
) -> ir.Value:
    """Scores plus the mask's logits where allowed (and kept), -inf elsewhere. A ``shared``
    pattern (the same for every batch entry and head) without a mask becomes a small additive
    tensor: a broadcast Add is much cheaper than a broadcast Where on the scores."""
    logits, keep = mask
    minus_inf = b.const(-np.inf, np.float32)
    if shared and logits is None and keep is None:
        return b.op("Add", scores, b.op("Where", allowed, b.const(0.0, np.float32), minus_inf))
    if keep is not None:
        allowed = b.op("And", allowed, keep)
    if logits is not None:
        scores = b.op("Add", scores, logits)
    return b.op("Where", allowed, scores, minus_inf)


def _capped(b: Body, scores: ir.Value, cap: ir.Value | None) -> ir.Value:
    """The model's logit soft-cap, cap * tanh(s / cap), on scaled scores (None: no cap)."""
    if cap is None:
        return scores
    return b.op("Mul", b.op("Tanh", b.op("Div", scores, cap)), cap)


def _no_nan(b: Body, probs: ir.Value) -> ir.Value:
    """Softmax of a row with nothing visible is NaN: zeros instead (the reference's rows)."""
    return b.op("Where", b.op("IsNaN", probs), b.const(0.0, np.float32), probs)


def _top(b: Body, scores: ir.Value, forced: ir.Value, k: int) -> ir.Value:
    """Int64 [B, H, k]: entries 0 .. forced-1, then the highest scores (ties to the lower
    index); past the last entry come sentinels (indices >= the length)."""
    first = b.op("Less", b.op("Range", b.const(0), dim(b, scores, 2), b.const(1)), forced)
    ranked = b.op("Where", first, b.const(np.inf, np.float32), scores)
    sentinels = b.op(
        "Expand",
        b.const(-np.inf, np.float32),
        b.op("Concat", dims(b, scores, 0, 2), b.const([k]), axis=0),
    )
    _, indices = b.tape.op_multi_out(
        "TopK",
        [b.op("Concat", ranked, sentinels, axis=2), b.const([k])],
        attributes={"axis": -1, "largest": 1, "sorted": 1},
        num_outputs=2,
    )
    return indices


def _estimate(
    b: Body,
    scaled: ir.Value,
    key: ir.Value,
    mask: _Mask | None,
    window: ir.Value | None,
    cap: ir.Value | None,
) -> tuple[ir.Value, ir.Value]:
    """(column scores, diagonal scores), each [B, H, Skv], from the last queries' attention."""
    q_len, kv_len = dim(b, scaled, 2), dim(b, key, 2)
    first = b.op("Sub", q_len, b.op("Min", b.int_attr("last"), q_len))
    rows = b.op("Range", first, q_len, b.const(1))  # [L]
    keys = b.op("Range", b.const(0), kv_len, b.const(1))
    scores = b.op(
        "MatMul", b.op("Gather", scaled, rows, axis=2), b.op("Transpose", key, perm=[0, 1, 3, 2])
    )  # [B, H, L, Skv]
    scores = _capped(b, scores, cap)
    # p_r - j: the offset of key j from row r
    positions = b.op("Add", rows, b.op("Sub", kv_len, q_len))
    rel = b.op("Sub", unsqueeze(b, positions, 1), keys)  # [L, Skv]
    seen = b.op("GreaterOrEqual", rel, b.const(0))
    allowed = seen if window is None else b.op("And", seen, b.op("Less", rel, window))
    at = (None, None) if mask is None else mask.at(b, unsqueeze(b, rows, 1), keys, 4)
    probs = _no_nan(b, b.op("Softmax", _masked(b, scores, allowed, at, shared=True), axis=-1))
    columns = b.reduce("ReduceSum", probs, [2], keepdims=0)
    # Diagonal sums by skewing (the last row is at key Skv - 1, so row r sits at Skv - L + r):
    # with L zero columns in front and a zero row below, the flat probabilities read from
    # position 1 in rows of W + 1 (W = Skv + L) put offset o = Skv - 1 - c in column c.
    n_last = b.op("Sub", q_len, first)
    width = b.op("Add", kv_len, n_last)
    pads = b.op("Concat", b.const([0, 0, 0]), vec(b, n_last), b.const([0, 0, 1, 0]), axis=0)
    flat = b.op("Reshape", b.op("Pad", probs, pads), b.const([0, 0, -1]))
    end = b.op("Add", b.op("Mul", n_last, b.op("Add", width, b.const(1))), b.const(1))
    skewed = b.op("Slice", flat, b.const([1]), vec(b, end), b.const([2]))
    rows_shape = b.op(
        "Concat", b.const([0, 0]), vec(b, n_last), vec(b, b.op("Add", width, b.const(1))), axis=0
    )
    skewed = b.op(
        "Slice", b.op("Reshape", skewed, rows_shape), b.const([0]), vec(b, kv_len), b.const([3])
    )
    by_column = b.reduce("ReduceSum", skewed, [2], keepdims=0)  # column c: offset Skv - 1 - c
    diagonals = b.op(
        "Slice", by_column, b.const([-1]), b.const([-(2**62)]), b.const([2]), b.const([-1])
    )
    return columns, diagonals


class _Chunks:
    """What every Loop iteration reads from the function body: operands, selections, layout."""

    def __init__(self, b: Body, sig: Signature, inputs: Sequence[ir.Value], params: Params) -> None:
        self.n_vertical, self.n_slash, self.n_local = (
            int(params[n]) for n in ("vertical", "slash", "local")
        )
        operands = inputs[:3] if sig.dtype == F32 else [b.op("Cast", x, to=F32) for x in inputs[:3]]
        query, key, value = (to_rank4(b, x, sig.rank) for x in operands)
        if sig.kv_repeat:
            key, value = repeat_kv(b, key, query), repeat_kv(b, value, query)
        self.key, self.value = key, value
        self.q_len, kv_len = dim(b, query, 2), dim(b, key, 2)
        self.last_key = b.op("Sub", kv_len, b.const(1))
        self.scaled = b.op("Mul", query, b.float_attr("scale"))
        self.mask = None if sig.bias == "none" else _Mask(b, sig, inputs[3], query)
        self.window = b.int_attr("window") if sig.window else None
        self.cap = b.float_attr("softcap") if sig.softcap else None

        columns, diagonals = _estimate(b, self.scaled, key, self.mask, self.window, self.cap)
        self.vertical = _top(b, columns, b.int_attr("sinks"), self.n_vertical)  # [B, H, V] keys
        chosen = _top(b, diagonals, b.const(self.n_local), self.n_slash)  # [B, H, S] offsets
        ends = b.const([self.n_local]), b.const([self.n_slash])
        self.extra = b.op("Slice", chosen, *ends, b.const([2]))  # past the forced local ones

        # Flat [B * H * Skv, d] tables: row (b H + h) Skv + j is key j of batch entry b, head h.
        heads = dim(b, query, 1)
        batch = b.op("Mul", b.op("Range", b.const(0), dim(b, query, 0), b.const(1)), heads)
        pair = b.op(
            "Add",
            unsqueeze(b, batch, 1),
            unsqueeze(b, b.op("Range", b.const(0), heads, b.const(1)), 0),
        )
        self.start = unsqueeze(b, b.op("Mul", pair, kv_len), 2)  # [B, H, 1]
        self.key_rows, self.value_rows = (
            b.op("Reshape", x, b.op("Concat", b.const([-1]), dims(b, x, 3, 4), axis=0))
            for x in (key, value)
        )
        picked = b.op("Add", self.start, b.op("Min", self.vertical, self.last_key))
        keys = b.op("Gather", self.key_rows, picked, axis=0)  # [B, H, V, d]
        self.vertical_keys = unsqueeze(b, b.op("Transpose", keys, perm=[0, 1, 3, 2]), 2)
        self.vertical_values = unsqueeze(b, b.op("Gather", self.value_rows, picked, axis=0), 2)
        self.is_vertical = _marks(b, self.vertical, kv_len)

        # Query blocks of w rows by key position (the window method's layout): `lead` rows
        # pad the first block; m blocks per Loop iteration.
        self.w = max(self.n_local, 1)
        per_row = self.n_local + self.n_vertical + self.n_slash  # keys: 2 local + v + s - local
        self.m = max(1, CHUNK_PAIRS // (per_row * self.w))
        self.width = b.const(self.w)
        self.offset = b.op("Sub", kv_len, self.q_len)
        self.lead = b.op("Mod", self.offset, self.width)
        self.filled = b.op("Add", self.lead, self.q_len)
        n_blocks = b.op("Div", b.op("Add", self.filled, b.const(self.w - 1)), self.width)
        self.trips = b.op("Div", b.op("Add", n_blocks, b.const(self.m - 1)), b.const(self.m))
        self.first_block = b.op("Div", b.op("Sub", self.offset, self.lead), self.width)

    def attend(self, lb: Body, it: ir.Value) -> ir.Value:
        """The outputs [B, H, m, w, dv] of Loop iteration ``it``'s query blocks."""
        start = lb.op("Add", self.first_block, lb.op("Mul", it, lb.const(self.m)))
        blocks = lb.op("Add", start, lb.const(np.arange(self.m)))
        qpos = lb.op(
            "Add", unsqueeze(lb, lb.op("Mul", blocks, self.width), 1), lb.const(np.arange(self.w))
        )  # [m, w] key positions; the rows that pad a block repeat an edge query
        rows = lb.op("Sub", qpos, self.offset)
        rows = clamp(lb, rows, lb.const(0), lb.op("Sub", self.q_len, lb.const(1)))
        step = _Step(lb, self, lb.op("Gather", self.scaled, rows, axis=2), qpos, rows)
        parts = [step.band(blocks)] if self.n_local else []
        parts.append(step.columns())
        if self.n_slash > self.n_local:
            parts.append(step.diagonals())
        scores = lb.op("Concat", *(part[0] for part in parts), axis=-1)
        probs = _no_nan(lb, lb.op("Softmax", scores, axis=-1))
        sizes = [part[1] for part in parts]
        pieces = lb.tape.op_multi_out(
            "Split", [probs, lb.const(sizes)], attributes={"axis": -1}, num_outputs=len(parts)
        )
        terms = [weigh(piece) for piece, (_, _, weigh) in zip(pieces, parts, strict=True)]
        out = terms[0]
        for term in terms[1:]:
            out = lb.op("Add", out, term)
        return out


Part = tuple[ir.Value, int, Callable[[ir.Value], ir.Value]]  # (masked scores, count, p -> p V)


class _Step:
    """One Loop iteration's query blocks: qb [B, H, m, w, d] at key positions qpos [m, w]."""

    def __init__(self, lb: Body, c: _Chunks, qb: ir.Value, qpos: ir.Value, rows: ir.Value) -> None:
        self.lb, self.c, self.qb = lb, c, qb
        self.pos = unsqueeze(lb, qpos, 2)  # [m, w, 1]
        self.rows = unsqueeze(lb, rows, 2)

    def _allowed(
        self,
        allowed: ir.Value,
        rel: ir.Value,
        keys: ir.Value,
        scores: ir.Value,
        shared: bool = False,
    ) -> ir.Value:
        """Scores masked to ``allowed`` pairs, a model window and the model's mask."""
        lb, c = self.lb, self.c
        if c.window is not None:
            allowed = lb.op("And", allowed, lb.op("Less", rel, c.window))
        at = (None, None) if c.mask is None else c.mask.at(lb, self.rows, keys, 5)
        return _masked(lb, _capped(lb, scores, c.cap), allowed, at, shared)

    def _in_range(self, keys: ir.Value) -> ir.Value:
        lb = self.lb
        return lb.op(
            "And",
            lb.op("GreaterOrEqual", keys, lb.const(0)),
            lb.op("LessOrEqual", keys, self.c.last_key),
        )

    def band(self, blocks: ir.Value) -> Part:
        """Offsets 0 .. local-1: the block's own and previous key block, one MatMul."""
        lb, c = self.lb, self.c
        cols = lb.op(
            "Add",
            unsqueeze(lb, lb.op("Mul", lb.op("Sub", blocks, lb.const(1)), c.width), 1),
            lb.const(np.arange(2 * c.w)),
        )  # [m, 2w]
        index = clamp(lb, cols, lb.const(0), c.last_key)
        keys = lb.op("Gather", c.key, index, axis=2)  # [B, H, m, 2w, d]
        values = lb.op("Gather", c.value, index, axis=2)
        scores = lb.op("MatMul", self.qb, lb.op("Transpose", keys, perm=[0, 1, 2, 4, 3]))
        cols = unsqueeze(lb, cols, 1)  # [m, 1, 2w]
        rel = lb.op("Sub", self.pos, cols)
        near = lb.op("And", lb.op("GreaterOrEqual", rel, lb.const(0)), lb.op("Less", rel, c.width))
        allowed = lb.op("And", near, self._in_range(cols))
        return (
            self._allowed(allowed, rel, cols, scores, shared=True),
            2 * c.w,
            lambda p: lb.op("MatMul", p, values),
        )

    def columns(self) -> Part:
        """The vertical keys up to the query's position, outside the band (counted there)."""
        lb, c = self.lb, self.c
        scores = lb.op("MatMul", self.qb, c.vertical_keys)  # [B, H, m, w, V]
        keys = unsqueeze(lb, c.vertical, 2, 3)  # [B, H, 1, 1, V]
        rel = lb.op("Sub", self.pos, keys)
        allowed = lb.op(
            "And", lb.op("GreaterOrEqual", rel, lb.const(c.n_local)), self._in_range(keys)
        )
        weigh = lambda p: lb.op("MatMul", p, c.vertical_values)  # noqa: E731
        return self._allowed(allowed, rel, keys, scores), c.n_vertical, weigh

    def diagonals(self) -> Part:
        """The other slash offsets: key p - o gathered per query, unless it is a vertical key."""
        lb, c = self.lb, self.c
        offsets = unsqueeze(lb, c.extra, 2, 3)  # [B, H, 1, 1, E]
        keys = lb.op("Sub", self.pos, offsets)  # [B, H, m, w, E]
        flat = lb.op("Add", unsqueeze(lb, c.start, 3, 4), clamp(lb, keys, lb.const(0), c.last_key))
        gathered = lb.op("Gather", c.key_rows, flat, axis=0)  # [B, H, m, w, E, d]
        values = lb.op("Gather", c.value_rows, flat, axis=0)
        scores = lb.op("MatMul", gathered, unsqueeze(lb, self.qb, 5))
        scores = lb.op("Squeeze", scores, lb.const([5]))
        vertical = lb.op("Gather", c.is_vertical, flat, axis=0)
        fresh = lb.op("Equal", vertical, lb.const(0.0, np.float32))
        allowed = lb.op("And", self._in_range(keys), fresh)

        def weigh(p: ir.Value) -> ir.Value:  # [B, H, m, w, 1, E] @ [B, H, m, w, E, dv]
            return lb.op("Squeeze", lb.op("MatMul", unsqueeze(lb, p, 4), values), lb.const([4]))

        return self._allowed(allowed, offsets, keys, scores), c.n_slash - c.n_local, weigh


def _marks(b: Body, vertical: ir.Value, kv_len: ir.Value) -> ir.Value:
    """Flat [B * H * Skv] float: 1 where a key is a vertical key (the sentinels' slots cut)."""
    slots = vec(b, b.op("Add", kv_len, dim(b, vertical, 2)))
    size = b.op("Concat", dims(b, vertical, 0, 2), slots, axis=0)
    marks = b.op(
        "ScatterElements",
        b.op("Expand", b.const(0.0, np.float32), size),
        vertical,
        b.op("Expand", b.const(1.0, np.float32), b.op("Shape", vertical)),
        axis=2,
    )
    kept = b.op("Slice", marks, b.const([0]), vec(b, kv_len), b.const([2]))
    return b.op("Reshape", kept, b.const([-1]))


def build(b: Body, sig: Signature, inputs: Sequence[ir.Value], params: Params) -> ir.Value:
    chunks = _Chunks(b, sig, inputs, params)
    loop = LoopBody(b, "vs")
    body = loop.graph([chunks.attend(loop.b, loop.iteration)])
    out = b.op("Loop", chunks.trips, b.const(True, np.bool_), body=body)  # [T, B, H, m, w, dv]
    out = b.op("Transpose", out, perm=[1, 2, 0, 3, 4, 5])
    rows = b.op("Concat", dims(b, out, 0, 2), b.const([-1]), dims(b, out, 5, 6), axis=0)
    out = b.op("Reshape", out, rows)
    out = b.op("Slice", out, vec(b, chunks.lead), vec(b, chunks.filled), b.const([2]))
    if sig.dtype != F32:
        out = b.op("Cast", out, to=sig.dtype)
    return from_rank4(b, out, sig.rank)
