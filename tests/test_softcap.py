"""Logit soft-capping end to end on the hand-built cases (tests/corpus/handbuilt.py): exact, window
and verticalslash honour the cap and reproduce onnxruntime on the original; the other methods
keep a capped block exact, with the reason; and the cases, and the exported Gemma 2 models of
the corpus (tests/test_exported_corpus.py rewrites them), are sharp enough to show a dropped
cap."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from attnrewrite.inputs import generate_inputs
from attnrewrite.loading import prepare_model
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.body import DOMAIN
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import SubstituteResult, substitute
from attnrewrite.verify import tolerance_for as tolerance
from tests.conftest import max_relative_error, run
from tests.corpus.handbuilt import SOFTCAP, all_cases

CASES = {case.name: case for case in all_cases() if case.name.startswith("softcap_")}
LENGTHS = (6, 9)
CORPUS = Path(__file__).parent / "corpus" / "exported"


def _rewrite(
    proto: onnx.ModelProto, method: str, **params: object
) -> tuple[SubstituteResult, onnx.ModelProto]:
    model = prepare_model(proto)
    result = substitute(model, find_attention(model).matches, get_method(method, params))
    rewritten = ir.serde.serialize_model(model)
    onnx.checker.check_model(rewritten, full_check=True)
    return result, rewritten


def _error(case, rewritten: onnx.ModelProto) -> float:
    return max(
        max_relative_error(run(case.model, case.feeds(n)), run(rewritten, case.feeds(n)))
        for n in LENGTHS
    )


def _uncap(model: onnx.ModelProto) -> None:
    """The rewritten nodes with a cap too wide to bend any score: the uncapped attention."""
    for node in _nodes(model):
        for attribute in node.attribute:
            if attribute.name == "softcap":
                attribute.f = 1e9


def _nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.domain == DOMAIN]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("method", ["exact", "window", "verticalslash"])
def test_exact_and_a_window_or_pattern_wider_than_the_keys_reproduce_the_capped_model(
    name: str, method: str
) -> None:
    case = CASES[name]
    params = {"width": 64} if method == "window" else {}
    result, rewritten = _rewrite(case.model, method, **params)
    assert [r.fallback for r in result.rewritten] == [None]
    (node,) = _nodes(rewritten)
    assert "softcap" in node.overload
    assert [a.f for a in node.attribute if a.name == "softcap"] == [pytest.approx(SOFTCAP)]
    assert _error(case, rewritten) <= tolerance(ir.from_proto(case.model))
    _uncap(rewritten)  # the same node without its cap: far off
    assert _error(case, rewritten) > 100 * tolerance(ir.from_proto(case.model))


@pytest.mark.parametrize("name", ["gemma2_eager_dynamo18", "gemma2_eager_ts17"])
def test_the_exported_gemma2_models_show_a_dropped_cap(name: str) -> None:
    proto = onnx.load(str(CORPUS / f"{name}.onnx"))
    _, rewritten = _rewrite(proto, "exact")
    _uncap(rewritten)
    model = ir.from_proto(proto)
    feeds = generate_inputs(model, 11, batch=2)
    assert max_relative_error(run(proto, feeds), run(rewritten, feeds)) > 100 * tolerance(model)


def test_a_narrow_window_honours_the_cap_and_other_methods_keep_it_exact() -> None:
    case = CASES["softcap_gemma2"]
    result, rewritten = _rewrite(case.model, "window", width=2, sinks=0)
    assert [r.fallback for r in result.rewritten] == [None]
    assert _error(case, rewritten) > tolerance(
        ir.from_proto(case.model)
    )  # an approximation, not a fallback
    for method in ("multipole", "convbasis", "polysketch"):
        result, rewritten = _rewrite(case.model, method)
        assert [r.fallback for r in result.rewritten] == [
            "logit soft-capping is honoured by exact, window and verticalslash only"
        ], method
        assert [n.op_type for n in _nodes(rewritten)] == ["ExactAttention"]
        assert _error(case, rewritten) <= tolerance(ir.from_proto(case.model))
