"""Declarative rules over a `GraphView`: a rule is a pattern and a function.

    Rule(Pat("Div", Pat.var("x"), Pat.var("c")), divide)   # x / c -> x, factor 1/c

A pattern names an op and the patterns of its inputs; `Pat.var(name)` matches any value.
Every named position binds the value found there, and the function receives the view and
the bindings as keyword arguments; it returns the rule's result, or None for "no match"
(a side condition that failed). A `RuleSet` tries its rules in order, indexed by root op,
and gives the first result. Rules hold no state: what they need comes from the view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from attnrewrite.rules.view import GraphView


@dataclass(frozen=True)
class Pat:
    """Match a value whose producer is one of `ops` (any value when empty) and whose first
    inputs match `inputs` (unchecked when None); bind it as `name`."""

    ops: tuple[str, ...] = ()
    inputs: tuple[Pat, ...] | None = None
    name: str | None = None

    def __init__(self, ops: str | tuple[str, ...], *inputs: Pat, name: str | None = None):
        object.__setattr__(self, "ops", (ops,) if isinstance(ops, str) else tuple(ops))
        object.__setattr__(self, "inputs", inputs if inputs else None)
        object.__setattr__(self, "name", name)

    @staticmethod
    def var(name: str) -> Pat:
        """Any value, bound as `name`."""
        return Pat((), name=name)

    def match(self, view: GraphView, value: object) -> dict[str, object] | None:
        """The bindings when `value` matches, else None."""
        bound: dict[str, object] = {}
        return bound if _match(self, view, value, bound) else None


def _match(pat: Pat, view: GraphView, value: object, bound: dict[str, object]) -> bool:
    if value is None:
        return False
    if pat.name is not None:
        if pat.name in bound and bound[pat.name] is not value:
            return False
        bound[pat.name] = value
    if not pat.ops:
        return True
    if view.op(value) not in pat.ops:
        return False
    if pat.inputs is None:
        return True
    args = view.inputs(value)
    if len(args) < len(pat.inputs):
        return False
    return all(_match(p, view, a, bound) for p, a in zip(pat.inputs, args, strict=False))


@dataclass(frozen=True)
class Rule:
    """A pattern and the function that turns its bindings into a result (None: no match)."""

    pattern: Pat
    function: Callable[..., Any]

    def apply(self, view: GraphView, value: object) -> Any:
        bound = self.pattern.match(view, value)
        return None if bound is None else self.function(view, **bound)


class RuleSet:
    """Rules tried in order on a value; the first result wins. Indexed by root op."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        self._by_op: dict[str, tuple[Rule, ...]] = {}
        for op in {op for rule in self.rules for op in rule.pattern.ops}:
            self._by_op[op] = tuple(r for r in self.rules if op in r.pattern.ops)

    def __add__(self, other: RuleSet) -> RuleSet:
        return RuleSet((*self.rules, *other.rules))

    def apply(self, view: GraphView, value: object) -> Any:
        op = view.op(value) if value is not None else None
        for rule in self._by_op.get(op or "", ()):
            result = rule.apply(view, value)
            if result is not None:
                return result
        return None
