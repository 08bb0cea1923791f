"""The record both finders produce (rules.candidate) and the variant tags of a block: the
same attention gives the same record and tags in an ONNX and an FX graph, and a form it is
not is not tagged."""

from __future__ import annotations

import numpy as np
import torch
from onnx import helper

from attnrewrite.patterns.finder import _structural
from attnrewrite.patterns.softmax import softmax_anchor
from attnrewrite.patterns.view import ONNX
from attnrewrite.rules.candidate import Candidate, structure_variant
from attnrewrite.rules.operands import Layout, attention_operands, upstream_scale
from attnrewrite.rules.probs import walk_probs
from attnrewrite.rules.scores import score_path
from attnrewrite.rules.variants import Variant
from attnrewrite.torch.find import find
from attnrewrite.torch.view import FX
from tests.rules.graphs import fx_input, fx_output, onnx_values

B, H, S, D = 1, 2, 4, 3
SHAPES = {"q": [B, H, S, D], "k": [B, H, S, D], "v": [B, H, S, D]}


def _tags(view, scores: object, probs: object, decomposed: bool = False) -> tuple[str, ...]:
    """What a finder tags the block between `scores` (the softmax input) and `probs`."""
    qk, links = score_path(view, scores)
    chain = walk_probs(view, probs)
    q, kt = view.inputs(qk)
    found = attention_operands(view, q, kt, view.inputs(chain.pv)[1])
    return structure_variant(
        view,
        decomposed=decomposed,
        qk=qk,
        scores=[link.value for link in links],
        probs=chain,
        operands=found,
        upstream=upstream_scale(view, found.q),
        float32=False,
    )


def _onnx(scale_on: str) -> tuple[str, ...]:
    q, scores = ("q2", "qk") if scale_on == "q" else ("q", "s")
    values = onnx_values(
        [
            helper.make_node("Div", ["q", "two"], ["q2"]),
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [q, "kt"], ["qk"]),
            helper.make_node("Div", ["qk", "two"], ["s"]),
            helper.make_node("Softmax", [scores], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["out"]),
        ],
        SHAPES,
        {"two": np.array(2.0, np.float32)},
    )
    return _tags(ONNX, values[scores], values["p"])


def _fx(scale_on: str) -> tuple[str, ...]:
    def attention(q, k, v):
        if scale_on == "q":
            return torch.softmax(q / 2.0 @ k.transpose(-1, -2), -1) @ v
        return torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v

    out = fx_output(attention, *(torch.randn(*SHAPES[n]) for n in "qkv"))
    probs = out.args[0]
    return _tags(FX, probs.args[0], probs)


def test_the_same_form_gets_the_same_tags_in_onnx_and_fx() -> None:
    expected = (Variant.SOFTMAX, Variant.K_TRANSPOSE, Variant.SCALE_ON_Q)
    assert _onnx("q") == _fx("q") == expected


def test_must_not_tag_a_scale_on_the_scores_as_one_on_q() -> None:
    assert _onnx("scores") == _fx("scores") == (Variant.SOFTMAX, Variant.K_TRANSPOSE)


def _shared(candidate: Candidate, name) -> tuple:
    """The record's fields, graph values by name."""
    return (
        (name(candidate.q), name(candidate.k), name(candidate.v)),
        candidate.k_layout,
        candidate.kv_repeat,
        candidate.float32_softmax,
        candidate.variant,
    )


def test_both_finders_make_one_record_of_one_attention() -> None:
    """softmax(q @ kt) @ v with K stored transposed: the record names the same inputs."""
    values = onnx_values(
        [
            helper.make_node("MatMul", ["q", "kt"], ["qk"]),
            helper.make_node("Softmax", ["qk"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["out"]),
        ],
        {"q": [B, H, S, D], "kt": [B, H, D, S], "v": [B, H, S, D]},
    )
    onnx = _structural(softmax_anchor(values["p"].producer(), 18), "main")
    out = fx_output(
        lambda q, kt, v: torch.softmax(q @ kt, -1) @ v,
        torch.randn(B, H, S, D),
        torch.randn(B, H, D, S),
        torch.randn(B, H, S, D),
    )
    [fx], refused = find(out.graph)
    assert isinstance(onnx, Candidate) and isinstance(fx, Candidate) and not refused
    inputs = [fx_input(out, i) for i in range(3)]
    expected = (
        ("q", "kt", "v"),
        Layout.BHDS,
        False,
        False,
        (Variant.SOFTMAX, Variant.K_STORED_TRANSPOSED),
    )
    assert _shared(onnx, lambda value: value.name) == expected
    assert _shared(fx, lambda node: expected[0][inputs.index(node)]) == expected
