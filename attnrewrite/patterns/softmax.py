"""Softmax anchors: a Softmax over the key axis, or the decomposed form some exporters inline.

Softmax(x, axis=-1)                                          -> x, p
Div(Exp(Sub(x, ReduceMax(x, -1))), ReduceSum(Exp(...), -1))   -> x, p
Div(Exp(x), ReduceSum(Exp(x), -1))                            -> x, p
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from attnrewrite.evaluate import constant_of
from attnrewrite.patterns.graph_utils import int_attr, ints_attr, is_op, producer_op, rank_of


@dataclass(frozen=True)
class SoftmaxAnchor:
    node: ir.Node  # produces the probabilities (Softmax, or Div when decomposed)
    scores: ir.Value
    probs: ir.Value
    nodes: tuple[ir.Node, ...]
    decomposed: bool


def softmax_anchor(node: ir.Node, opset: int) -> SoftmaxAnchor | str | None:
    """The anchor rooted at `node`, a reason it is a Softmax that is no attention, or None."""
    if is_op(node, "Softmax"):
        reason = _axis_problem(node, opset)
        if reason:
            return reason
        return SoftmaxAnchor(node, node.inputs[0], node.outputs[0], (node,), False)
    if is_op(node, "Div"):
        return _decomposed(node)
    return None


def _axis_problem(node: ir.Node, opset: int) -> str:
    rank = rank_of(node.inputs[0])
    axis = int_attr(node, "axis", -1 if opset >= 13 else 1)
    if axis == -1 or (rank is not None and axis == rank - 1):
        return ""
    if rank is None:
        return f"softmax axis {axis} cannot be checked against an input of unknown rank"
    return f"softmax over axis {axis} of a rank-{rank} input is not over the last (key) axis"


def _last_axis_reduce(node: ir.Node | None, x: ir.Value) -> bool:
    if node is None or node.inputs[0] is not x:
        return False
    axes = ints_attr(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        const = constant_of(node.inputs[1])
        axes = None if const is None else tuple(int(a) for a in np.ravel(const))
    rank = rank_of(x)
    keeps = int_attr(node, "keepdims", 1) == 1
    return keeps and axes is not None and len(axes) == 1 and axes[0] in (-1, (rank or 0) - 1)


def _decomposed(div: ir.Node) -> SoftmaxAnchor | None:
    exp = producer_op(div.inputs[0], "Exp")
    total = producer_op(div.inputs[1], "ReduceSum")
    if exp is None or total is None or total.inputs[0] is not exp.outputs[0]:
        return None
    if not _last_axis_reduce(total, exp.outputs[0]):
        return None
    nodes: tuple[ir.Node, ...] = (exp, total, div)
    scores = exp.inputs[0]
    shift = producer_op(scores, "Sub")
    peak = producer_op(shift.inputs[1], "ReduceMax") if shift is not None else None
    if shift is not None and peak is not None and _last_axis_reduce(peak, shift.inputs[0]):
        nodes = (peak, shift, *nodes)
        scores = shift.inputs[0]
    return SoftmaxAnchor(div, scores, div.outputs[0], nodes, True)
