"""The score walk (rules.scores) from a softmax input up to Q.K^T: the same steps found in an
ONNX and an FX graph, the FX finder's replayable form of them, and chains it must refuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from attnrewrite.patterns.view import ONNX
from attnrewrite.rules.replay import Step
from attnrewrite.rules.scores import score_path
from attnrewrite.torch.find import NoMatch, walk_scores
from attnrewrite.torch.view import FX
from tests.rules.graphs import fx_output, onnx_values

B, H, S, D = 1, 2, 4, 3
INPUTS = {"q": [B, H, S, D], "kt": [B, H, D, S], "bias": [B, 1, S, S]}


def _links(view, path) -> list[tuple[str, int]]:
    return [(view.op(link.value), link.score_input) for link in path[1]]


def test_onnx_scale_mask_and_bias_in_either_order() -> None:
    values = onnx_values(
        [
            helper.make_node("MatMul", ["q", "kt"], ["qk"]),
            helper.make_node("Div", ["qk", "two"], ["scaled"]),
            helper.make_node("Where", ["keep", "scaled", "low"], ["masked"]),
            helper.make_node("Add", ["bias", "masked"], ["out"]),
        ],
        INPUTS,
        {
            "two": np.array(2.0, np.float32),
            "low": np.array(-1e4, np.float32),
            "keep": np.tril(np.ones((S, S), bool)),
        },
    )
    path = score_path(ONNX, values["out"])
    assert path[0] is values["qk"]
    assert _links(ONNX, path) == [("Div", 0), ("Where", 1), ("Add", 1)]


def test_fx_finds_the_same_steps_and_replays_them() -> None:
    keep = torch.ones(S, S).tril().bool()

    def scores(q, kt, bias):
        return torch.where(keep, (q @ kt / 2.0).masked_fill(~keep, -1e4), 0.0) + bias

    out = fx_output(
        scores, torch.randn(*INPUTS["q"]), torch.randn(*INPUTS["kt"]), torch.randn(B, 1, S, S)
    )
    path = score_path(FX, out)
    assert FX.op(path[0]) == "MatMul"
    assert _links(FX, path) == [("Div", 0), ("Where", 2), ("Where", 1), ("Add", 0)]
    walked = walk_scores(out)
    assert walked.steps == (  # from the first mask: the scale before it is the scale alone
        Step("Where", 2, (None, -1e4, None)),
        Step("Where", 1, (None, None, 0.0)),
        Step("Add", 0, (None, None)),
    )
    assert (walked.scale, walked.matmul, walked.chain[0]) == (0.5, path[0], out)
    assert len(walked.side) == 3  # the two masks and the bias


def test_a_step_that_is_no_scale_or_mask_is_refused() -> None:
    values = onnx_values(
        [
            helper.make_node("MatMul", ["q", "kt"], ["qk"]),
            helper.make_node("Tanh", ["qk"], ["out"]),
        ],
        INPUTS,
    )
    assert score_path(ONNX, values["out"]).startswith(
        "scores pass through Tanh '', which is not a logit soft-cap c * tanh(s / c)"
    )
    assert "graph input" in score_path(ONNX, values["q"])
    out = fx_output(
        lambda q, kt: torch.exp(q @ kt), torch.randn(*INPUTS["q"]), torch.randn(*INPUTS["kt"])
    )
    assert (
        score_path(FX, out) == f"scores pass through exp '{out.name}', which is not a scale or mask"
    )
    out = fx_output(
        lambda q, kt, w: (q @ kt) * w, *(torch.randn(*INPUTS[n]) for n in ("q", "kt", "bias"))
    )
    with pytest.raises(NoMatch, match=r"between Q\.K"):  # FX replays a product by constants only
        walk_scores(out)
