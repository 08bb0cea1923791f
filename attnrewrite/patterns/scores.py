"""The ONNX finder's score chain: the shared walk (rules.scores) from a Softmax input up to
Q.K^T, and what else reads the scores on the way (refused, or Shape readers to re-route)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from attnrewrite.patterns.graph_utils import consumers, is_op
from attnrewrite.patterns.view import ONNX
from attnrewrite.rules.scores import RESHAPES, score_path


@dataclass(frozen=True)
class ScoreStep:
    """One elementwise node between Q.K^T and Softmax, and the index of the input carrying
    the scores (the match keeps it as a rules.replay Step, by the node's name)."""

    node: ir.Node
    score_input: int
    cap: float | None = None  # a logit soft-cap's Tanh or its product by the cap


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
    path = score_path(ONNX, softmax_input)
    if isinstance(path, str):
        return path
    qk = path[0].producer()
    links = [(link.value.producer(), link.score_input, link.cap) for link in path[1]]
    chain = [qk, *(node for node, _, _ in links)]
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
    steps = tuple(ScoreStep(node, idx, cap) for node, idx, cap in links)
    upcast = any(
        node.op_type == "Cast" and int(node.attributes["to"].value) == ir.DataType.FLOAT
        for node, _, _ in links
    ) and qk.outputs[0].dtype not in (None, ir.DataType.FLOAT)
    reshapes = tuple(node.outputs[0] for node, _, _ in links if node.op_type in RESHAPES)
    return ScoreChain(qk, steps, upcast, tuple(shape_readers), reshapes, tuple(reshaped_readers))
