"""Score steps replayed on a zero score (rules.replay): the ONNX finder's steps in numpy and the
FX finder's in torch give what the graph adds to the scores, and the FX finder refuses a step
its block could not replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from attnrewrite.patterns.masks import replay_on_zero, replayable
from attnrewrite.patterns.scores import ScoreStep
from attnrewrite.patterns.view import ONNX
from attnrewrite.rules.replay import replay
from attnrewrite.rules.scores import score_path
from attnrewrite.torch.find import NoMatch, walk_scores
from tests.rules.graphs import fx_input, fx_output, onnx_values

B, H, S, D = 1, 2, 4, 3
rng = np.random.default_rng(0)
HIDE = np.triu(np.ones((S, S), bool), 1)
KEEP = rng.random((S, S)) > 0.3
BIAS = rng.standard_normal((B, 1, S, S)).astype(np.float32)


def scores(q, kt, hide, keep, bias):
    """scores / 2, hidden ones -1e4, those not kept 0, plus a bias: f(0) is the bias added."""
    return torch.where(keep, (q @ kt / 2.0).masked_fill(hide, -1e4), 0.0) + bias


def test_fx_steps_replay_in_torch_to_what_the_graph_adds() -> None:
    q, kt = torch.randn(B, H, S, D), torch.randn(B, H, D, S)
    masks = (torch.from_numpy(HIDE), torch.from_numpy(KEEP), torch.from_numpy(BIAS))
    out = fx_output(scores, q, kt, *masks)
    walked = walk_scores(out)
    steps, side = walked.steps, walked.side
    inputs = [fx_input(out, i) for i in range(5)]
    tensors = iter([masks[inputs.index(node) - 2] for node in side])
    bias = replay(steps, lambda i, j: next(tensors), q.new_zeros(()), torch)
    added = scores(torch.zeros_like(q), kt, *masks)  # the same for every head
    torch.testing.assert_close(bias.expand_as(added), added)


def test_onnx_steps_replay_in_numpy_to_the_same_bias() -> None:
    values = onnx_values(
        [
            helper.make_node("MatMul", ["q", "kt"], ["qk"]),
            helper.make_node("Div", ["qk", "two"], ["scaled"]),
            helper.make_node("Where", ["hide", "low", "scaled"], ["filled"]),
            helper.make_node("Where", ["keep", "filled", "zero"], ["kept"]),
            helper.make_node("Add", ["kept", "bias"], ["out"]),
        ],
        {"q": [B, H, S, D], "kt": [B, H, D, S], "bias": [B, 1, S, S]},
        {
            "two": np.array(2.0, np.float32),
            "low": np.array(-1e4, np.float32),
            "zero": np.array(0.0, np.float32),
            "hide": HIDE,
            "keep": KEEP,
        },
    )
    _, links = score_path(ONNX, values["out"])
    steps = [ScoreStep(link.value.producer(), link.score_input) for link in links]
    arrays = {"two": 2.0, "low": -1e4, "zero": 0.0, "hide": HIDE, "keep": KEEP, "bias": BIAS}

    def side(i: int, j: int) -> np.ndarray:
        return np.asarray(arrays[steps[i].node.inputs[j].name], np.float32 if j else None)

    bias = replay_on_zero([replayable(step) for step in steps], side, np.dtype(np.float32))
    expected = np.where(KEEP, np.where(HIDE, -1e4, 0.0), 0.0) + BIAS
    np.testing.assert_allclose(bias, expected)


def test_must_not_match_a_step_the_fx_block_cannot_replay() -> None:
    q, kt = torch.randn(B, H, S, D), torch.randn(B, H, D, S)
    out = fx_output(lambda q, kt: (q @ kt).reshape(B, H * S, S) + 1.0, q, kt)
    with pytest.raises(NoMatch, match=r"between Q\.K"):  # a reshape: the block keeps q's shape
        walk_scores(out)
