"""Walk down from the Softmax output to the MatMul with the values.

Allowed between them: Cast (back to fp16), Dropout (identity at inference), Identity,
the dynamo guard `Where(IsNaN(p), 0, p)` for fully masked rows, and reshapes that undo
those of the scores (the finder checks the probabilities reach .V in the scores' shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from attnrewrite.evaluate import constant_of
from attnrewrite.match import RESHAPES
from attnrewrite.patterns.graph_utils import consumers, ints_attr, is_op

PASS_THROUGH = frozenset({"Cast", "Identity", "Dropout"}) | RESHAPES


@dataclass(frozen=True)
class ProbChain:
    pv: ir.Node
    nodes: tuple[ir.Node, ...]  # between Softmax and the .V MatMul
    nan_guard: bool


def walk_probs(probs: ir.Value) -> ProbChain | str:
    """The path from the Softmax output to `p @ v`, or the reason there is none."""
    current = probs
    nodes: list[ir.Node] = []
    nan_guard = False
    for _ in range(8):
        readers = consumers(current)
        guard = _nan_guard(current, readers)
        if guard is not None:
            nodes.extend(guard)
            nan_guard = True
            current = guard[-1].outputs[0]
            continue
        if current is probs and current.is_graph_output() and not readers:
            return "softmax output is a model output and feeds no MatMul: not attention"
        gradients = [n.op_type for n in readers if _is_gradient(n)]
        if gradients:
            return (
                f"a training graph: {gradients[0]} reads the attention probabilities "
                "(only inference graphs are rewritten)"
            )
        if current.is_graph_output() or len(readers) != 1:
            others = ", ".join(f"'{n.name}'" for n in readers) or "none"
            where = "a graph output" if current.is_graph_output() else f"nodes {others}"
            return f"attention probabilities '{current.name}' have another consumer ({where})"
        (reader,) = readers
        if is_op(reader, "MatMul"):
            if reader.inputs[0] is not current:
                return f"softmax output is the right operand of MatMul '{reader.name}'"
            return ProbChain(reader, tuple(nodes), nan_guard)
        if not is_op(reader, *PASS_THROUGH) or reader.inputs[0] is not current:
            return (
                f"softmax output goes to {reader.op_type} '{reader.name}', not to a MatMul "
                "with values: not attention"
            )
        if reader.op_type == "Dropout" and len(reader.outputs) > 1 and reader.outputs[1].uses():
            return f"dropout mask of '{reader.name}' is used elsewhere"
        nodes.append(reader)
        current = reader.outputs[0]
    return "no MatMul with values within reach of the Softmax output"


def _is_gradient(node: ir.Node) -> bool:
    """A training graph's gradient op: SoftmaxGrad, SoftmaxGrad_13, DropoutGrad, ..."""
    return node.op_type.split("_")[0].endswith("Grad")


def _nan_guard(value: ir.Value, readers: list[ir.Node]) -> list[ir.Node] | None:
    """[IsNaN, Where] when `value` feeds exactly `Where(IsNaN(value), 0, value)`."""
    if len(readers) != 2 or value.is_graph_output():
        return None
    isnan = next((n for n in readers if is_op(n, "IsNaN")), None)
    where = next((n for n in readers if is_op(n, "Where")), None)
    if isnan is None or where is None:
        return None
    if where.inputs[0] is not isnan.outputs[0] or where.inputs[2] is not value:
        return None
    if len(consumers(isnan.outputs[0])) != 1:
        return None
    return [isnan, where]


def merged_heads(pv: ir.Node) -> tuple[ir.Node, ir.Node] | None:
    """(Transpose, Reshape) when the context is only merged back to [B, S, H*d] as written
    for a com.microsoft op: Reshape(Transpose(p @ v, [0, 2, 1, 3]), [0, 0, -1])."""
    (transpose, *others) = consumers(pv.outputs[0]) or [None]
    if others or not is_op(transpose, "Transpose") or ints_attr(transpose, "perm") != (0, 2, 1, 3):
        return None
    (reshape, *others) = consumers(transpose.outputs[0]) or [None]
    if others or not is_op(reshape, "Reshape") or reshape.inputs[0] is not transpose.outputs[0]:
        return None
    target = constant_of(reshape.inputs[1])
    if target is None or list(np.ravel(target)) != [0, 0, -1]:
        return None
    return transpose, reshape
