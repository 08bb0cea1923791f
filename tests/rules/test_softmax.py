"""The inlined-softmax rule (rules.softmax) on ONNX and FX graphs, spellings it must refuse,
and the FX finder rewriting attention whose softmax is written out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from onnx import helper

import attnrewrite.torch as art
from attnrewrite.match import MaskKind
from attnrewrite.patterns.view import ONNX
from attnrewrite.rules.softmax import decomposed_softmax
from attnrewrite.rules.variants import Variant
from attnrewrite.torch.view import FX
from tests.rules.graphs import fx_input, fx_output, onnx_values

SHAPE = [2, 3, 4]


def _onnx(axis: int, keepdims: int, shift: bool) -> dict:
    shifted = [
        helper.make_node("ReduceMax", ["x"], ["peak"], axes=[-1], keepdims=1),
        helper.make_node("Sub", ["x", "peak"], ["s"]),
    ]
    return onnx_values(
        [
            *(shifted if shift else []),
            helper.make_node("Exp", ["s" if shift else "x"], ["e"]),
            helper.make_node("ReduceSum", ["e", "axes"], ["total"], keepdims=keepdims),
            helper.make_node("Div", ["e", "total"], ["out"]),
        ],
        {"x": SHAPE},
        {"axes": np.array([axis])},
    )


@pytest.mark.parametrize("shift", [True, False])
def test_onnx_inlined_softmax(shift: bool) -> None:
    values = _onnx(-1, 1, shift)
    found = decomposed_softmax(ONNX, values["out"])
    assert found is not None and found.scores is values["x"]
    names = ["peak", "s", "e", "total", "out"] if shift else ["e", "total", "out"]
    assert [v.name for v in found.values] == names


def test_fx_inlined_softmax() -> None:
    def softmax(x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(x - x.amax(-1, keepdim=True))
        return e / e.sum(-1, keepdim=True)

    out = fx_output(softmax, torch.randn(*SHAPE))
    found = decomposed_softmax(FX, out)
    assert found is not None and found.scores is fx_input(out, 0)
    assert [FX.op(v) for v in found.values] == ["ReduceMax", "Sub", "Exp", "ReduceSum", "Div"]


@pytest.mark.parametrize(("axis", "keepdims"), [(1, 1), (-1, 0)])
def test_must_not_match_another_axis_or_dropped_dims(axis: int, keepdims: int) -> None:
    assert decomposed_softmax(ONNX, _onnx(axis, keepdims, False)["out"]) is None
    x = torch.randn(3, 3, 3)  # square: a sum without its axis still broadcasts
    out = fx_output(lambda x: (e := x.exp()) / e.sum(axis, keepdim=bool(keepdims)), x)
    assert decomposed_softmax(FX, out) is None
    out = fx_output(lambda x: x.exp() / x.exp().sum(-1, keepdim=True), x)
    assert decomposed_softmax(FX, out) is None  # two exp nodes: not one value normalised


class InlinedAttention(torch.nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        e = torch.exp(scores - scores.amax(-1, keepdim=True))
        return (e / e.sum(-1, keepdim=True)) @ v


def test_fx_finder_rewrites_attention_with_an_inlined_softmax() -> None:
    q, k, v = torch.randn(3, 2, 2, 5, 4, generator=torch.Generator().manual_seed(0)).unbind(0)
    fast = art.rewrite(InlinedAttention(), (q, k, v), "exact", strict=False)
    [m] = (r.match for r in fast.matches)
    assert (m.mask, m.scale, Variant.SOFTMAX_DECOMPOSED in m.variant) == (MaskKind.NONE, 0.5, True)
    torch.testing.assert_close(fast(q, k, v), InlinedAttention()(q, k, v), rtol=1e-5, atol=1e-6)
    assert not any(n.target is torch.ops.aten.exp.default for n in fast.graph_module.graph.nodes)
