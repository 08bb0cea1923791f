"""Per-head plans: heads of one block split into groups, each with its own method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from attnrewrite.inputs import generate_inputs
from attnrewrite.layers import LayerSpec, attention_layer
from attnrewrite.loading import load_model, prepare_model
from attnrewrite.patterns import find_attention
from attnrewrite.report import metrics
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import HeadGroup, substitute
from attnrewrite.verify import run_with_outputs

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny-gpt2.onnx"


def _planned(tmp_path: Path, plans: dict) -> tuple[Path, list[str]]:
    model = load_model(EXAMPLE)
    found = find_attention(model)
    result = substitute(model, found.matches, get_method("exact"), plans)
    assert not result.failed and all(r.fallback is None for r in result.rewritten)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    path = tmp_path / "planned.onnx"
    onnx.save(proto, path)
    return path, [r.output for r in result.rewritten]


def _per_head(tmp_path: Path, plans: dict, seq_len: int) -> list[list[float]]:
    path, blocks = _planned(tmp_path, plans)
    feeds = generate_inputs(ir.load(str(EXAMPLE)), seq_len, batch=2)
    x = run_with_outputs(EXAMPLE, feeds, blocks)
    y = run_with_outputs(path, feeds, blocks)
    return [metrics.per_head(x[b], y[b], 4) for b in blocks]


def test_groups_route_every_head_back_to_its_place(tmp_path) -> None:
    """Multipole with block >= n is exact: any head routing mistake would show as an error."""
    exact, whole = get_method("exact"), get_method("multipole", {"block": 64})
    plans = {
        0: [HeadGroup(exact, (2, 0)), HeadGroup(whole, (3, 1))],
        1: [HeadGroup(whole, (3, 1, 2, 0))],
    }
    for errors in _per_head(tmp_path, plans, seq_len=40):
        assert max(errors) < 1e-6


def test_only_the_approximated_heads_change(tmp_path) -> None:
    exact, coarse = get_method("exact"), get_method("multipole", {"block": 4})
    plans = {0: [HeadGroup(exact, (0, 2)), HeadGroup(coarse, (1, 3))]}
    first, second = _per_head(tmp_path, plans, seq_len=48)
    assert first[0] < 1e-6 and first[2] < 1e-6
    assert first[1] > 1e-4 and first[3] > 1e-4
    assert max(second) > 0  # the next block sees the changed input


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_gqa_blocks_split_by_query_head(tmp_path, kv_heads) -> None:
    spec = LayerSpec(heads=4, kv_heads=kv_heads, head_dim=16, mask="padding")
    proto = attention_layer(spec)
    model = prepare_model(proto)
    found = find_attention(model)
    exact, whole = get_method("exact"), get_method("multipole", {"block": 64})
    plans = {0: [HeadGroup(whole, (3, 0)), HeadGroup(exact, (1, 2))]}
    result = substitute(model, found.matches, exact, plans)
    assert result.rewritten[0].groups
    feeds = spec.inputs(2, 23)
    got = _run(ir.serde.serialize_model(model), feeds)
    assert np.abs(got - _run(proto, feeds)).max() < 1e-5


def _run(proto: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString()).run(None, feeds)[0]


@pytest.mark.parametrize(
    ("approximated", "kept", "repeated"),
    [((3, 1), (2, 0), 0), ((2, 3), (0, 1), 2), ((2, 3), (1, 0), 1)],
)
def test_grouped_query_blocks_route_kv_heads(tmp_path, approximated, kept, repeated) -> None:
    """Llama's repeat_kv is folded into the match (kv_repeat): each group must read its query
    heads' kv heads. A group of whole kv groups (heads 0-1 share kv head 0) reads them once and
    repeats them in its node (`repeated` such groups); others get one per query head. With
    multipole of block >= n (exact) any wrong kv head shows as an error; with block 2 only the
    approximated heads change."""
    path = Path(__file__).parents[1] / "corpus" / "exported" / "llama_eager_ts17.onnx"
    feeds = generate_inputs(ir.load(str(path)), 11, batch=2)
    exact = get_method("exact")
    for block, bound in ((64, 1e-6), (2, None)):
        model = load_model(path)
        found = find_attention(model)
        assert all(m.kv_repeat and (m.q_heads, m.kv_heads) == (4, 2) for m in found.matches)
        coarse = get_method("multipole", {"block": block})
        plans = {i: [HeadGroup(coarse, approximated), HeadGroup(exact, kept)] for i in range(2)}
        result = substitute(model, found.matches, exact, plans)
        assert all(r.fallback is None for r in result.rewritten)
        nodes = [n for n in model.graph if n.name and "/heads" in n.name]
        assert sum("_gqa" in n.overload for n in nodes) == 2 * repeated
        onnx.save(ir.serde.serialize_model(model), tmp_path / "planned.onnx")
        blocks = [r.output for r in result.rewritten]
        x = run_with_outputs(path, feeds, blocks)[blocks[0]]
        y = run_with_outputs(tmp_path / "planned.onnx", feeds, blocks)[blocks[0]]
        errors = metrics.per_head(x, y, 4)
        if bound is not None:
            assert max(errors) < bound
        else:
            assert all(errors[h] < 1e-6 for h in kept)
            assert all(errors[h] > 1e-4 for h in approximated)


@pytest.mark.parametrize(("mask", "split"), [("padding", False), ("bias", True)])
def test_a_mask_is_split_by_head_only_when_it_has_heads(mask, split) -> None:
    """A [B, 1, ., S] mask is read whole by every group (expanding it to every head copied a
    score-sized tensor per block); a per-head bias [B, H, S, S] is split with the heads.
    Bidirectional: a causal band is replayed into the bias, whose shape the rewrite does not
    know, and that is still expanded."""
    spec = LayerSpec(causal=False, heads=4, kv_heads=4, head_dim=16, mask=mask)
    proto = attention_layer(spec)
    model = prepare_model(proto)
    found = find_attention(model)
    exact, chunked = get_method("exact"), get_method("exact", {"chunks": 2})  # carry any bias
    plans = {0: [HeadGroup(chunked, (3, 0)), HeadGroup(exact, (1, 2))]}
    substitute(model, found.matches, exact, plans)
    groups = [n for n in model.graph if n.name.endswith(("/heads0", "/heads1"))]
    masks = [group.inputs[3] for group in groups]
    assert len(masks) == 2
    if split:
        assert masks[0] is not masks[1]
        assert [m.producer().op_type for m in masks] == ["Gather", "Slice"]  # heads 0,3; 1-2
    else:
        assert masks[0] is masks[1]
        producer = masks[0].producer()
        assert producer is None or producer.op_type not in ("Expand", "Gather")
    feeds = spec.inputs(2, 23)
    got = _run(ir.serde.serialize_model(model), feeds)
    assert np.abs(got - _run(proto, feeds)).max() < 1e-5


@pytest.mark.parametrize(("heads", "kv_heads"), [(9, 3), (4, 4), (1, 1)])
def test_the_split_priced_is_the_copies_a_plan_writes(heads, kv_heads) -> None:
    """The model the planner times for a block's split gathers each group's q heads and their
    kv heads and puts the q heads back in head order: run, it returns q and the right kv heads."""
    from attnrewrite.plan.measure import _split_model

    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, heads, 5, 8)).astype(np.float32)
    k, v = (rng.standard_normal((1, kv_heads, 5, 8)).astype(np.float32) for _ in range(2))
    proto = _split_model(heads, kv_heads, np.dtype(np.float32))
    out, k0, v0, k1, v1 = ort.InferenceSession(proto.SerializeToString()).run(
        None, {"q": q, "k": k, "v": v}
    )
    per_kv = heads // kv_heads
    np.testing.assert_array_equal(out, q)
    np.testing.assert_array_equal(k0, k[:, [h // per_kv for h in range(0, heads, 2)]])
    np.testing.assert_array_equal(v1, v[:, [h // per_kv for h in range(1, heads, 2)]])
    assert k1.shape[1] == v0.shape[1] - (heads % 2)
