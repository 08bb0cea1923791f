"""The pattern layer: bindings, repeated names, first result wins, None means no match."""

from __future__ import annotations

import torch
from onnx import helper

from attnrewrite.patterns.view import ONNX
from attnrewrite.rules.pattern import Pat, Rule, RuleSet
from attnrewrite.torch.view import FX
from tests.rules.graphs import fx_input, fx_output, onnx_values

SQUARE = Pat("Mul", Pat.var("x"), Pat.var("x"), name="out")  # x * x: one name, one value


def test_a_name_bound_twice_must_be_the_same_value() -> None:
    values = onnx_values(
        [helper.make_node("Mul", ["a", "a"], ["sq"]), helper.make_node("Mul", ["a", "b"], ["out"])],
        {"a": [3], "b": [3]},
    )
    assert SQUARE.match(ONNX, values["sq"]) == {"out": values["sq"], "x": values["a"]}
    assert SQUARE.match(ONNX, values["out"]) is None
    out = fx_output(lambda a: a * a, torch.randn(3))
    assert SQUARE.match(FX, out) == {"out": out, "x": fx_input(out, 0)}


def _refuse(view: object, out: object, x: object) -> None:
    return None


def _name(view: object, out: object, x: object) -> str:
    return "square"


def test_rules_are_tried_in_order_and_none_falls_through() -> None:
    rules = RuleSet([Rule(SQUARE, _refuse), Rule(SQUARE, _name)])
    values = onnx_values([helper.make_node("Mul", ["a", "a"], ["out"])], {"a": [3]})
    assert rules.apply(ONNX, values["out"]) == "square"
    assert RuleSet([Rule(SQUARE, _refuse)]).apply(ONNX, values["out"]) is None
    assert rules.apply(ONNX, values["a"]) is None  # a graph input: no producer, no rule
    assert (rules + RuleSet([])).rules == rules.rules
