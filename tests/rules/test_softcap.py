"""The logit soft-cap rule (rules.softcap) in the score walk: c * tanh(s / c) as Gemma 2 and
Grok write it, in either operand order, with the scale before the cap or folded into its
division; and the Tanh steps it must not take for a cap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from attnrewrite.patterns.view import ONNX
from attnrewrite.rules.operands import constant_scalar
from attnrewrite.rules.scores import score_path, split_steps
from attnrewrite.torch.find import walk_scores
from attnrewrite.torch.view import FX
from tests.rules.graphs import fx_output, onnx_values

B, H, S, D = 1, 2, 4, 3
INPUTS = {"q": [B, H, S, D], "kt": [B, H, D, S], "bias": [B, 1, S, S]}
CONSTANTS = {
    "cap": np.array(30.0, np.float32),
    "inv_cap": np.array(1 / 30.0, np.float32),
    "scale": np.array(0.25, np.float32),
    "scale_over_cap": np.array(0.25 / 30.0, np.float32),
    "minus_cap": np.array(-30.0, np.float32),
}


def _walk(*nodes, constants=CONSTANTS):
    """The score walk and its split from `out` of MatMul(q, kt) -> nodes."""
    values = onnx_values(
        [helper.make_node("MatMul", ["q", "kt"], ["qk"]), *nodes], INPUTS, constants
    )
    path = score_path(ONNX, values["out"])
    if isinstance(path, str):
        return path
    return split_steps(ONNX, path[1])


def _scale(split, view=ONNX) -> float:
    """The product of the split's factors (a capped chain's scale: the cap's c among them)."""
    product = 1.0
    for factor in split.factors:
        number = constant_scalar(view, factor.value)
        product = product / number if factor.divide else product * number
    return product


def _op(op_type: str):
    return lambda inputs, outputs: helper.make_node(op_type, inputs, outputs)


Mul, Div, Tanh, Add = map(_op, ("Mul", "Div", "Tanh", "Add"))


@pytest.mark.parametrize(
    "nodes",
    [
        # Gemma 2: (qk * scale) / cap -> tanh -> * cap -> + mask
        [Mul(["qk", "scale"], ["s"]), Div(["s", "cap"], ["x"]), Tanh(["x"], ["t"]),
         Mul(["t", "cap"], ["c"]), Add(["c", "bias"], ["out"])],
        # the other operand orders, a Mul by 1/cap
        [Mul(["scale", "qk"], ["s"]), Mul(["inv_cap", "s"], ["x"]), Tanh(["x"], ["t"]),
         Mul(["cap", "t"], ["c"]), Add(["bias", "c"], ["out"])],
        # the scale folded into the division (flash-attention's softcap)
        [Mul(["qk", "scale_over_cap"], ["x"]), Tanh(["x"], ["t"]), Mul(["t", "cap"], ["c"]),
         Add(["c", "bias"], ["out"])],
    ],
)  # fmt: skip
def test_a_soft_cap_is_one_step_before_the_mask(nodes) -> None:
    split = _walk(*nodes)
    assert split.softcap == pytest.approx(30.0)
    assert _scale(split) == pytest.approx(0.25, rel=1e-6)  # c * tanh(a s): scale a * c
    assert split.first == len(nodes) - 1  # the mask alone is the bias


def test_a_tanh_that_is_no_cap_is_refused_with_the_reason() -> None:
    no_cap = "which is not a logit soft-cap c * tanh(s / c)"
    assert no_cap in _walk(Tanh(["qk"], ["out"]))  # no product at all
    assert no_cap in _walk(Tanh(["qk"], ["t"]), Mul(["t", "bias"], ["out"]))  # by a tensor
    assert no_cap in _walk(Tanh(["qk"], ["t"]), Mul(["t", "minus_cap"], ["out"]))  # c < 0


def test_a_mask_inside_or_a_scale_after_the_cap_is_refused() -> None:
    masked_first = _walk(
        Add(["qk", "bias"], ["m"]), Div(["m", "cap"], ["x"]), Tanh(["x"], ["t"]),
        Mul(["t", "cap"], ["out"]),
    )  # fmt: skip
    assert masked_first == "a mask is added to the scores before the logit soft-cap 30"
    scaled_after = _walk(
        Div(["qk", "cap"], ["x"]), Tanh(["x"], ["t"]), Mul(["t", "cap"], ["c"]),
        Mul(["c", "scale"], ["out"]),
    )  # fmt: skip
    assert scaled_after == "the scores are scaled again after the logit soft-cap 30"


def test_fx_finds_the_same_cap() -> None:
    out = fx_output(
        lambda q, kt, bias: 30.0 * torch.tanh(q @ kt * 0.25 / 30.0) + bias,
        *(torch.randn(*INPUTS[n]) for n in ("q", "kt", "bias")),
    )
    split = split_steps(FX, score_path(FX, out)[1])
    assert (split.softcap, _scale(split, FX)) == (30.0, pytest.approx(0.25))
    walked = walk_scores(out)
    assert (walked.softcap, walked.scale) == (30.0, pytest.approx(0.25))
    assert [step.op for step in walked.steps] == ["Add"]  # the mask alone is replayed
