"""A small builder for function bodies, and the pieces every attention body shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from attnrewrite.substitute.signature import Signature

DOMAIN = "attnrewrite"
DOMAIN_VERSION = 1


class Body:
    """Records nodes of a function body (onnx-ir's Tape), with constants and attribute refs."""

    def __init__(self) -> None:
        self.tape = ir.tape.Tape()

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

    def lowest(self, dtype: ir.DataType) -> ir.Value:
        """The most negative finite value: masked scores, without inf - inf = NaN."""
        return self.const(np.finfo(dtype.numpy()).min, dtype.numpy())


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


BodyBuilder = Callable[[Body, Signature, Sequence[ir.Value]], ir.Value]


def build_function(
    op_type: str,
    signature: Signature,
    opset: int,
    attributes: Sequence[ir.Attr],
    build: BodyBuilder,
) -> ir.Function:
    """A model-local function `attnrewrite::op_type` for one signature (its overload)."""
    names = ["query", "key", "value"] + (["mask"] if signature.bias != "none" else [])
    inputs = [ir.Value(name=name) for name in names]
    b = Body()
    output = build(b, signature, inputs)
    output.name = "output"
    for index, node in enumerate(b.tape.nodes):
        node.name = f"{node.op_type}_{index}"
        for out in node.outputs:
            if out.name is None:
                out.name = f"{node.op_type.lower()}_{index}"
    graph = ir.Graph(inputs, [output], nodes=b.tape.nodes, opset_imports={"": opset}, name=op_type)
    function = ir.Function(
        DOMAIN, op_type, signature.overload, graph=graph, attributes=list(attributes)
    )
    function.doc_string = signature.overload  # the variant, also when the overload is ""
    return function
