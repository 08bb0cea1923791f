"""The walk down from a softmax to P.V (rules.probs) on ONNX and FX graphs, and the softmaxes
it must refuse: with the same reason in both graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from attnrewrite.patterns.view import ONNX
from attnrewrite.rules.probs import walk_probs
from attnrewrite.torch.find import FX_THROUGH
from attnrewrite.torch.view import FX
from tests.rules.graphs import fx_output, onnx_values

S, D = 3, 4
INPUTS = {"s": [2, S, S], "v": [2, S, D]}
aten = torch.ops.aten


def _onnx(*nodes, constants=None) -> dict:
    return onnx_values(
        [helper.make_node("Softmax", ["s"], ["p"], axis=-1), *nodes], INPUTS, constants
    )


def _fx_softmax(function) -> torch.fx.Node:
    out = fx_output(function, torch.randn(*INPUTS["s"]), torch.randn(*INPUTS["v"]))
    return next(n for n in out.graph.nodes if n.target is aten.softmax.int)


def test_onnx_through_the_nan_guard_a_cast_and_dropout() -> None:
    values = _onnx(
        helper.make_node("IsNaN", ["p"], ["nan"]),
        helper.make_node("Where", ["nan", "zero", "p"], ["guarded"]),
        helper.make_node("Cast", ["guarded"], ["cast"], to=TensorProto.FLOAT),
        helper.make_node("Dropout", ["cast"], ["dropped"]),
        helper.make_node("MatMul", ["dropped", "v"], ["out"]),
        constants={"zero": np.array(0.0, np.float32)},
    )
    chain = walk_probs(ONNX, values["p"])
    assert chain.pv is values["out"] and chain.nan_guard
    assert [v.name for v in chain.values] == ["nan", "guarded", "cast", "dropped"]


def test_fx_through_a_cast_and_inference_dropout() -> None:
    def attention(s, v):
        p = torch.nn.functional.dropout(torch.softmax(s, -1).double(), 0.1, training=False)
        return p @ v.double()

    softmax = _fx_softmax(attention)
    chain = walk_probs(FX, softmax, FX_THROUGH)
    assert FX.op(chain.pv) == "MatMul" and not chain.nan_guard
    assert [FX.op(v) for v in chain.values] == ["Cast", "Dropout"]


REFUSED = {  # what reads the probabilities -> (ONNX nodes, FX function, reason up to names)
    "another reader": (
        [
            helper.make_node("MatMul", ["p", "v"], ["pv"]),
            helper.make_node("ReduceSum", ["p"], ["total"], keepdims=0),
            helper.make_node("Add", ["pv", "total"], ["out"]),
        ],
        lambda s, v: (p := s.softmax(-1)) @ v + p.sum(),
        "attention probabilities '{p}' have another consumer (nodes {readers})",
    ),
    "right operand": (
        [helper.make_node("MatMul", ["v", "p"], ["out"])],
        lambda s, v: v.transpose(1, 2) @ s.softmax(-1),
        "softmax output is the right operand of MatMul '{pv}'",
    ),
    "no matmul": (
        [helper.make_node("Tanh", ["p"], ["t"]), helper.make_node("MatMul", ["t", "v"], ["out"])],
        lambda s, v: s.softmax(-1).tanh() @ v,
        "softmax output goes to {tanh}, not to a MatMul with values: not attention",
    ),
}


@pytest.mark.parametrize("name", REFUSED)
def test_must_not_match_with_one_reason_in_both_graphs(name: str) -> None:
    nodes, function, reason = REFUSED[name]
    values = _onnx(*nodes)
    p = values["p"]
    onnx_names = {
        "p": "p",
        "readers": ", ".join(f"'{n.name}'" for n in (use.node for use in p.uses())),
        "pv": "",
        "tanh": "Tanh ''",
    }
    assert walk_probs(ONNX, p) == reason.format(**onnx_names)
    softmax = _fx_softmax(function)
    readers = FX.readers(softmax)
    fx_names = {
        "p": softmax.name,
        "readers": ", ".join(f"'{r.name}'" for r in readers),
        "pv": readers[0].name,
        "tanh": f"tanh '{readers[0].name}'",
    }
    assert walk_probs(FX, softmax, FX_THROUGH) == reason.format(**fx_names)


def test_must_not_match_probabilities_the_graph_returns() -> None:
    values = onnx_values([helper.make_node("Softmax", ["s"], ["out"], axis=-1)], INPUTS)
    reason = "softmax output is a model output and feeds no MatMul: not attention"
    assert walk_probs(ONNX, values["out"]) == reason
    softmax = fx_output(lambda s: s.softmax(-1), torch.randn(*INPUTS["s"]))
    assert walk_probs(FX, softmax, FX_THROUGH) == reason
