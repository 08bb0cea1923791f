"""Walk up from a Softmax input to the Q.K^T MatMul, through scale, mask and cast steps.

Every step is elementwise in the scores, or a reshape that keeps the key axis (BLOOM's
[B*H, S, T] -> [B, H, S, T] view, the Flatten an opset converter puts before a Softmax):
the finder checks that, see `RESHAPES`. So the chain computes `f(raw)` with
`f(raw) = a * raw + f(0)` up to positions pushed to a very negative value: `a` is the
product of the scalar factors, and replaying the non-scale steps on a zero score gives
the additive bias (see `masks`). Which inputs of a step may carry the scores:
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from attnrewrite.match import RESHAPES, ScoreStep
from attnrewrite.patterns.graph_utils import consumers, is_op

SCORE_INPUTS: dict[str, tuple[int, ...]] = {
    "Add": (0, 1),  # scores + bias, bias + scores
    "Sub": (0,),  # scores - bias  (GPT-2 legacy: scores * b - 1e4 * (1 - b))
    "Mul": (0, 1),  # scores * c, c * scores, scores * causal01
    "Div": (0,),  # scores / sqrt(d)
    "Where": (1, 2),  # where(keep, scores, -inf), where(pad, -inf, scores)
}
PASS_THROUGH = frozenset({"Cast", "Identity"}) | RESHAPES  # fp16 models upcast around Softmax
MAX_STEPS = 16


@dataclass(frozen=True)
class ScoreChain:
    qk: ir.Node
    steps: tuple[ScoreStep, ...]  # data-flow order, Q.K^T output first; casts included
    float32_upcast: bool
    shape_readers: tuple[ir.Node, ...]  # Shape nodes reading the scores (masks built from them)
    reshaped: tuple[ir.Value, ...]  # outputs of reshape steps: must keep the key axis
    reshaped_readers: tuple[ir.Node, ...]  # Shape nodes reading reshaped scores


def walk_scores(softmax_input: ir.Value, softmax_nodes: tuple[ir.Node, ...]) -> ScoreChain | str:
    """The chain from Q.K^T to `softmax_input`, or the reason there is none."""
    path = _find_path(softmax_input, 0)
    if isinstance(path, str):
        return path
    qk, links = path
    chain = [qk, *(node for node, _ in links)]
    readers = [(node,) for node in chain[1:]] + [softmax_nodes]
    shape_readers: list[ir.Node] = []
    reshaped_readers: list[ir.Node] = []
    reshaped = False
    for node, allowed in zip(chain, readers, strict=True):
        value = node.outputs[0]
        reshaped = reshaped or node.op_type in RESHAPES
        shapes = [n for n in consumers(value) if is_op(n, "Shape") and n not in allowed]
        (reshaped_readers if reshaped else shape_readers).extend(shapes)
        others = [n for n in consumers(value) if n not in allowed and not is_op(n, "Shape")]
        if others or value.is_graph_output():
            who = f"node '{others[0].name}'" if others else "a graph output"
            return f"scores '{value.name}' have another consumer ({who})"
    steps = tuple(ScoreStep(node, idx) for node, idx in links)
    upcast = any(
        node.op_type == "Cast" and int(node.attributes["to"].value) == ir.DataType.FLOAT
        for node, _ in links
    ) and qk.outputs[0].dtype not in (None, ir.DataType.FLOAT)
    reshapes = tuple(node.outputs[0] for node, _ in links if node.op_type in RESHAPES)
    return ScoreChain(qk, steps, upcast, tuple(shape_readers), reshapes, tuple(reshaped_readers))


def _find_path(value: ir.Value, depth: int) -> tuple[ir.Node, list[tuple[ir.Node, int]]] | str:
    node = value.producer()
    if node is None:
        return f"scores '{value.name}' are a graph input, not computed by a MatMul"
    if is_op(node, "MatMul"):
        return node, []
    if depth >= MAX_STEPS:
        return "no Q.K^T MatMul within reach of the Softmax input"
    if is_op(node, *PASS_THROUGH):
        candidates: tuple[int, ...] = (0,)
    elif is_op(node, *SCORE_INPUTS):
        candidates = SCORE_INPUTS[node.op_type]
    else:
        return f"scores pass through {node.op_type} '{node.name}', which is not a scale or mask"
    # Prefer the input read only by this node: a mask or bias is usually shared.
    ordered = sorted(
        candidates, key=lambda i: len(consumers(node.inputs[i])) if node.inputs[i] else 9
    )
    reason = ""
    for index in ordered:
        source = node.inputs[index]
        if source is None:
            continue
        found = _find_path(source, depth + 1)
        if isinstance(found, str):
            reason = reason or found
            continue
        qk, links = found
        return qk, [*links, (node, index)]
    return reason
