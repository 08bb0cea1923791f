"""Walk up from a softmax input to the Q.K^T MatMul, through scale, mask and cast steps.

Every step is elementwise in the scores, or a reshape that keeps the key axis (BLOOM's
[B*H, S, T] -> [B, H, S, T] view, the Flatten an opset converter puts before a Softmax):
the ONNX finder checks that. So the chain computes `f(raw)` with `f(raw) = a * raw + f(0)`
up to positions pushed to a very negative value: `a` is the product of the scalar factors,
and replaying the other steps on a zero score gives the additive bias (see
patterns.masks). A logit soft-cap (rules.softcap) is the one step that is not: the chain then
computes f(c * tanh(a * raw / c)), scale factors before the cap, mask steps after it.
Which inputs of a step may carry the scores:
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attnrewrite.rules.operands import Factor
from attnrewrite.rules.softcap import SOFTCAP
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
NOT_COMPUTED = ", not computed by a MatMul"  # the least telling reason: a side input's walk


@dataclass(frozen=True)
class Link:
    """One step between Q.K^T and the softmax: the value it computes, and which of its
    inputs carries the scores."""

    value: object
    score_input: int
    cap: float | None = None  # a logit soft-cap's Tanh or its product by the cap


@dataclass(frozen=True)
class Split:
    """The steps sorted out: the scalar factors whose product multiplies the raw scores (a
    soft-cap's own c among them), the logit soft-cap, and where the bias steps start."""

    factors: tuple[Factor, ...]
    softcap: float | None
    first: int


def score_path(view: GraphView, value: object) -> tuple[object, tuple[Link, ...]] | str:
    """Q.K^T (the MatMul's output) and the steps from it to `value` in data-flow order, or
    the reason there is none. Where two inputs could carry the scores, the one read only
    by this step is tried first: a mask or bias is usually shared."""
    found = _path(view, value, 0)
    return found if isinstance(found, str) else (found[0], tuple(found[1]))


def _path(view: GraphView, value: object, depth: int) -> tuple[object, list[Link]] | str:
    label = view.label(value)
    if label is None:
        return f"scores '{view.name(value)}' are a graph input{NOT_COMPUTED}"
    op = view.op(value)
    if op == "MatMul":
        return value, []
    if depth >= MAX_STEPS:
        return "no Q.K^T MatMul within reach of the Softmax input"
    capped = SOFTCAP.apply(view, value)
    if capped is not None:
        found = _path(view, capped.scores, depth + 1)
        if isinstance(found, str):
            return found
        qk, links = found
        cap_links = [Link(capped.tanh, 0, capped.cap), Link(value, capped.score_input, capped.cap)]
        return qk, [*links, *cap_links]
    if op == "Tanh":
        return (
            f"scores pass through {label}, which is not a logit soft-cap c * tanh(s / c) "
            "(no product by a positive constant scalar c)"
        )
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
            reason = found if not reason or reason.endswith(NOT_COMPUTED) else reason
            continue
        qk, links = found
        return qk, [*links, Link(value, index)]
    return reason


def split_steps(view: GraphView, links: Sequence[Link]) -> Split | str:
    """The scalar factors among the steps (their product multiplies the raw scores), the
    logit soft-cap, and where the bias steps start: at the first step that reads a mask or
    bias. Replayed on a zero score, the steps from there give the bias (rules.replay); the
    factors before it scale only the raw scores. A cap must come before every mask step and
    after every factor but its own c (the reason otherwise)."""
    factors: list[Factor] = []
    first = len(links)
    softcap = None
    for i, link in enumerate(links):
        op = view.op(link.value)
        side = view.inputs(link.value)[1 - link.score_input] if op in ("Mul", "Div") else None
        if link.cap is not None and op == "Tanh":
            if first < i:
                return f"a mask is added to the scores before the logit soft-cap {link.cap:g}"
            softcap = link.cap
        elif side is not None and is_scalar(view, side):
            if softcap is not None and link.cap is None:
                return f"the scores are scaled again after the logit soft-cap {softcap:g}"
            factors.append(Factor(side, op == "Div", link.value))
        elif op not in PASS_THROUGH:
            first = min(first, i)
    return Split(tuple(factors), softcap, first)


def _readers(view: GraphView, value: object) -> int:
    """How many nodes read `value`; 9 (tried last) for an omitted input or a number."""
    if value is None or (view.label(value) is None and view.shape(value) is None):
        return 9
    return len(view.consumers(value))
