"""Conv-basis attention as an ONNX function: what `attnrewrite.methods.convbasis` computes with
recovery="topk", in standard ops (DFT from opset 17; its axis is an input from opset 20).

Per triangle (the causal lower part; bidirectional adds the strictly-upper part, reversed):

1. jumps: column c's first ``probe`` entries against the nearest weighted column to its left at
   the same distances, read from one band of scores (`_Triangle.band`: blocked MatMuls, no
   copy of T query rows per column); the ``bases`` - 1 largest jumps plus the first weighted
   column are the change points (TopK, sorted);
2. profiles: the change-point columns' scores down their diagonals, one MatMul of those keys
   with every query and a GatherElements (rows above the first query, KV cache: the first
   query's row along the same diagonal), masked to -inf outside the window / the rows;
3. one shift per head (the largest recovered score of both triangles), kernels exp(S_i - c),
   and Y = sum_i conv(kernel_i, [V w, w] on columns [p_i, p_{i+1})), by ``transform``:
   "direct" (default): as products with the Toeplitz blocks of those convolutions, O(n^2) like
   exact attention's P.V alone, but one Gather, one copy and one MatMul per column chunk
   (`_Triangle.apply_direct`; SmolLM2 with onnxruntime's arena: as fast as exact attention in
   4 chunks at n = 2048, 1.18x faster at 8192); onnxruntime's DFT runs at ~2 GFLOP/s on one
   thread, which made the transforms 6.5x slower than the whole original model at n = 2048;
   "fft": by DFT at a power-of-two
   length >= the linear length (onnxruntime's DFT is radix-2 only there, O(n^2) otherwise).
   The kernels are real, so channels go in pairs as one complex signal (half the transforms of
   real-input ones, which onnxruntime computes no faster, and no spectrum unpacking); products
   are summed in the frequency domain by a Loop over the bases (one segment's spectrum in
   memory at a time) and inverted once;
4. O = Y[:, :dv] / Y[:, dv], zeros for rows that see no weighted key.

With "fft", the transforms run in float64 (FFT_DTYPE): in float32 their absolute error (~1e-7
of the largest row sum) is 3e-5 relative on a causal layer at n = 200, the first rows' sums
being small (the reference's documented limit); the rest computes in float32 (fp16 inputs too).
Measured alternative, not kept: the transforms as MatMuls (four-step Cooley-Tukey, O(n^1.5))
were slower than the DFT op in float64 on CPU (1.6 s against 1.1 s at n = 1024) and about twice
as fast in float32, which fails 1e-5 for the reason above; the TVM lowering uses that
formulation on GPUs (attnrewrite/lower/fft.py).

``bases`` and ``probe`` are read from the node at run time; ``transform`` picks the overload.
Key-wise masks (padding) are key weights; a causal window zeroes kernel entries t >= window
(read at run time).
Per-query biases stay exact (the reference folds them into the profiles; not done here), and
recovery="binary" (a sequential search) has no body.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from attnrewrite.substitute.body import (
    Body,
    LoopBody,
    Params,
    fitted_inputs,
    from_rank4,
    key_weights,
    repeat_kv,
    to_rank4,
)
from attnrewrite.substitute.signature import Signature

FLOOR = -1e30  # the reference's clamp: a shift below FLOOR / 2 means "nothing recovered"
BIG = 2**62
FFT_DTYPE = ir.DataType.DOUBLE  # float32 transforms: ~3e-5 off on the first causal rows at n = 200
DIRECT_CHUNKS = 16  # column chunks of transform="direct" (each wastes its square's upper half)
DIRECT_CHUNK_ENTRIES = 1 << 24  # and at most this many kernel entries a head per chunk (64 MB)
MIN_CHUNK_COLUMNS = 2  # TVM's importer computes one-column chunks wrongly (tiny-gpt2, n = 16)
BAND_BLOCK = 32  # key columns a block of the probe band's products (at least ``probe``)


class _Ops:
    """Small helpers over a Body, in the compute dtype."""

    def __init__(self, b: Body, dtype: ir.DataType) -> None:
        self.b, self.dtype = b, dtype
        self.np = dtype.numpy()

    def i(self, *values: int) -> ir.Value:
        return self.b.const(list(values))

    def s(self, value: int) -> ir.Value:
        return self.b.const(value)

    def f(self, value: float) -> ir.Value:
        return self.b.const(value, self.np)

    def dim(self, x: ir.Value, axis: int) -> ir.Value:
        """A scalar int64 dimension."""
        return self.b.op("Gather", self.b.op("Shape", x), self.s(axis))

    def slice(self, x, start, end, axis: int) -> ir.Value:
        as1 = [v if isinstance(v, ir.Value) else self.s(v) for v in (start, end)]
        as1 = [self.b.op("Reshape", v, self.i(1)) for v in as1]
        return self.b.op("Slice", x, as1[0], as1[1], self.i(axis))

    def flip(self, x: ir.Value, axis: int) -> ir.Value:
        return self.b.op("Slice", x, self.i(-1), self.i(-BIG), self.i(axis), self.i(-1))

    def clip(self, x: ir.Value, lo: ir.Value | None, hi: ir.Value | None) -> ir.Value:
        if lo is not None:
            x = self.b.op("Max", x, lo)
        if hi is not None:
            x = self.b.op("Min", x, hi)
        return x

    def where(self, cond, a, c) -> ir.Value:
        return self.b.op("Where", cond, a, c)

    def topk(self, x: ir.Value, k: ir.Value, largest: int, values: bool = False) -> ir.Value:
        """TopK along the last axis, sorted; its outputs named here (the builder would give
        both outputs of a node the same name)."""
        outs = self.b.tape.op_multi_out(
            "TopK",
            [x, self.b.op("Reshape", k, self.i(1))],
            attributes={"axis": -1, "largest": largest, "sorted": 1},
            num_outputs=2,
        )
        tag = f"topk{len(self.b.tape.nodes)}"
        outs[0].name, outs[1].name = f"{tag}_values", f"{tag}_indices"
        return outs[0] if values else outs[1]

    def dft(
        self, x: ir.Value, length: ir.Value, axis: int, inverse: int = 0, onesided: int = 0
    ) -> ir.Value:
        """DFT along `axis` (an input from opset 20, an attribute before)."""
        if self.b.opset >= 20:
            return self.b.op("DFT", x, length, self.s(axis), inverse=inverse, onesided=onesided)
        return self.b.op("DFT", x, length, axis=axis, inverse=inverse, onesided=onesided)


class _Triangle:
    """One lower-triangular problem: entries G[r, c] = q_r . k_c (scaled) with distance
    t = r + r0 - c >= t_min. q [B, H, R, d], k [B, H, C, d], x [B, H, D1, C] (channels first,
    the last channel the key weight), real [B, H, C] (None: every key weighted)."""

    def __init__(self, o: _Ops, q, k, x, real, *, r0, t_min: int, window, live) -> None:
        self.o, self.q, self.k, self.x, self.real = o, q, k, x, real
        self.r0, self.t_min, self.window, self.live = r0, t_min, window, live
        self.rows = o.dim(q, 2)
        self.cols = o.dim(k, 2)
        self.length = o.b.op("Add", r0, self.rows)
        self.lead = o.b.op("Slice", o.b.op("Shape", q), o.i(0), o.i(2))  # [B, H]

    def in_range(self, t: ir.Value) -> ir.Value | None:
        o = self.o
        keep = None if self.t_min == 0 else o.b.op("GreaterOrEqual", t, o.s(self.t_min))
        if self.window is not None:
            inside = o.b.op("Less", t, self.window)
            keep = inside if keep is None else o.b.op("And", keep, inside)
        return keep

    def _gather_rows(self, x: ir.Value, rows: ir.Value) -> ir.Value:
        """x [B, H, S, d] at per-(b, h) rows [B|1, H|1, ...] -> [B, H, ..., d]."""
        o = self.o
        shape = o.b.op(
            "Concat", self.lead, o.b.op("Slice", o.b.op("Shape", rows), o.i(2), o.i(BIG)), axis=0
        )
        index = o.b.op("Unsqueeze", o.b.op("Expand", rows, shape), o.i(-1))
        return o.b.op("GatherND", x, index, batch_dims=2)

    def change_points(self, bases: ir.Value, probe: ir.Value) -> ir.Value:
        """[B, H, k] sorted: the first weighted column and the bases - 1 largest jumps."""
        o, b = self.o, self.o.b
        cols = b.op("Range", o.s(1), self.cols, o.s(1))  # [C-1]
        top_row = b.op("Sub", self.rows, o.s(1))
        if self.real is None:
            left = b.op("Sub", cols, o.s(1))  # [C-1]
            first = b.op("Expand", o.i(0), b.op("Concat", self.lead, o.i(1), axis=0))
        else:
            idx = b.op("Range", o.s(0), self.cols, o.s(1))
            real64 = b.op("Cast", self.real, to=ir.DataType.INT64)
            count = b.op("CumSum", real64, o.s(-1))  # inclusive
            rank = o.where(self.real, b.op("Sub", count, o.s(1)), self.cols)
            zeros = b.op(
                "ConstantOfShape",
                b.op(
                    "Concat",
                    self.lead,
                    b.op("Reshape", b.op("Add", self.cols, o.s(1)), o.i(1)),
                    axis=0,
                ),
                value=ir.tensor(np.zeros(1, np.int64)),
            )
            pos = b.op(
                "ScatterElements",
                zeros,
                rank,
                o.where(self.real, b.op("Expand", idx, b.op("Shape", rank)), o.s(0)),
                axis=2,
                reduction="add",
            )  # pos[j] = column of the j-th weighted key
            prior = o.clip(b.op("Sub", count, o.s(1)), o.s(0), None)
            last = o.where(
                b.op("Greater", count, o.s(0)),
                b.op("GatherElements", pos, prior, axis=2),
                o.s(-1),
            )  # last weighted column <= c
            left = o.slice(last, 0, -1, 2)  # [B, H, C-1]
            has_left = b.op("GreaterOrEqual", left, o.s(0))
            left = o.clip(left, o.s(0), None)
            total = o.slice(count, -1, BIG, 2)
            first = o.where(
                b.op("Greater", total, o.s(0)),
                o.slice(pos, 0, 1, 2),
                b.op("Sub", self.cols, o.s(1)),
            )  # [B, H, 1]
        # probed distances t = max(r0 - left, t_min) + p, p < probe: [.., C-1, T]
        t0 = o.clip(b.op("Sub", self.r0, left), o.s(self.t_min), None)
        t = b.op(
            "Add",
            b.op("Unsqueeze", t0, o.i(-1)),
            b.op("Range", o.s(0), probe, o.s(1)),
        )
        shift = b.op("Sub", t, self.r0)
        cur_rows = b.op("Add", b.op("Unsqueeze", cols, o.i(-1)), shift)
        left_rows = b.op("Add", b.op("Unsqueeze", left, o.i(-1)), shift)
        ok = b.op("Less", cur_rows, self.rows)
        extra = self.in_range(t)
        if extra is not None:
            ok = b.op("And", ok, extra)
        band = self.band(probe)
        if self.real is None:
            cur, prev = self._neighbour_probes(band, probe, left_rows, top_row)
        else:
            cur, prev = self._weighted_probes(band, left, cur_rows, left_rows, top_row)
        diff = o.where(ok, b.op("Abs", b.op("Sub", cur, prev)), o.f(0.0))
        score = b.reduce("ReduceMax", diff, [-1], keepdims=0)  # [B, H, C-1]
        hidden = b.op("GreaterOrEqual", cols, self.live)
        if self.real is not None:
            no_left = b.op("Not", has_left)
            hidden = b.op(
                "Or", hidden, b.op("Or", b.op("Not", o.slice(self.real, 1, BIG, 2)), no_left)
            )
        score = o.where(hidden, o.f(-np.inf), score)
        picks_n = b.op("Min", b.op("Sub", bases, o.s(1)), b.op("Sub", self.cols, o.s(1)))
        picks = o.topk(score, picks_n, largest=1)
        points = b.op("Concat", first, b.op("Add", picks, o.s(1)), axis=-1)
        count = b.op("Add", picks_n, o.s(1))
        return o.topk(points, count, largest=0, values=True)

    def band(self, probe: ir.Value) -> ir.Value:
        """[B, H, C, T]: column c's scores at distances t_min + p (p < T = probe) from its
        diagonal, q[c + t_min - r0 + p] . k[c] (zero where that row does not exist).

        Products of blocks of Bk key columns with the 2 Bk query rows they reach (O(C Bk d)),
        then the skew trick (each block's [Bk, 2 Bk] product flattened and read back 2 Bk + 1
        wide, so row a starts at its own column a). Gathering T query rows per column instead
        (O(C T d) copied, in d-float pieces) was most of the node's time outside the Toeplitz
        products at n = 2048, and its buffer the node's largest.
        """
        o, b = self.o, self.o.b
        bk = b.op("Max", probe, o.s(BAND_BLOCK))
        blocks = b.op("Div", b.op("Add", self.cols, b.op("Sub", bk, o.s(1))), bk)
        padded = b.op("Mul", blocks, bk)

        def vec(*values: ir.Value) -> ir.Value:
            return b.op("Concat", *(b.op("Reshape", v, o.i(1)) for v in values), axis=0)

        def rows_pad(x: ir.Value, front: ir.Value, back: ir.Value) -> ir.Value:
            pads = b.op("Concat", o.i(0, 0), vec(front), o.i(0, 0, 0), vec(back), o.i(0), axis=0)
            return b.op("Pad", x, pads)

        keys = rows_pad(self.k, o.s(0), b.op("Sub", padded, self.cols))
        # row c of `aligned` is query c + t_min - r0 (zeros where there is none)
        first = o.clip(b.op("Sub", o.s(self.t_min), self.r0), o.s(0), None)
        front = o.clip(b.op("Sub", self.r0, o.s(self.t_min)), o.s(0), None)
        queries = o.slice(self.q, first, BIG, 2)
        need = b.op("Add", padded, bk)
        back = o.clip(b.op("Sub", need, b.op("Add", front, o.dim(queries, 2))), o.s(0), None)
        aligned = o.slice(rows_pad(queries, front, back), 0, need, 2)
        aligned = b.op(
            "Reshape",
            aligned,
            b.op("Concat", self.lead, vec(b.op("Add", blocks, o.s(1)), bk), o.i(-1), axis=0),
        )
        pairs = b.op(
            "Concat", o.slice(aligned, 0, blocks, 2), o.slice(aligned, 1, BIG, 2), axis=3
        )  # [B, H, blocks, 2 Bk, d]
        keys = b.op("Reshape", keys, b.op("Concat", self.lead, vec(blocks, bk), o.i(-1), axis=0))
        products = b.op("MatMul", keys, b.op("Transpose", pairs, perm=[0, 1, 2, 4, 3]))
        flat = b.op("Reshape", products, b.op("Concat", self.lead, vec(blocks), o.i(-1), axis=0))
        flat = b.op("Pad", flat, b.op("Concat", o.i(0, 0, 0, 0, 0, 0, 0), vec(bk), axis=0))
        skewed = b.op(
            "Reshape",
            flat,
            b.op(
                "Concat",
                self.lead,
                vec(blocks, bk, b.op("Add", b.op("Add", bk, bk), o.s(1))),
                axis=0,
            ),
        )  # [B, H, blocks, Bk, 2 Bk + 1]: entry (a, p) is key a against query a + p
        band = o.slice(skewed, 0, probe, 4)
        band = b.op("Reshape", band, b.op("Concat", self.lead, o.i(-1), vec(probe), axis=0))
        return o.slice(band, 0, self.cols, 2)

    def _neighbour_probes(
        self, band: ir.Value, probe: ir.Value, left_rows: ir.Value, top_row: ir.Value
    ) -> tuple[ir.Value, ir.Value]:
        """Every key weighted: (column c's probes, column c - 1's at c's distances), c >= 1,
        [B, H, C-1, T]. Column c probes from distance tau(c) = max(r0 - c + 1, t_min): the band
        from column r0 + 1 - t_min on; the columns before it (r0 > 0) probe query rows 1 .. T.
        Where tau(c - 1) = tau(c) the left column's probes are its own, so only the first
        columns are probed twice."""
        o, b = self.o, self.o.b
        early = o.clip(
            b.op("Sub", b.op("Add", self.r0, o.s(1)), o.s(self.t_min)), o.s(0), self.cols
        )
        top = b.op(
            "Gather",
            self.q,
            o.clip(b.op("Range", o.s(1), b.op("Add", probe, o.s(1)), o.s(1)), o.s(0), top_row),
            axis=2,
        )
        first = b.op(
            "MatMul", o.slice(self.k, 0, early, 2), b.op("Transpose", top, perm=[0, 1, 3, 2])
        )
        own = b.op("Concat", first, o.slice(band, early, BIG, 2), axis=2)  # [B, H, C, T]
        special = o.clip(
            b.op("Sub", b.op("Add", self.r0, o.s(1)), o.s(self.t_min)),
            o.s(0),
            b.op("Sub", self.cols, o.s(1)),
        )
        q_left = b.op(
            "Gather", self.q, o.clip(o.slice(left_rows, 0, special, 0), o.s(0), top_row), axis=2
        )
        first_prev = b.op(
            "MatMul", q_left, b.op("Unsqueeze", o.slice(self.k, 0, special, 2), o.i(-1))
        )
        last = b.op("Sub", self.cols, o.s(1))
        prev = b.op(
            "Concat", b.op("Squeeze", first_prev, o.i(-1)), o.slice(own, special, last, 2), axis=2
        )
        return o.slice(own, 1, BIG, 2), prev

    def _weighted_probes(
        self, band, left, cur_rows, left_rows, top_row
    ) -> tuple[ir.Value, ir.Value]:
        """Key weights: (column c's probes, the nearest weighted column left of c's at c's
        distances), c >= 1, [B, H, C-1, T]. Where both start at distance t_min they are the
        band's (c's row and left(c)'s). A column whose left column is older than the first
        query (left < r0 - t_min: queries after a KV cache) starts later, at a distance its
        padding sets: when the queries start after key t_min (r0 > t_min, known from the
        shapes, so TVM's importer folds it) every column gathers its query rows instead."""
        o, b = self.o, self.o.b
        m = o.where(
            b.op("Greater", self.r0, o.s(self.t_min)), b.op("Sub", self.cols, o.s(1)), o.s(0)
        )

        def gathered(rows: ir.Value, keys: ir.Value) -> ir.Value:
            q_rows = self._gather_rows(self.q, o.clip(o.slice(rows, 0, m, 2), o.s(0), top_row))
            dots = b.op("MatMul", q_rows, b.op("Unsqueeze", keys, o.i(-1)))
            return b.op("Squeeze", dots, o.i(-1))  # [B, H, M, T]

        k_left = self._gather_rows(self.k, o.slice(left, 0, m, 2))
        cur = b.op(
            "Concat",
            gathered(cur_rows, o.slice(self.k, 1, b.op("Add", m, o.s(1)), 2)),
            o.slice(band, b.op("Add", m, o.s(1)), BIG, 2),
            axis=2,
        )
        index = b.op("Expand", b.op("Unsqueeze", left, o.i(-1)), b.op("Shape", cur))
        prev = b.op(
            "Concat",
            gathered(left_rows, k_left),
            o.slice(b.op("GatherElements", band, index, axis=2), m, BIG, 2),
            axis=2,
        )
        return cur, prev

    def profiles(self, points: ir.Value) -> ir.Value:
        """[B, H, k, L] log-kernels S_i[t] (-inf: outside the rows / window, padded point)."""
        o, b = self.o, self.o.b
        k_points = self._gather_rows(self.k, points)  # [B, H, k, d]
        scores = b.op("MatMul", k_points, b.op("Transpose", self.q, perm=[0, 1, 3, 2]))  # [B,H,k,R]
        t = b.op("Range", o.s(0), self.length, o.s(1))  # [L]
        rows = b.op("Add", b.op("Unsqueeze", points, o.i(-1)), b.op("Sub", t, self.r0))  # [B,H,k,L]
        top_row = b.op("Sub", self.rows, o.s(1))
        vals = b.op("GatherElements", scores, o.clip(rows, o.s(0), top_row), axis=3)
        if self.t_min == 0:  # lower triangle: rows above the first query (r0 > 0, KV cache)
            diag = o.clip(b.op("Sub", self.r0, t), o.s(0), None)  # [L]
            first_row = b.op(
                "MatMul", o.slice(self.q, 0, 1, 2), b.op("Transpose", self.k, perm=[0, 1, 3, 2])
            )
            head = b.op("Gather", first_row, diag, axis=3)  # [B, H, 1, L]
            if self.real is not None:
                seen = b.op("Unsqueeze", b.op("Gather", self.real, diag, axis=2), o.i(2))
                head = o.where(seen, head, o.f(-np.inf))
            vals = o.where(b.op("Less", rows, o.s(0)), head, vals)
        keep = b.op("Less", rows, self.rows)
        extra = self.in_range(t)
        if extra is not None:
            keep = b.op("And", keep, extra)
        if self.real is not None:
            real_points = b.op(
                "GatherElements", b.op("Cast", self.real, to=ir.DataType.INT64), points, axis=2
            )
            keep = b.op(
                "And",
                keep,
                b.op("Unsqueeze", b.op("Cast", real_points, to=ir.DataType.BOOL), o.i(-1)),
            )
        return o.where(keep, vals, o.f(-np.inf))

    def apply_direct(self, logs: ir.Value, points: ir.Value, shift: ir.Value) -> ir.Value:
        """The same sum as `apply`, as products with the Toeplitz blocks: rows [r0, r0 + R) of
        Y[r] = sum_c exp(S_seg(c) - shift)[r - c] x[c], in DIRECT_CHUNKS column chunks (a Loop).

        A chunk of Cc columns from c0 reaches rows [max(c0, r0), L) only. Its matrix comes from
        the skew trick: each column's kernel row (one GatherND from a small table: every basis
        at the distances the chunk reads, then Cc zeros; Wd wide), flattened and read back
        Wd - 1 wide, moves row j j places right with zeros around the band; one MatMul over
        that band (up to 2 Cc columns more than needed) and a Slice of the D1-row product.
        No transform and no float64: every term is a non-negative product summed by MatMul.
        """
        o, b = self.o, self.o.b
        kern = b.op("Exp", b.op("Sub", logs, shift))  # [B, H, k, L]
        none = b.op("Mul", o.slice(kern, 0, 1, 2), o.f(0.0))  # columns before the first point
        kern = b.op("Concat", none, kern, axis=2)  # [B, H, k + 1, L]
        idx = b.op("Range", o.s(0), self.cols, o.s(1))  # [C]
        starts = b.op(
            "GreaterOrEqual", b.op("Unsqueeze", idx, o.i(-1)), b.op("Unsqueeze", points, o.i(2))
        )
        seg = b.reduce("ReduceSum", b.op("Cast", starts, to=ir.DataType.INT64), [-1], keepdims=0)
        live = b.op("Min", self.cols, self.length)  # columns past the last row reach no row
        size = b.op("Div", b.op("Add", live, o.s(DIRECT_CHUNKS - 1)), o.s(DIRECT_CHUNKS))
        most = b.op("Div", o.s(DIRECT_CHUNK_ENTRIES), b.op("Add", self.length, self.cols))
        size = o.clip(o.clip(size, None, most), o.s(MIN_CHUNK_COLUMNS), None)
        trips = b.op("Div", b.op("Add", live, b.op("Sub", size, o.s(1))), size)

        body = LoopBody(b, "cbd", carried=(o.dtype,))
        loop, (y_in,) = body.b, body.carried
        lo = _Ops(loop, o.dtype)

        def vec(*values: ir.Value) -> ir.Value:
            return loop.op("Concat", *(loop.op("Reshape", v, lo.i(1)) for v in values), axis=0)

        c0 = loop.op("Mul", body.iteration, size)
        c1 = loop.op("Min", loop.op("Add", c0, size), live)
        cc = loop.op("Sub", c1, c0)
        width = loop.op("Sub", self.length, c0)  # distances a column of the chunk can reach
        skip = lo.clip(loop.op("Sub", self.r0, c0), lo.s(0), None)  # rows above the outputs
        s0 = lo.clip(loop.op("Add", loop.op("Sub", skip, cc), lo.s(1)), lo.s(0), None)
        table = lo.slice(kern, s0, width, 3)
        heads = loop.op("Shape", table)
        zeros = loop.op(
            "Expand", lo.f(0.0), loop.op("Concat", lo.slice(heads, 0, 3, 0), vec(cc), axis=0)
        )
        table = loop.op("Concat", table, zeros, axis=3)  # [B, H, k + 1, Wd]
        wide = lo.dim(table, 3)
        rows_of = loop.op(
            "GatherND",
            table,
            loop.op("Unsqueeze", lo.slice(seg, c0, c1, 2), lo.i(-1)),
            batch_dims=2,
        )  # [B, H, Cc, Wd]
        flat = loop.op("Reshape", rows_of, loop.op("Concat", self.lead, lo.i(-1), axis=0))
        band = loop.op("Sub", wide, lo.s(1))
        flat = lo.slice(flat, 0, loop.op("Mul", cc, band), 2)
        skewed = loop.op("Reshape", flat, loop.op("Concat", self.lead, vec(cc, band), axis=0))
        # skewed[j, i] = kernel of column c0 + j at distance s0 + i - j (zero off the band)
        part = loop.op("MatMul", lo.slice(self.x, c0, c1, 3), skewed)  # [B, H, D1, Wd - 1]
        first = loop.op("Sub", skip, s0)
        part = lo.slice(part, first, loop.op("Add", first, loop.op("Sub", width, skip)), 3)
        above = loop.op("Sub", loop.op("Add", c0, skip), self.r0)  # output rows before it
        part = loop.op(
            "Pad", part, loop.op("Concat", lo.i(0, 0, 0), vec(above), lo.i(0, 0, 0, 0), axis=0)
        )
        y_out = loop.op("Add", y_in, part)

        channels = o.dim(self.x, 2)
        start = b.op(
            "Expand",
            o.f(0.0),
            b.op(
                "Concat",
                self.lead,
                b.op("Reshape", channels, o.i(1)),
                b.op("Reshape", self.rows, o.i(1)),
                axis=0,
            ),
        )
        (y,) = b.tape.op_multi_out(
            "Loop",
            [trips, b.const(True, np.bool_), start],
            attributes={"body": body.graph([y_out])},
            num_outputs=1,
        )
        y.name = f"{body.tag}_y"
        return y

    def apply(self, logs: ir.Value, points: ir.Value, shift: ir.Value) -> ir.Value:
        """sum_i conv(exp(S_i - shift), x on segment i) by DFT: rows [r0, r0 + R): [B,H,D1,R].

        The kernels are real, so conv(kern, x_a + i x_b) = conv(kern, x_a) + i conv(kern, x_b):
        channels go in pairs as complex signals, half as many (full, two-sided) transforms as
        real-input ones, and no unpacking of the spectrum. The transforms run in FFT_DTYPE.
        """
        o, b = self.o, self.o.b
        fft = FFT_DTYPE
        kern = b.op("Exp", b.op("Sub", logs, shift))  # [B, H, k, L]
        # power-of-two length >= L + C - 1 (no wrap-around into rows < L)
        need = b.op("Sub", b.op("Add", self.length, self.cols), o.s(1))
        need_f = b.op("Cast", o.clip(need, o.s(1), None), to=ir.DataType.DOUBLE)
        log2 = b.op("Div", b.op("Log", need_f), b.const(np.log(2.0), np.float64))
        expo = b.op("Ceil", b.op("Sub", log2, b.const(1e-6, np.float64)))
        n_fft = b.op("Cast", b.op("Pow", b.const(2.0, np.float64), expo), to=ir.DataType.INT64)
        n_fft = o.where(b.op("Less", n_fft, need), b.op("Mul", n_fft, o.s(2)), n_fft)
        kern = b.op("Cast", b.op("Unsqueeze", kern, o.i(-1)), to=fft)
        spec_k = o.dft(kern, n_fft, axis=3, onesided=0)  # [B, H, k, N, 2]
        k_re = o.slice(spec_k, 0, 1, 4)
        k_im = o.slice(spec_k, 1, 2, 4)
        # (a + ib)(c + id) = [a, b] [c, c] + swap([a, b] [d, -d]): the swap after the sum
        k_a = b.op("Concat", k_re, k_re, axis=4)
        k_b = b.op("Concat", k_im, b.op("Neg", k_im), axis=4)
        cols_row = b.op("Concat", self.lead, o.i(1), axis=0)
        ends = b.op(
            "Concat",
            o.slice(points, 1, BIG, 2),
            b.op("Expand", b.op("Reshape", self.cols, o.i(1, 1, 1)), cols_row),
            axis=2,
        )
        idx = b.op("Range", o.s(0), self.cols, o.s(1))  # [C]
        # channels in pairs: [B, H, D1, C] -> [B, H, P, C, 2], P = ceil(D1 / 2)
        channels = o.dim(self.x, 2)
        odd = b.op("Mod", channels, o.s(2))
        pads = b.op("Concat", o.i(0, 0, 0, 0, 0, 0), b.op("Reshape", odd, o.i(1)), o.i(0), axis=0)
        z = b.op("Pad", self.x, pads)
        pairs = b.op("Div", b.op("Add", channels, odd), o.s(2))
        z = b.op(
            "Reshape",
            z,
            b.op("Concat", self.lead, b.op("Reshape", pairs, o.i(1)), o.i(2, -1), axis=0),
        )
        z = b.op("Cast", b.op("Transpose", z, perm=[0, 1, 2, 4, 3]), to=fft)
        zero = b.const(0.0, fft.numpy())

        body = LoopBody(b, "cb", carried=(fft, fft))
        loop, it = body.b, body.iteration
        acc_in, cross_in = body.carried
        lo = loop.op("Unsqueeze", loop.op("Gather", points, it, axis=2), loop.const([-1]))
        hi = loop.op("Unsqueeze", loop.op("Gather", ends, it, axis=2), loop.const([-1]))
        seg = loop.op("And", loop.op("GreaterOrEqual", idx, lo), loop.op("Less", idx, hi))
        seg = loop.op("Cast", loop.op("Unsqueeze", seg, loop.const([2, 4])), to=fft)
        zi = loop.op("Mul", z, seg)  # [B, H, P, C, 2] on segment i
        if b.opset >= 20:
            spec = loop.op("DFT", zi, n_fft, loop.const(3), onesided=0)
        else:
            spec = loop.op("DFT", zi, n_fft, axis=3, onesided=0)  # [B, H, P, N, 2]
        ka = loop.op("Unsqueeze", loop.op("Gather", k_a, it, axis=2), loop.const([2]))
        kb = loop.op("Unsqueeze", loop.op("Gather", k_b, it, axis=2), loop.const([2]))
        acc_out = loop.op("Add", acc_in, loop.op("Mul", spec, ka))
        cross_out = loop.op("Add", cross_in, loop.op("Mul", spec, kb))

        acc_shape = b.op(
            "Concat",
            self.lead,
            b.op("Reshape", pairs, o.i(1)),
            b.op("Reshape", n_fft, o.i(1)),
            o.i(2),
            axis=0,
        )
        start = b.op("Expand", zero, acc_shape)
        acc, cross = b.tape.op_multi_out(
            "Loop",
            [o.dim(points, 2), b.const(True, np.bool_), start, start],
            attributes={"body": body.graph([acc_out, cross_out])},
            num_outputs=2,
        )
        acc.name, cross.name = f"{body.tag}_acc_out", f"{body.tag}_cross_out"
        swap = b.op("Slice", cross, o.i(-1), o.i(-BIG), o.i(-1), o.i(-1))
        acc = b.op("Add", acc, swap)
        y = o.dft(acc, n_fft, axis=3, inverse=1, onesided=0)  # [B, H, P, N, 2]
        y = o.slice(y, self.r0, self.length, 3)  # [B, H, P, R, 2]
        y = b.op("Transpose", y, perm=[0, 1, 2, 4, 3])
        y = b.op(
            "Reshape",
            y,
            b.op("Concat", self.lead, o.i(-1), b.op("Reshape", self.rows, o.i(1)), axis=0),
        )
        return b.op("Cast", o.slice(y, 0, channels, 2), to=o.dtype)


def build(b: Body, sig: Signature, inputs: Sequence[ir.Value], params: Params) -> ir.Value:
    compute = ir.DataType.DOUBLE if sig.dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT
    o = _Ops(b, compute)
    query, key, value = (to_rank4(b, x, sig.rank) for x in inputs[:3])
    if sig.dtype != compute:
        query, key, value = (b.op("Cast", x, to=compute) for x in (query, key, value))
    if sig.kv_repeat:
        key, value = repeat_kv(b, key, query), repeat_kv(b, value, query)
    scale = b.float_attr("scale")
    if compute != ir.DataType.FLOAT:
        scale = b.op("Cast", scale, to=compute)
    query = b.op("Mul", query, scale)
    bases = b.int_attr("bases")
    probe = b.int_attr("probe")
    direct = params["transform"] == "direct"
    sq, skv = o.dim(query, 2), o.dim(key, 2)
    lead = b.op("Slice", b.op("Shape", query), o.i(0), o.i(2))

    # x = [V w, w], channels first: [B, H, D1, C]
    v_t = b.op("Transpose", value, perm=[0, 1, 3, 2])
    real = None
    weights = key_weights(b, sig, inputs[3], compute) if sig.keywise else None
    fitted = fitted_inputs(sig, inputs)
    if fitted:  # queries less the centre c, c.k back as a key-wise weight exp(scale c.k)
        query, tilt = _centred(b, o, query, key, fitted[0], scale)
        weights = tilt if weights is None else b.op("Mul", weights, tilt)
    if weights is not None:  # [B|1, H|1, 1, Skv]
        weights = b.op(
            "Expand", weights, b.op("Concat", lead, o.i(1), b.op("Reshape", skv, o.i(1)), axis=0)
        )
        x = b.op("Concat", b.op("Mul", v_t, weights), weights, axis=2)
        real = b.op("Greater", b.op("Squeeze", weights, o.i(2)), o.f(0.0))  # [B, H, C]
    else:
        ones = b.op(
            "Expand", o.f(1.0), b.op("Concat", lead, o.i(1), b.op("Reshape", skv, o.i(1)), axis=0)
        )
        x = b.op("Concat", v_t, ones, axis=2)

    off = b.op("Sub", skv, sq)
    start = o.clip(b.op("Neg", off), o.s(0), None)
    r0 = o.clip(off, o.s(0), None)
    window = b.int_attr("window") if sig.window else None
    lower = _Triangle(
        o, o.slice(query, start, BIG, 2), key, x, real, r0=r0, t_min=0, window=window, live=skv
    )
    parts = [lower]
    if not sig.causal:
        live = o.clip(b.op("Min", skv, b.op("Sub", sq, o.s(1))), o.s(0), None)
        upper = _Triangle(
            o,
            o.flip(query, 2),
            o.flip(key, 2),
            o.flip(x, 3),
            None if real is None else o.flip(real, 2),
            r0=o.s(0),
            t_min=1,
            window=None,
            live=live,
        )
        parts.append(upper)
    found = []
    for tri in parts:
        points = tri.change_points(bases, probe)
        found.append((tri, points, tri.profiles(points)))
    tops = [b.reduce("ReduceMax", logs, [2, 3]) for *_, logs in found]
    top = tops[0] if len(tops) == 1 else b.op("Max", *tops)  # [B, H, 1, 1]
    shift = o.where(b.op("Greater", top, o.f(FLOOR / 2)), top, o.f(0.0))

    y = None
    for tri, points, logs in found:
        part = tri.apply_direct(logs, points, shift) if direct else tri.apply(logs, points, shift)
        if tri.t_min == 1:
            part = o.flip(part, 3)
        else:
            zeros = b.op(
                "Concat", o.i(0, 0, 0), b.op("Reshape", start, o.i(1)), o.i(0, 0, 0, 0), axis=0
            )
            part = b.op("Pad", part, zeros)
        y = part if y is None else b.op("Add", y, part)
    channels = o.dim(y, 2)
    dv = b.op("Sub", channels, o.s(1))
    num = o.slice(y, 0, dv, 2)
    den = o.slice(y, dv, BIG, 2)  # [B, H, 1, Sq]
    ok = b.op("Greater", den, o.f(0.0))
    sees = _sees_a_key(b, o, sig, real, sq, skv, window)
    if sees is not None:
        ok = b.op("And", ok, sees)
    out = o.where(ok, b.op("Div", num, o.where(ok, den, o.f(1.0))), o.f(0.0))
    out = b.op("Transpose", out, perm=[0, 1, 3, 2])
    if sig.dtype != compute:
        out = b.op("Cast", out, to=sig.dtype)
    return from_rank4(b, out, sig.rank)


def _centred(
    b: Body, o: _Ops, query: ir.Value, key: ir.Value, center: ir.Value, scale: ir.Value
) -> tuple[ir.Value, ir.Value]:
    """(scale q - scale c, exp(scale c.k - its largest)) for the centre c [Hq, d] (float32)."""
    if o.dtype != ir.DataType.FLOAT:
        center = b.op("Cast", center, to=o.dtype)
    point = b.op("Mul", center, scale)
    tilt = b.op("MatMul", key, b.op("Unsqueeze", point, o.i(0, 3)))  # [B, H, Skv, 1]
    tilt = b.op("Transpose", tilt, perm=[0, 1, 3, 2])
    tilt = b.op("Exp", b.op("Sub", tilt, b.reduce("ReduceMax", tilt, [-1])))
    return b.op("Sub", query, b.op("Unsqueeze", point, o.i(0, 2))), tilt


def _sees_a_key(b: Body, o: _Ops, sig: Signature, real, sq, skv, window) -> ir.Value | None:
    """Rows with a visible weighted key, broadcastable to [B, H, 1, Sq] (None: all of them)."""
    if not sig.causal:
        if real is None:
            return None
        anyone = b.reduce("ReduceMax", b.op("Cast", real, to=o.dtype), [-1])  # [B, H, 1]
        return b.op("Unsqueeze", b.op("Greater", anyone, o.f(0.0)), o.i(-1))
    rows = b.op("Range", o.s(0), sq, o.s(1))
    end = o.clip(b.op("Add", rows, b.op("Add", b.op("Sub", skv, sq), o.s(1))), o.s(0), skv)
    zero = b.op("Mul", end, o.s(0))
    begin = zero if window is None else o.clip(b.op("Sub", end, window), o.s(0), None)
    if real is None:
        return b.op("Greater", end, begin)  # [Sq]
    count = b.op("CumSum", b.op("Cast", real, to=ir.DataType.INT64), o.s(-1))
    count = b.op("Pad", count, o.i(0, 0, 1, 0, 0, 0))  # count[p] = weighted keys before p
    seen = b.op("Greater", b.op("Gather", count, end, axis=2), b.op("Gather", count, begin, axis=2))
    return b.op("Unsqueeze", seen, o.i(2))
