"""A softmax an exporter inlined, as rules:

Div(Exp(x), ReduceSum(Exp(x), axes=[-1], keepdims=1))   -> x        (`decomposed_softmax`)
Sub(x, ReduceMax(x, axes=[-1], keepdims=1))             -> x        (its max shift, optional)
"""

from __future__ import annotations

from dataclasses import dataclass

from attnrewrite.rules.pattern import Pat, Rule, RuleSet
from attnrewrite.rules.view import GraphView, rank

X = Pat.var("x")
EXP = Pat("Exp", X, name="exp")


@dataclass(frozen=True)
class Inlined:
    """What the inlined softmax normalises (`scores`) and the values it computes, data-flow
    order, its probabilities last."""

    scores: object
    values: tuple[object, ...]


def _over_last_axis(view: GraphView, reduced: object, x: object) -> bool:
    axes, keepdims = view.attribute(reduced, "axes"), view.attribute(reduced, "keepdims")
    last = (-1, (rank(view, x) or 0) - 1)
    return keepdims in (None, (1,)) and axes is not None and len(axes) == 1 and axes[0] in last


def _normalised(
    view: GraphView, probs: object, exp: object, total: object, x: object
) -> Inlined | None:
    # Div(Exp(x), ReduceSum(Exp(x), -1)) -> x
    return Inlined(x, (exp, total, probs)) if _over_last_axis(view, total, exp) else None


def _shifted(view: GraphView, shifted: object, peak: object, x: object) -> Inlined | None:
    # Sub(x, ReduceMax(x, -1)) -> x
    return Inlined(x, (peak, shifted)) if _over_last_axis(view, peak, x) else None


SOFTMAX = RuleSet(
    [Rule(Pat("Div", EXP, Pat("ReduceSum", EXP, name="total"), name="probs"), _normalised)]
)
MAX_SHIFT = RuleSet(
    [Rule(Pat("Sub", X, Pat("ReduceMax", X, name="peak"), name="shifted"), _shifted)]
)


def decomposed_softmax(view: GraphView, probs: object) -> Inlined | None:
    """The softmax `probs` computes when it is exp(x) / sum(exp(x)) over the last axis, with or
    without the max shift, else None."""
    found = SOFTMAX.apply(view, probs)
    if found is None:
        return None
    shift = MAX_SHIFT.apply(view, found.scores)
    return found if shift is None else Inlined(shift.scores, (*shift.values, *found.values))
