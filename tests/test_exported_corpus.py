"""Models from real exporters (tests/corpus/exported, built by build_exported.py from tiny
random-weight transformers models and hand-written torch modules, both torch.onnx
exporters): every attention block found, described as the model's config says, and the
exact rewrite reproduces onnxruntime's outputs at the export length and another one."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from attnrewrite.inputs import generate_inputs
from attnrewrite.verify import tolerance_for as tolerance
from tests.conftest import find_and_rewrite, max_relative_error, run

CORPUS = Path(__file__).parent / "corpus" / "exported"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
MODELS = {entry["name"]: entry for entry in MANIFEST["models"]}


def _expected_counts(entry: dict, value) -> Counter:
    """How many blocks each group's `value` expects, summed over groups that share it."""
    counts = Counter()
    for group in entry["expected"]["groups"]:
        counts[value(group)] += group["count"]
    return counts


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_model(name: str) -> None:
    entry = MODELS[name]
    proto = onnx.load(str(CORPUS / entry["file"]))
    found, result, rewritten = find_and_rewrite(proto)
    expected = entry["expected"]
    assert len(found.matches) == expected["blocks"], [r.reason for r in found.refusals]
    assert not result.failed
    masks = Counter(m.mask.value for m in found.matches)
    assert masks == _expected_counts(entry, lambda g: g["mask"])
    windows = Counter(m.window for m in found.matches)
    assert windows == _expected_counts(entry, lambda g: g.get("window"))
    softcaps = Counter(m.softcap for m in found.matches)
    assert softcaps == _expected_counts(entry, lambda g: g.get("softcap"))
    scales = Counter(round(m.effective_scale, 5) for m in found.matches)
    assert scales == _expected_counts(
        entry, lambda g: round(g["scale"], 5)
    ) or _same_multiset_with_fp16(found, expected)
    for match in found.matches:
        if match.q_heads is not None:
            assert match.q_heads in {g["q_heads"] for g in expected["groups"]}
            assert match.kv_heads in {g["kv_heads"] for g in expected["groups"]}
    for seq_len in entry.get("verified_seq_lens", [entry["export_seq_len"]]):
        feeds, reference = _inputs_the_original_accepts(proto, seq_len)
        error = max_relative_error(reference, run(rewritten, feeds))
        assert error <= tolerance(ir.from_proto(proto)), (
            f"seq_len={seq_len}: relative error {error:.2e}"
        )


def _inputs_the_original_accepts(proto, seq_len: int):
    """Batch 2, or batch 1 where the exporter wrote a graph that only runs there (the opset-23
    RotaryEmbedding of torch's dynamo exporter)."""
    try:
        feeds = generate_inputs(ir.from_proto(proto), seq_len, batch=2)
        return feeds, run(proto, feeds)
    except InvalidArgument:
        feeds = generate_inputs(ir.from_proto(proto), seq_len, batch=1)
        return feeds, run(proto, feeds)


def _same_multiset_with_fp16(found, expected) -> bool:
    """fp16 graphs store the scale in fp16: compare at fp16 precision."""
    got = sorted(m.effective_scale for m in found.matches)
    want = sorted(g["scale"] for g in expected["groups"] for _ in range(g["count"]))
    return all(abs(a - b) <= 1e-3 * abs(b) for a, b in zip(got, want, strict=True))
