"""The PolySketch body: `attnrewrite.methods.polysketch.attention` as standard ONNX ops.

Every variant (mixed, sketch, exact_poly) and fit (softmax_fit, none) of the reference. The
sketch matrices and the fit's sample fractions are the reference's seeded draws (from
attnrewrite.methods.polysketch_draws, without torch), baked as constants: they depend on the
head dim, degree, sketch size, seed, variant and fit (the structural parameters). `ref.name`
below names the torch reference's function. The block size is read from the node's ``block``
attribute: every length is padded to whole blocks at run time, and the prefix states across
blocks are an exclusive CumSum. The calibrated overload reads the fitted query gains, key gains
and key shifts as its last three inputs ([Hq, d] float32) and maps q, k after beta's fit, as the
reference does.

softmax_fit's grid search runs in float64 on its small sample (32 x 64 scores per head), as
the float64 reference does, so the ArgMin picks the reference's beta; the rest computes in
float32 (float64 for float64 inputs). Blocks with a sliding window or a bias that varies per
query stay exact: the prefix state keeps every earlier key, and has no per-query term. So do
blocks whose head dim is not static (the baked matrices are sized by it): the finder infers it
for rank-4 operands only, so rank-3 blocks stay exact for now, though the body computes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from attnrewrite.methods.polysketch_draws import (
    FIT_GRID,
    FIT_ROWS,
    FRACTION_BITS,
    MAX_EXACT_FEATURES,
    Sketch,
    fit_fractions,
    sketch_tree,
)
from attnrewrite.substitute.body import (
    Body,
    Params,
    causal_allowed,
    dim,
    fitted_inputs,
    from_rank4,
    key_weights,
    repeat_kv,
    swap_last_two,
    to_rank4,
    vec,
)
from attnrewrite.substitute.signature import Signature

F64 = ir.DataType.DOUBLE
BIG = 2**62  # a Slice end past any length


def sig_compute(sig: Signature) -> ir.DataType:
    """float64 inputs compute in float64, all others in float32 (as the reference)."""
    return F64 if sig.dtype == F64 else ir.DataType.FLOAT


def _ipow(b: Body, x: ir.Value, power: int) -> ir.Value:
    """x ** power for an integer power >= 1, by squaring."""
    out, base = None, x
    while power:
        if power & 1:
            out = base if out is None else b.op("Mul", out, base)
        power >>= 1
        if power:
            base = b.op("Mul", base, base)
    return out


def _last_column(b: Body, x: ir.Value) -> ir.Value:
    """x[..., :1] (shape donor for the appended columns)."""
    return b.op("Slice", x, b.const([0]), b.const([1]), b.const([-1]))


def _append_column(b: Body, x: ir.Value, column: ir.Value) -> ir.Value:
    """Concat x with `column` ([.., 1], broadcastable) expanded to x's leading shape."""
    shape = b.op("Shape", _last_column(b, x))
    return b.op("Concat", x, b.op("Expand", column, shape), axis=-1)


def _self_tensor(b: Body, h: ir.Value, rank: int = 4) -> ir.Value:
    """(h[..., :, None] * h[..., None, :]).flatten(-2): <f(x), f(y)> = <h(x), h(y)>^2."""
    outer = b.op("Mul", b.op("Unsqueeze", h, b.const([-1])), b.op("Unsqueeze", h, b.const([-2])))
    return b.op("Reshape", outer, b.const([0] * (rank - 1) + [-1]))


def _tensor_power(b: Body, a: ir.Value, power: int) -> ir.Value:
    """`ref.tensor_power`: a^(x)power flattened."""
    out = a
    for _ in range(power - 1):
        outer = b.op(
            "Mul", b.op("Unsqueeze", out, b.const([-1])), b.op("Unsqueeze", a, b.const([-2]))
        )
        out = b.op("Reshape", outer, b.const([0, 0, 0, -1]))
    return out


def _sketch(b: Body, a: ir.Value, node: Sketch, dtype: ir.DataType) -> ir.Value:
    """The reference's `sketch_half` with the tree's baked matrices."""
    if node.left is None:
        return a
    left = b.op("MatMul", _sketch(b, a, node.left, dtype), b.const(node.g1, dtype.numpy()))
    right = b.op("MatMul", _sketch(b, a, node.right, dtype), b.const(node.g2, dtype.numpy()))
    return b.op("Div", b.op("Mul", left, right), b.const(math.sqrt(node.width), dtype.numpy()))


def _layer_norm(b: Body, x: ir.Value, dtype: ir.DataType) -> ir.Value:
    """F.layer_norm without affine (eps 1e-5), in ops every opset has."""
    centred = b.op("Sub", x, b.reduce("ReduceMean", x, [-1]))
    var = b.reduce("ReduceMean", b.op("Mul", centred, centred), [-1])
    return b.op("Div", centred, b.op("Sqrt", b.op("Add", var, b.const(1e-5, dtype.numpy()))))


def fit_shift(
    b: Body,
    sig: Signature,
    query: ir.Value,
    key: ir.Value,
    weights: ir.Value | None,
    scale: ir.Value,
    *,
    degree: int,
    seed: int,
) -> ir.Value:
    """`ref.fit_shift` in float64: beta [B, H, 1] (grid search over the fixed sample)."""
    row_u, key_u = fit_fractions(seed)
    unit = b.const(1 << FRACTION_BITS)
    q_len, kv_len = dim(b, query, 2), dim(b, key, 2)
    off = b.op("Sub", kv_len, q_len)
    one = b.const(1)
    if sig.causal:
        first = b.op("Max", b.const(0), b.op("Neg", off))
        rows = b.op("Max", b.op("Sub", q_len, first), one)  # >= 1 whenever Skv >= 1
        qi = b.op("Add", first, b.op("Div", b.op("Mul", b.const(row_u), rows), unit))
        span = b.op("Min", b.op("Add", b.op("Add", qi, off), one), kv_len)
    else:
        qi = b.op("Div", b.op("Mul", b.const(row_u), q_len), unit)
        span = b.op("Expand", kv_len, b.const([FIT_ROWS]))
    kj = b.op("Div", b.op("Mul", b.const(key_u), b.op("Unsqueeze", span, b.const([1]))), unit)
    qs = b.op("Unsqueeze", b.op("Cast", b.op("Gather", query, qi, axis=2), to=F64), b.const([3]))
    ks = b.op("Cast", b.op("Gather", key, kj, axis=2), to=F64)  # [B, H, R, M, d]
    dot = b.op("MatMul", qs, b.op("Transpose", ks, perm=[0, 1, 2, 4, 3]))
    x = b.op("Mul", b.op("Squeeze", dot, b.const([3])), b.op("Cast", scale, to=F64))  # [B,H,R,M]
    neg_inf, pos_inf = b.const(-np.inf, np.float64), b.const(np.inf, np.float64)
    hit = None
    if weights is not None:  # [b, h, 1, Skv] -> [b, h, R, M]
        picked = b.op("Squeeze", b.op("Gather", weights, kj, axis=3), b.const([2]))
        hit = b.op("Greater", picked, b.const(0.0, sig_compute(sig).numpy()))
    top = b.reduce("ReduceMax", x if hit is None else b.op("Where", hit, x, neg_inf), [-1])
    zero = b.const(0.0, np.float64)
    if hit is not None:  # rows with no visible sampled key: top = -inf
        row_ok = b.op("Greater", top, neg_inf)
        top = b.op("Where", row_ok, top, zero)
        low = b.op("Neg", b.reduce("ReduceMin", b.op("Where", row_ok, top, pos_inf), [-2]))
        xmin = b.reduce("ReduceMin", b.op("Where", hit, x, pos_inf), [-1, -2])
    else:
        low = b.op("Neg", b.reduce("ReduceMin", top, [-2]))
        xmin = b.reduce("ReduceMin", x, [-1, -2])
    steps = np.arange(1, FIT_GRID + 1, dtype=np.float64) / FIT_GRID
    width = b.op(
        "Max",
        b.op("Sub", b.op("Sub", b.const(float(degree), np.float64), low), xmin),
        b.const(1.0, np.float64),
    )
    grid = b.op(
        "Add",
        b.op("Unsqueeze", low, b.const([-1])),
        b.op(
            "Mul",
            b.op("Unsqueeze", width, b.const([-1])),
            b.const((steps**2).reshape(-1, 1, 1), np.float64),
        ),
    )  # [B, H, G, 1, 1]
    x5 = b.op("Unsqueeze", x, b.const([2]))
    top5 = b.op("Unsqueeze", top, b.const([2]))
    ratio = b.op("Div", b.op("Add", x5, grid), b.op("Add", top5, grid))
    diff = b.op("Sub", _ipow(b, ratio, degree), b.op("Exp", b.op("Sub", x5, top5)))
    err = b.op("Mul", diff, diff)
    if hit is not None:
        err = b.op("Where", b.op("Unsqueeze", hit, b.const([2])), err, zero)
    err = b.reduce("ReduceSum", err, [-1, -2], keepdims=0)  # [B, H, G]
    best = b.op("ArgMin", err, axis=-1, keepdims=1, select_last_index=1)
    grid3 = b.op("Squeeze", grid, b.const([3, 4]))
    beta = b.op("GatherElements", grid3, best, axis=2)  # [B, H, 1]
    low3 = b.op("Squeeze", low, b.const([3]))
    return b.op("Where", b.op("Greater", low3, neg_inf), beta, b.const(float(degree), np.float64))


class _Blocks:
    """Run-time block geometry of `ref._scan` (bottom-right aligned queries)."""

    def __init__(self, b: Body, query: ir.Value, key: ir.Value, dtype: ir.DataType) -> None:
        self.b = b
        self.size = b.int_attr("block")
        q_len, kv_len = dim(b, query, 2), dim(b, key, 2)
        self.q_len = q_len
        off = b.op("Sub", kv_len, q_len)
        self.lead = b.op("Mod", off, self.size)
        last = b.op("Sub", self.size, b.const(1))
        self.nq = b.op("Div", b.op("Add", b.op("Add", self.lead, q_len), last), self.size)
        self.nk = b.op("Div", b.op("Add", kv_len, last), self.size)
        base = b.op("Div", b.op("Sub", off, self.lead), self.size)  # an exact multiple
        kblk = b.op("Add", b.op("Range", b.const(0), self.nq, b.const(1)), base)
        valid = b.op(
            "And",
            b.op("GreaterOrEqual", kblk, b.const(0)),
            b.op("Less", kblk, self.nk),
        )
        self.valid = b.op("Reshape", b.op("Cast", valid, to=dtype), b.const([-1, 1, 1]))
        self.kidx = b.op("Max", b.op("Min", kblk, b.op("Sub", self.nk, b.const(1))), b.const(0))

    def split(self, x: ir.Value, lead: ir.Value | None, count: ir.Value) -> ir.Value:
        """`ref._blocks`: [B, H, S, F] padded (lead rows in front) to [B, H, count, size, F]."""
        b = self.b
        zero = b.const(0)
        lead = zero if lead is None else lead
        back = b.op("Sub", b.op("Sub", b.op("Mul", count, self.size), lead), dim(b, x, 2))
        pads = b.op(
            "Concat",
            *[vec(b, v) for v in (zero, zero, lead, zero)],
            *[vec(b, v) for v in (zero, zero, back, zero)],
            axis=0,
        )
        padded = b.op("Pad", x, pads)
        shape = b.op(
            "Concat", b.const([0, 0]), vec(b, count), vec(b, self.size), b.const([-1]), axis=0
        )
        return b.op("Reshape", padded, shape)

    def pick(self, blocks: ir.Value) -> ir.Value:
        """blocks[:, :, kidx]: each query block's key block."""
        return self.b.op("Gather", blocks, self.kidx, axis=2)

    def tril(self, dtype: ir.DataType) -> ir.Value:
        b = self.b
        pos = b.op("Range", b.const(0), self.size, b.const(1))
        upper = b.op("Greater", pos, b.op("Unsqueeze", pos, b.const([1])))
        return b.op("Cast", b.op("Not", upper), to=dtype)

    def merge(self, y: ir.Value, x: ir.Value) -> ir.Value:
        """[B, H, nq, size, F] back to [B, H, Sq, F] (the lead rows dropped)."""
        b = self.b
        width = b.op("Slice", b.op("Shape", x), b.const([3]), b.const([4]))
        flat = b.op("Reshape", y, b.op("Concat", b.const([0, 0, -1]), width, axis=0))
        end = b.op("Add", self.lead, self.q_len)
        return b.op("Slice", flat, vec(b, self.lead), vec(b, end), b.const([2]))


def _scan(
    b: Body,
    hq: ir.Value,
    hk: ir.Value,
    lq: ir.Value,
    lk: ir.Value,
    power: int,
    x: ir.Value,
    *,
    variant: str,
    causal: bool,
    dtype: ir.DataType,
) -> ir.Value:
    """`ref._scan`: sum_j kappa(q_i, k_j) x_j, far blocks by features, own block by lq.lk."""
    swap = swap_last_two(4)
    if not causal and variant != "mixed":
        fk = _self_tensor(b, hk)
        state = b.op("MatMul", b.op("Transpose", x, perm=swap), fk)  # [B, H, F, r^2]
        return b.op("MatMul", _self_tensor(b, hq), b.op("Transpose", state, perm=swap))
    # Blocks are cut from the narrow h (padding the r^2-wide features costs more than the
    # scan), and the states kept as [F, r^2] so that no wide tensor is transposed.
    geo = _Blocks(b, hq, hk, dtype)
    swap5 = swap_last_two(5)
    xb = geo.split(x, None, geo.nk)
    fkb = _self_tensor(b, geo.split(hk, None, geo.nk), rank=5)
    states = b.op("MatMul", b.op("Transpose", xb, perm=swap5), fkb)  # [B, H, nk, F, r^2]
    lkb = geo.pick(geo.split(lk, None, geo.nk))
    local = b.op("MatMul", geo.split(lq, geo.lead, geo.nq), b.op("Transpose", lkb, perm=swap5))
    local = b.op("Mul", _ipow(b, local, power), geo.valid)
    fqb = _self_tensor(b, geo.split(hq, geo.lead, geo.nq), rank=5)
    if causal:
        prefix = b.op("CumSum", states, b.const(2), exclusive=1)
        seen = b.op("Mul", geo.pick(prefix), geo.valid)
        local = b.op("Mul", local, geo.tril(dtype))
    else:
        total = b.reduce("ReduceSum", states, [2])
        seen = b.op("Sub", total, b.op("Mul", geo.pick(states), geo.valid))
    far = b.op("MatMul", fqb, b.op("Transpose", seen, perm=swap5))
    out = b.op("Add", far, b.op("MatMul", local, geo.pick(xb)))
    return geo.merge(out, x)


def _fitted_map(
    b: Body, query: ir.Value, key: ir.Value, fitted: Sequence[ir.Value], dtype: ir.DataType
) -> tuple[ir.Value, ir.Value]:
    """`ref.fitted_map`: q o (1 + g_q), k o (1 + g_k) + c, each [Hq, d] float32 as [1, Hq, 1, d]."""
    gain_q, gain_k, shift = (
        b.op("Unsqueeze", b.op("Cast", x, to=dtype), b.const([0, 2])) for x in fitted
    )
    one = b.const(1.0, dtype.numpy())
    query = b.op("Mul", query, b.op("Add", gain_q, one))
    key = b.op("Add", b.op("Mul", key, b.op("Add", gain_k, one)), shift)
    return query, key


def build(b: Body, sig: Signature, inputs: Sequence[ir.Value], params: Params) -> ir.Value:
    """`ref.attention` on the node's q, k, v [, key-wise mask]."""
    degree, sketch_size = int(params["degree"]), int(params["sketch_size"])
    variant, fit, seed = str(params["variant"]), str(params["fit"]), int(params["seed"])
    ct = sig_compute(sig)
    query, key, value = (to_rank4(b, x, sig.rank) for x in inputs[:3])
    if sig.kv_repeat:
        key, value = repeat_kv(b, key, query), repeat_kv(b, value, query)
    if sig.dtype != ct:
        query, key, value = (b.op("Cast", x, to=ct) for x in (query, key, value))
    weights = None
    if sig.bias != "none":
        weights = key_weights(b, sig, inputs[3], ct)  # [b, h, 1, Skv]
    if weights is None:
        x = _append_column(b, value, b.const([1.0], ct.numpy()))
    else:
        column = b.op("Transpose", weights, perm=swap_last_two(4))  # [b, h, Skv, 1]
        x = _append_column(b, b.op("Mul", value, column), column)
    fitted = fitted_inputs(sig, inputs)
    if fit == "softmax_fit":
        scale = b.float_attr("scale")
        beta = fit_shift(b, sig, query, key, weights, scale, degree=degree, seed=seed)
        beta = b.op("Unsqueeze", b.op("Cast", beta, to=ct), b.const([-1]))  # [B, H, 1, 1]
    if fitted:
        query, key = _fitted_map(b, query, key, fitted, ct)
    if fit == "softmax_fit":
        scale = b.op("Cast", scale, to=ct)
        root = b.op("Sqrt", b.op("Abs", scale))
        root_b = b.op("Sqrt", b.op("Abs", beta))
        aq = _append_column(
            b,
            b.op("Mul", query, b.op("Mul", b.op("Sign", scale), root)),
            b.op("Mul", root_b, b.op("Sign", beta)),
        )
        ak = _append_column(b, b.op("Mul", key, root), root_b)
        width = sig.head_dim + 1
    else:
        aq, ak = _layer_norm(b, query, ct), _layer_norm(b, key, ct)
        width = sig.head_dim
    half = degree // 2
    swap = swap_last_two(4)
    if variant == "exact_poly" and width**degree > MAX_EXACT_FEATURES:
        kern = _ipow(b, b.op("MatMul", aq, b.op("Transpose", ak, perm=swap)), degree)
        if sig.causal:
            allowed = causal_allowed(b, aq, ak, False)
            kern = b.op("Where", allowed, kern, b.const(0.0, ct.numpy()))
        y = b.op("MatMul", kern, x)
    else:
        if variant == "exact_poly":
            hq, hk = _tensor_power(b, aq, half), _tensor_power(b, ak, half)
        else:
            tree = sketch_tree(width, half, sketch_size, seed)
            hq, hk = _sketch(b, aq, tree, ct), _sketch(b, ak, tree, ct)
        lq, lk, power = (hq, hk, 2) if variant == "sketch" else (aq, ak, degree)
        y = _scan(b, hq, hk, lq, lk, power, x, variant=variant, causal=sig.causal, dtype=ct)
    den = b.op("Slice", y, b.const([-1]), b.const([BIG]), b.const([-1]))
    if fit == "none":
        den = b.op("Add", den, b.const(1.0, ct.numpy()))
    num = b.op("Slice", y, b.const([0]), b.const([-1]), b.const([-1]))
    den = b.op(
        "Where", b.op("Greater", den, b.const(0.0, ct.numpy())), den, b.const(1.0, ct.numpy())
    )
    out = b.op("Div", num, den)
    if sig.dtype != ct:
        out = b.op("Cast", out, to=sig.dtype)
    return from_rank4(b, out, sig.rank)
