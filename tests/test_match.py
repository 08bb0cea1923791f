"""A match is plain data addressed by names (attnrewrite.match, attnrewrite.graphs): it pickles,
compares, holds for any copy of its model, and the finder names the nodes it needs."""

from __future__ import annotations

import pickle
from collections import Counter

import onnx
import onnx_ir as ir
import pytest

from attnrewrite.graphs import all_graphs, scopes
from attnrewrite.loading import prepare_model
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import substitute
from attnrewrite.verify import tolerance_for as tolerance
from tests.conftest import max_relative_error, run
from tests.corpus.handbuilt import all_cases

CASES = {case.name: case for case in all_cases()}
# a bias replayed from steps, a fused op's mask, blocks in a Loop body, an If branch, a function
NAMED = ["alibi_bias", "onnx_attention_op_3d", "loop_body", "if_body", "model_local_function"]


def _load(proto: onnx.ModelProto) -> ir.Model:
    return prepare_model(proto)


@pytest.mark.parametrize("name", NAMED)
def test_a_match_is_data_that_holds_for_a_copy_of_its_model(name: str) -> None:
    model = _load(CASES[name].model)
    (match,) = find_attention(model).matches
    assert pickle.loads(pickle.dumps(match)) == match
    copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    assert find_attention(copy).matches == (match,)  # found again: the same value
    here, there = (
        match.bind(scopes(model)[match.graph_name]),
        match.bind(scopes(copy)[match.graph_name]),
    )
    assert [n.name for n in there.nodes] == list(match.nodes)
    assert there.output.name == match.output and there.q.name == match.q.value
    assert not {id(n) for n in here.nodes} & {id(n) for n in there.nodes}  # the copy's own


def _strip_names(nodes: list[onnx.NodeProto]) -> None:
    """Every node unnamed, bodies too, but for the first two of each graph: they share one."""
    for index, node in enumerate(nodes):
        node.name = "twin" if index < 2 else ""
        for attr in node.attribute:
            for body in [attr.g] if attr.HasField("g") else attr.graphs:
                _strip_names(body.node)


@pytest.mark.parametrize("name", NAMED)
def test_the_finder_names_unnamed_nodes_and_the_rewrite_stays_exact(name: str) -> None:
    case = CASES[name]
    proto = onnx.ModelProto()
    proto.CopyFrom(case.model)
    for nodes in [proto.graph.node, *(f.node for f in proto.functions)]:
        _strip_names(nodes)
    model = _load(proto)
    found = find_attention(model)
    assert len(found.matches) == 1, [r.reason for r in found.refusals]
    for _, graph in all_graphs(model):
        names = Counter(node.name for node in graph)
        assert all(names) and max(names.values(), default=1) == 1, names
    (match,) = found.matches
    assert match.anchor and all(match.nodes)
    result = substitute(model, found.matches, get_method("exact"))
    assert not result.failed
    rewritten = ir.serde.serialize_model(model)
    onnx.checker.check_model(rewritten, full_check=True)
    feeds = case.feeds(6)
    error = max_relative_error(run(case.model, feeds), run(rewritten, feeds))
    assert error <= tolerance(model)  # the original's outputs


def test_a_match_whose_names_the_model_lacks_fails_alone_with_the_name() -> None:
    model = _load(CASES["alibi_bias"].model)
    (match,) = find_attention(model).matches
    other = _load(CASES["legacy_gpt2_where"].model)
    (kept,) = find_attention(other).matches
    result = substitute(other, [match, kept], get_method("exact"))
    (failed,) = result.failed
    assert failed.match == match and "is not in the graph" in failed.reason
    assert [r.match for r in result.rewritten] == [kept]
