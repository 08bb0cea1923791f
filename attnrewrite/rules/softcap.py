"""Logit soft-capping (Gemma 2, Grok), as a rule:

    Mul(Tanh(x), c) | Mul(c, Tanh(x))   -> x, cap c   (c a positive constant scalar)

The cap squashes the scaled scores into (-c, c) before the mask and the softmax:
softmax(c * tanh(s / c) + mask). Whatever scales the Tanh's input (the Div by c or Mul by 1/c,
the model's scale before it, or that scale folded into the constant, as flash-attention's
softcap writes it) is an ordinary scale step of the walk up (rules.scores): since
c * tanh(a s) = c * tanh((a c) s / c), the scale of a capped block is the product of every
factor before the Tanh, times c (rules.scores.split_steps). A Tanh with no such product is
no cap, and the walk refuses it with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from attnrewrite.rules.operands import constant_scalar
from attnrewrite.rules.pattern import Pat, Rule, RuleSet
from attnrewrite.rules.view import GraphView


@dataclass(frozen=True)
class SoftCap:
    """c * tanh(x): the Tanh's input `scores`, the Tanh's output, which input of the product
    the Tanh is, and the cap c."""

    scores: object
    tanh: object
    score_input: int
    cap: float


def _cap(view: GraphView, c: object) -> float | None:
    cap = constant_scalar(view, c)
    return cap if cap is not None and 0 < cap < math.inf else None


def _capped(view: GraphView, tanh: object, x: object, c: object) -> SoftCap | None:
    # Mul(Tanh(x), c) -> x, cap c
    cap = _cap(view, c)
    return None if cap is None else SoftCap(x, tanh, 0, cap)


def _capped_left(view: GraphView, tanh: object, x: object, c: object) -> SoftCap | None:
    # Mul(c, Tanh(x)) -> x, cap c
    cap = _cap(view, c)
    return None if cap is None else SoftCap(x, tanh, 1, cap)


TANH = Pat("Tanh", Pat.var("x"), name="tanh")
SOFTCAP = RuleSet(
    [
        Rule(Pat("Mul", TANH, Pat.var("c")), _capped),  # Mul(Tanh(x), c) -> x, cap c
        Rule(Pat("Mul", Pat.var("c"), TANH), _capped_left),  # Mul(c, Tanh(x)) -> x, cap c
    ]
)
