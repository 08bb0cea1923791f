"""Every hand-built attention variant (tests/corpus/handbuilt.py): found, described, exact.

Expectations come from how each graph was built, not from the finder's output.
"""

from __future__ import annotations

import onnx_ir as ir
import pytest

from attnrewrite.verify import tolerance_for as tolerance
from tests.conftest import find_and_rewrite, max_relative_error, run
from tests.corpus.handbuilt import Case, all_cases

CASES = {case.name: case for case in all_cases()}
POSITIVE = [name for name, case in CASES.items() if case.expected_blocks > 0]
NEGATIVE = [name for name, case in CASES.items() if case.expected_blocks == 0]

# Known gaps, each reported to the user with its reason; strict so a fix shows up here.
NOT_YET = {
    "ms_decoder_masked_mha": "DecoderMaskedMultiHeadAttention",
}
# Masks inside Loop/If bodies and functions cannot be evaluated: passed on as a bias tensor.
UNCLASSIFIED_MASK = {"if_body", "model_local_function"}


def _check_description(case: Case, found, tol: float) -> None:
    expected = case.expected
    for match in found.matches:
        # an fp16 graph stores its scale in fp16: 1/sqrt(8) is 0.35359 there
        assert match.scale == pytest.approx(expected["scale"], rel=tol / 10)
        assert match.softcap == expected.get("softcap")
        if case.name in UNCLASSIFIED_MASK:
            assert match.mask.value == "bias" and "mask:unclassified" in match.variant
        else:
            assert match.mask.value == expected["mask"]
            assert match.window == expected.get("window")
        if match.q_heads is not None:  # merged (B*H) layouts and subgraphs carry no head count
            assert match.q_heads == expected["q_heads"]
            assert match.kv_heads == expected["kv_heads"]
            assert match.head_dim == expected["head_dim"]


@pytest.mark.parametrize("name", POSITIVE)
def test_variant_is_found_described_and_exact(name: str) -> None:
    case = CASES[name]
    if name in NOT_YET:
        pytest.xfail(f"not rewritten yet: {NOT_YET[name]}")
    found, result, rewritten = find_and_rewrite(case.model)
    assert len(found.matches) == case.expected_blocks, [r.reason for r in found.refusals]
    assert not result.failed
    tol = tolerance(ir.from_proto(rewritten))  # the original's outputs: some need repair first
    _check_description(case, found, tol)
    assert not [n for n in rewritten.graph.node if n.op_type == "Softmax"]
    lengths = ((6, 9) if case.dynamic_seq else (6,)) + case.lengths
    for n in lengths:
        feeds = case.feeds(n)
        error = max_relative_error(run(case.model, feeds), run(rewritten, feeds))
        assert error <= tol, f"n={n}: relative error {error:.2e}"


@pytest.mark.parametrize("name", NOT_YET)
def test_known_gaps_are_refused_with_a_reason(name: str) -> None:
    found, _, _ = find_and_rewrite(CASES[name].model)
    assert not found.matches
    assert found.refusals and all(r.reason for r in found.refusals)


@pytest.mark.parametrize("name", NEGATIVE)
def test_not_attention_is_refused_with_the_reason(name: str) -> None:
    case = CASES[name]
    found, _, _ = find_and_rewrite(case.model)
    assert not found.matches
    word = case.expected.get("reason_contains")
    if word is None:
        assert not found.refusals
    else:
        assert any(word in r.reason for r in found.refusals), [r.reason for r in found.refusals]
