"""Walk up from a softmax input to the Q.K^T MatMul, through scale, mask and cast steps.

Every step is elementwise in the scores, or a reshape that keeps the key axis (BLOOM's
[B*H, S, T] -> [B, H, S, T] view, the Flatten an opset converter puts before a Softmax):
the ONNX finder checks that. So the chain computes `f(raw)` with `f(raw) = a * raw + f(0)`
up to positions pushed to a very negative value: `a` is the product of the scalar factors,
and replaying the other steps on a zero score gives the additive bias (see
patterns.masks). Which inputs of a step may carry the scores:
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attnrewrite.rules.operands import Factor
from attnrewrite.rules.view import GraphView, is_scalar

SCORE_INPUTS: dict[str, tuple[int, ...]] = {
    "Add": (0, 1),  # scores + bias, bias + scores
    "Sub": (0,),  # scores - bias  (GPT-2 legacy: scores * b - 1e4 * (1 - b))
    "Mul": (0, 1),  # scores * c, c * scores, scores * causal01
    "Div": (0,),  # scores / sqrt(d)
    "Where": (1, 2),  # where(keep, scores, -inf), where(pad, -inf, scores) (masked_fill)
}
PASS_THROUGH = frozenset({"Cast", "Identity", "Reshape", "Flatten"})  # input 0 is the scores
RESHAPES = frozenset({"Reshape", "Flatten"})  # steps that regroup whole key rows
MAX_STEPS = 16


@dataclass(frozen=True)
class Link:
    """One step between Q.K^T and the softmax: the value it computes, and which of its
    inputs carries the scores."""

    value: object
    score_input: int


def score_path(view: GraphView, value: object) -> tuple[object, tuple[Link, ...]] | str:
    """Q.K^T (the MatMul's output) and the steps from it to `value` in data-flow order, or
    the reason there is none. Where two inputs could carry the scores, the one read only
    by this step is tried first: a mask or bias is usually shared."""
    found = _path(view, value, 0)
    return found if isinstance(found, str) else (found[0], tuple(found[1]))


def _path(view: GraphView, value: object, depth: int) -> tuple[object, list[Link]] | str:
    label = view.label(value)
    if label is None:
        return f"scores '{view.name(value)}' are a graph input, not computed by a MatMul"
    op = view.op(value)
    if op == "MatMul":
        return value, []
    if depth >= MAX_STEPS:
        return "no Q.K^T MatMul within reach of the Softmax input"
    if op in PASS_THROUGH:
        candidates: tuple[int, ...] = (0,)
    elif op in SCORE_INPUTS:
        candidates = SCORE_INPUTS[op]
    else:
        return f"scores pass through {label}, which is not a scale or mask"
    inputs = view.inputs(value)
    ordered = sorted(
        (i for i in candidates if i < len(inputs)),
        key=lambda i: _readers(view, inputs[i]),
    )
    reason = ""
    for index in ordered:
        source = inputs[index]
        if source is None:
            continue
        found = _path(view, source, depth + 1)
        if isinstance(found, str):
            reason = reason or found
            continue
        qk, links = found
        return qk, [*links, Link(value, index)]
    return reason


def split_steps(view: GraphView, links: Sequence[Link]) -> tuple[list[Factor], int]:
    """The scalar factors among the steps (their product multiplies the raw scores), and where
    the bias steps start: at the first step that reads a mask or bias. Replayed on a zero
    score, the steps from there give the bias (rules.replay); the factors before it scale
    only the raw scores."""
    factors: list[Factor] = []
    first = len(links)
    for i, link in enumerate(links):
        op = view.op(link.value)
        side = view.inputs(link.value)[1 - link.score_input] if op in ("Mul", "Div") else None
        if side is not None and is_scalar(view, side):
            factors.append(Factor(side, op == "Div", link.value))
        elif op not in PASS_THROUGH:
            first = min(first, i)
    return factors, first


def _readers(view: GraphView, value: object) -> int:
    """How many nodes read `value`; 9 (tried last) for an omitted input or a number."""
    if value is None or (view.label(value) is None and view.shape(value) is None):
        return 9
    return len(view.consumers(value))
