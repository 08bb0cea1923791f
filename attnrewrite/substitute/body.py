"""A small builder for function bodies, and the pieces every attention body shares."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from attnrewrite.substitute.signature import Signature

DOMAIN = "attnrewrite"
DOMAIN_VERSION = 1


class Body:
    """Records nodes of a function body (onnx-ir's Tape), with constants and attribute refs."""

    def __init__(self, opset: int = 18, tape: ir.tape.Tape | None = None) -> None:
        self.tape = tape if tape is not None else ir.tape.Tape()  # or record into a graph's
        self.opset = opset  # the model's default-domain opset: the body must speak it

    def op(self, op_type: str, *inputs: ir.Value | None, **attributes: object) -> ir.Value:
        return self.tape.op(op_type, list(inputs), attributes=attributes or None)

    def const(self, array: object, dtype: np.dtype | type = np.int64) -> ir.Value:
        return self.op("Constant", value=ir.tensor(np.asarray(array, dtype=dtype)))

    def float_attr(self, name: str) -> ir.Value:
        """A float32 scalar read from the calling node's attribute `name`."""
        return self.op(
            "Constant", value_float=ir.RefAttr("value_float", name, ir.AttributeType.FLOAT)
        )

    def int_attr(self, name: str) -> ir.Value:
        return self.op("Constant", value_int=ir.RefAttr("value_int", name, ir.AttributeType.INT))

    def reduce(self, op_type: str, x: ir.Value, axes: Sequence[int], keepdims: int = 1) -> ir.Value:
        """ReduceMax/Sum/... over `axes`: an attribute before opset 18 (13 for ReduceSum)."""
        takes_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if takes_input:
            return self.op(op_type, x, self.const(list(axes)), keepdims=keepdims)
        return self.op(op_type, x, axes=list(axes), keepdims=keepdims)

    def lowest(self, dtype: ir.DataType) -> ir.Value:
        """The most negative finite value: masked scores, without inf - inf = NaN."""
        return self.const(np.finfo(dtype.numpy()).min, dtype.numpy())


class LoopBody:
    """The body graph of an ONNX Loop, recorded on its own tape: inputs (iteration, condition,
    loop-carried values); its nodes may read any value of the enclosing function body. Names
    carry the outer tape's length, so several loops in one function do not collide."""

    def __init__(self, outer: Body, tag: str, carried: Sequence[ir.DataType] = ()) -> None:
        self.b = Body(outer.opset)
        self.tag = f"{tag}{len(outer.tape.nodes)}"
        scalar = ir.Shape([])
        self.iteration = ir.Value(
            name=f"{self.tag}_iter", type=ir.TensorType(ir.DataType.INT64), shape=scalar
        )
        self.cond = ir.Value(
            name=f"{self.tag}_cond", type=ir.TensorType(ir.DataType.BOOL), shape=scalar
        )
        self.carried = [
            ir.Value(name=f"{self.tag}_in{i}", type=ir.TensorType(t)) for i, t in enumerate(carried)
        ]

    def graph(self, outputs: Sequence[ir.Value]) -> ir.Graph:
        """The body: the condition passed through, then ``outputs`` (carried, then scanned)."""
        cond = self.b.op("Identity", self.cond)
        for index, node in enumerate(self.b.tape.nodes):
            node.name = f"{self.tag}_{node.op_type}_{index}"
            for position, out in enumerate(node.outputs):
                suffix = f"_{position}" if position else ""
                out.name = f"{self.tag}_{node.op_type.lower()}_{index}{suffix}"
        return ir.Graph(
            [self.iteration, self.cond, *self.carried],
            [cond, *outputs],
            nodes=self.b.tape.nodes,
            name=f"{self.tag}_loop",
        )


def dim(b: Body, x: ir.Value, axis: int) -> ir.Value:
    """Dimension `axis` of x as an int64 scalar."""
    return b.op("Gather", b.op("Shape", x), b.const(axis))


def dims(b: Body, x: ir.Value, first: int, last: int) -> ir.Value:
    """Dimensions [first, last) of x as an int64 vector."""
    return b.op("Slice", b.op("Shape", x), b.const([first]), b.const([last]))


def vec(b: Body, scalar: ir.Value) -> ir.Value:
    """A scalar as a 1-element vector (for Concat, Slice starts/ends)."""
    return b.op("Reshape", scalar, b.const([1]))


def unsqueeze(b: Body, x: ir.Value, *axes: int) -> ir.Value:
    return b.op("Unsqueeze", x, b.const(list(axes)))


def clamp(b: Body, x: ir.Value, low: ir.Value, high: ir.Value) -> ir.Value:
    return b.op("Min", b.op("Max", x, low), high)


def swap_last_two(rank: int) -> list[int]:
    return [*range(rank - 2), rank - 1, rank - 2]


def repeat_kv(b: Body, x: ir.Value, query: ir.Value) -> ir.Value:
    """[B, Hkv, S, d] -> [B, Hq, S, d], each kv head serving Hq / Hkv query heads."""
    shape = b.op("Shape", x)
    lead = b.op("Slice", shape, b.const([0]), b.const([2]))
    tail = b.op("Slice", shape, b.const([2]), b.const([4]))
    groups = b.op(
        "Div",
        b.op("Gather", b.op("Shape", query), b.const([1])),
        b.op("Gather", shape, b.const([1])),
    )
    split = b.op("Reshape", x, b.op("Concat", lead, b.const([1]), tail, axis=0))
    expanded = b.op("Expand", split, b.op("Concat", lead, groups, tail, axis=0))
    batch = b.op("Slice", shape, b.const([0]), b.const([1]))
    return b.op("Reshape", expanded, b.op("Concat", batch, b.const([-1]), tail, axis=0))


def causal_allowed(b: Body, query: ir.Value, key: ir.Value, window: bool) -> ir.Value:
    """Boolean [Sq, Skv]: query i sees key j <= i + (Skv - Sq) (and j > that - window)."""
    q_len = b.op("Gather", b.op("Shape", query), b.const(-2))
    kv_len = b.op("Gather", b.op("Shape", key), b.const(-2))
    rows = b.op("Range", b.const(0), q_len, b.const(1))
    cols = b.op("Range", b.const(0), kv_len, b.const(1))
    last = b.op("Add", b.op("Reshape", rows, b.const([-1, 1])), b.op("Sub", kv_len, q_len))
    allowed = b.op("Not", b.op("Greater", cols, last))
    if window:
        first = b.op("Sub", last, b.int_attr("window"))
        allowed = b.op("And", allowed, b.op("Greater", cols, first))
    return allowed


def soft_cap(b: Body, scores: ir.Value, dtype: ir.DataType) -> ir.Value:
    """softcap * tanh(scores / softcap), the cap read from the node's `softcap` attribute."""
    cap = b.float_attr("softcap")
    if dtype != ir.DataType.FLOAT:
        cap = b.op("Cast", cap, to=dtype)
    return b.op("Mul", b.op("Tanh", b.op("Div", scores, cap)), cap)


def to_rank4(b: Body, x: ir.Value, rank: int) -> ir.Value:
    """Rank-3 operands ([B*H, S, d]) gain a unit batch axis; bodies compute on [B, H, S, d]."""
    if rank == 4:
        return x
    if rank == 3:
        return b.op("Unsqueeze", x, b.const([0]))
    raise ValueError(f"rank-{rank} attention operands are not supported by this method")


def from_rank4(b: Body, x: ir.Value, rank: int) -> ir.Value:
    return x if rank == 4 else b.op("Squeeze", x, b.const([0]))


def mask_as_rank4(b: Body, x: ir.Value) -> ir.Value:
    """A mask of rank <= 4 with leading unit axes prepended (a Reshape: no copy)."""
    shape = b.op("Shape", x)
    missing = b.op("Sub", b.const([4]), b.op("Shape", shape))
    ones = b.op("Slice", b.const([1, 1, 1, 1]), b.const([0]), missing)
    return b.op("Reshape", x, b.op("Concat", ones, shape, axis=0))


def mask_logits(b: Body, sig: Signature, x: ir.Value) -> tuple[ir.Value, ir.Value | None]:
    """(float32 logits with masked entries -inf, None) of an additive mask; (None, keep) of a
    boolean one. Entries at or below half the dtype's lowest count as masked (the reference's
    convention)."""
    if sig.bias == "keep":
        return None, x
    logits = b.op("Cast", x, to=ir.DataType.FLOAT)
    floor = np.float32(np.finfo(sig.dtype.numpy()).min / 2)
    hidden = b.op("LessOrEqual", logits, b.const(floor, np.float32))
    return b.op("Where", hidden, b.const(-np.inf, np.float32), logits), None


def key_weights(b: Body, sig: Signature, mask: ir.Value, dtype: ir.DataType) -> ir.Value:
    """exp(key bias) per key, broadcastable to [B, H, 1, Skv], in `dtype` (masked keys: 0).

    Only for key-wise masks (sig.keywise). Their last query row sees every key a causal mask
    allows, so it holds the padding of all of them (also where exporters unmask the rows of
    padded queries); with a sliding window the last row hides old keys, so each key is read
    on its own diagonal row instead (the query at the key's position sees it). Matches the
    torch references' ``key_weights`` (shifted by the largest unmasked logit).
    """
    row = _own_rows(b, mask) if sig.window else last_row(b, mask)
    if sig.bias == "keep":
        weights = b.op("Cast", row, to=dtype)
    else:
        # compared in `dtype`: the mask may arrive in another type than q (fp16 scores
        # upcast to float32 before the mask is added)
        logits = b.op("Cast", row, to=dtype)
        floor = np.finfo(sig.dtype.numpy()).min / 2
        hidden = b.op("LessOrEqual", logits, b.const(floor, dtype.numpy()))
        zero = b.const(0.0, dtype.numpy())
        top = b.reduce("ReduceMax", b.op("Where", hidden, b.lowest(dtype), logits), [-1])
        top = b.op("Where", b.op("LessOrEqual", top, b.lowest(dtype)), zero, top)
        weights = b.op("Where", hidden, zero, b.op("Exp", b.op("Sub", logits, top)))
    return to_rank4(b, weights, sig.rank)  # broadcasts right-aligned, as the mask did


def last_row(b: Body, mask: ir.Value) -> ir.Value:
    """The mask's last query row, [..., 1, Skv]: all of a key-wise mask."""
    return b.op("Slice", mask, b.const([-1]), b.const([2**62]), b.const([-2]))


def _own_rows(b: Body, mask: ir.Value) -> ir.Value:
    """[..., 1, Skv]: mask[..., r(j), j] with r(j) the row of the query at key position j
    (bottom-right aligned, clamped to the mask's rows: a [.., 1, Skv] mask is its own row)."""
    shape = b.op("Shape", mask)
    rows = b.op("Slice", shape, b.const([-2]), b.const([-1]))
    keys = b.op("Slice", shape, b.const([-1]), b.const([2**62]))
    flat = b.op("Reshape", mask, b.op("Concat", b.const([-1]), rows, keys, axis=0))
    cols = b.op("Range", b.const(0), b.op("Squeeze", keys, b.const([0])), b.const(1))
    first = b.op("Sub", keys, rows)  # the key position of the mask's first row
    own = b.op(
        "Min", b.op("Max", b.op("Sub", cols, first), b.const(0)), b.op("Sub", rows, b.const(1))
    )
    lead = b.op("Slice", b.op("Shape", flat), b.const([0]), b.const([1]))
    index = b.op(
        "Expand",
        b.op("Reshape", own, b.const([1, 1, -1])),
        b.op("Concat", lead, b.const([1]), keys, axis=0),
    )
    picked = b.op("GatherElements", flat, index, axis=1)  # [L, 1, Skv]
    back = b.op(
        "Concat", b.op("Slice", shape, b.const([0]), b.const([-2])), b.const([1]), keys, axis=0
    )
    return b.op("Reshape", picked, back)


Params = Mapping[str, int | float | str]
BodyBuilder = Callable[[Body, Signature, Sequence[ir.Value], Params], ir.Value]


def fitted_inputs(signature: Signature, inputs: Sequence[ir.Value]) -> Sequence[ir.Value]:
    """A calibrated overload's fitted arrays: its inputs after query, key, value and the mask
    (empty for the plain overload), as `build_function` lays them out."""
    return inputs[4 if signature.bias != "none" else 3 :]


def build_function(
    op_type: str,
    signature: Signature,
    opset: int,
    attributes: Sequence[ir.Attr],
    build: BodyBuilder,
    params: Params,
    overload: str,
    fitted: Sequence[str] = (),
) -> ir.Function:
    """A model-local function `attnrewrite::op_type` for one signature (its overload);
    `fitted` names the calibrated variant's extra inputs, after the mask."""
    names = ["query", "key", "value"] + (["mask"] if signature.bias != "none" else [])
    names += fitted
    inputs = [ir.Value(name=name) for name in names]
    b = Body(opset)
    output = build(b, signature, inputs, params)
    output.name = "output"
    for index, node in enumerate(b.tape.nodes):
        node.name = f"{node.op_type}_{index}"
        for position, out in enumerate(node.outputs):
            if out.name is None:
                suffix = f"_{position}" if position else ""
                out.name = f"{node.op_type.lower()}_{index}{suffix}"
    graph = ir.Graph(inputs, [output], nodes=b.tape.nodes, opset_imports={"": opset}, name=op_type)
    function = ir.Function(DOMAIN, op_type, overload, graph=graph, attributes=list(attributes))
    function.doc_string = overload  # the variant, also when the overload is ""
    return function
