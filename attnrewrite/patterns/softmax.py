"""Softmax anchors: a Softmax over the key axis, or the decomposed form some exporters inline.

Softmax(x, axis=-1)                                          -> x, p
Div(Exp(Sub(x, ReduceMax(x, -1))), ReduceSum(Exp(...), -1))   -> x, p
Div(Exp(x), ReduceSum(Exp(x), -1))                            -> x, p
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from attnrewrite.patterns.graph_utils import int_attr, is_op, rank_of
from attnrewrite.patterns.view import ONNX
from attnrewrite.rules.softmax import decomposed_softmax


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


def _decomposed(div: ir.Node) -> SoftmaxAnchor | None:
    found = decomposed_softmax(ONNX, div.outputs[0])
    if found is None:
        return None
    nodes = tuple(value.producer() for value in found.values)
    return SoftmaxAnchor(div, found.scores, div.outputs[0], nodes, True)
