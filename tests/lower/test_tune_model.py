"""Whole-model tuning: records for a rewritten layer land in the target's folder (only those
faster than the default schedule, when asked), a later build for that target applies them, and
the tuned build still computes onnxruntime's output.

Slow: 67 s on an idle 2-core machine (100-170 s under load), most of it meta_schedule's
one-off import of TVM's tensor intrinsics (22 s) and its builder/runner worker processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

pytest.importorskip("tvm")

from attnrewrite.layers import LayerSpec, attention_layer
from attnrewrite.loading import prepare_model
from attnrewrite.lower import build, load, targets
from attnrewrite.lower.relax_import import legalize, prepare, to_relax
from attnrewrite.lower.tune import default_seconds, merge_best
from attnrewrite.lower.tune_model import tune_model
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import substitute

SPEC = LayerSpec(heads=2, kv_heads=2, head_dim=16)
DIMS = {"batch": 1, "q_len": 32, "kv_len": 32}


def multipole_layer(folder: Path) -> Path:
    method = get_method("multipole")
    model = prepare_model(attention_layer(SPEC), min_opset=method.min_opset)
    (block,) = substitute(model, find_attention(model).matches, method).rewritten
    assert not block.fallback
    path = folder / "multipole.onnx"
    onnx.save(ir.serde.serialize_model(model), path)
    return path


@pytest.mark.slow
def test_tuned_records_apply_and_the_build_matches_onnxruntime(tmp_path, monkeypatch):
    from tvm import relax, tirx, transform

    model = multipole_layer(tmp_path)
    target = targets.make_target("llvm")
    folder, count = tune_model(
        model, DIMS, target, trials=1, per_task=1, records_root=tmp_path, against_defaults=False
    )
    assert folder == tmp_path / targets.target_name(target)
    assert count >= 1
    monkeypatch.setenv("ATTNREWRITE_TARGETS", str(tmp_path))
    db = targets.database_for(target)
    records = db.get_all_tuning_records()
    assert len(records) == count
    assert all(r.run_secs and 0 < float(r.run_secs[0]) < 1 for r in records)

    # against the defaults: a record is kept only where it is faster than the default schedule
    assert merge_best(db, tmp_path / "none", baseline=lambda mod: 0.0) == 0
    assert merge_best(db, tmp_path / "all", baseline=lambda mod: float("inf")) == count
    assert 0 < default_seconds(records[0].workload.mod, target) < 1

    # the build applies them: the legalized functions compile_relax sees are the workloads
    mod = legalize(to_relax(prepare(model, DIMS)), target)
    with target, db, transform.PassContext(opt_level=3):
        applied = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    scheduled = [
        f
        for f in applied.functions.values()
        if isinstance(f, tirx.PrimFunc) and f.attrs and "tirx.is_scheduled" in f.attrs
    ]
    assert len(scheduled) == count

    feeds = SPEC.inputs(1, 32)
    got = load(build(model, target, tmp_path / "art", DIMS)).run(feeds)[0]
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.slow
def test_time_limit_stops_measuring_and_keeps_what_was_measured(tmp_path):
    """10,000 trials asked, 1 s allowed: the run ends after the opening round (one batch per
    task), and what it measured is in the work dir's database and merged."""
    from tvm.s_tir import meta_schedule as ms

    model = multipole_layer(tmp_path)
    target = targets.make_target("llvm")
    work = tmp_path / "work"
    _, count = tune_model(
        model,
        DIMS,
        target,
        trials=10_000,
        per_task=1,
        records_root=tmp_path,
        against_defaults=False,
        work_dir=str(work),
        time_limit=1.0,
    )
    measured = ms.database.JSONDatabase(work_dir=str(work)).get_all_tuning_records()
    tasks = ms.relax_integration.extract_tasks(
        legalize(to_relax(prepare(model, DIMS)), target), target
    )
    assert len(tasks) <= len(measured) < 3 * len(tasks)
    assert 1 <= count <= len(tasks)
