"""Target names and the per-target records folders (no tuning here except the slow test)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from attnrewrite.lower import fft, targets
from attnrewrite.lower.runner import Runner


def test_target_names():
    assert targets.target_name("cuda:sm_80") == "cuda-sm_80"
    assert targets.target_name("sm_90") == "cuda-sm_90"
    name = targets.target_name(targets.make_target("llvm", num_cores=4))
    assert name.startswith("llvm-") and name.endswith("-4c")


def test_records_found_through_env(tmp_path, monkeypatch):
    target = targets.make_target("llvm", num_cores=3)
    folder = tmp_path / targets.target_name(target)
    targets.write_target_json(target, folder)
    (folder / "database_workload.json").write_text("")
    (folder / "database_tuning_record.json").write_text("")
    monkeypatch.setenv("ATTNREWRITE_TARGETS", str(tmp_path))
    assert targets.find_records(target) == folder
    db = targets.database_for(target)
    assert db is not None and len(db.get_all_tuning_records()) == 0
    # an empty database leaves the default lowering: still correct
    x = np.random.default_rng(0).standard_normal((2, 16))
    spec = Runner(fft.rfft_kernel(2, 16, "float64"), target)(x)
    assert np.allclose(spec[..., 0] + 1j * spec[..., 1], np.fft.rfft(x))


@pytest.mark.slow
def test_tune_writes_records_that_builds_pick_up(tmp_path, monkeypatch):
    from attnrewrite.lower import tune

    target = targets.make_target("llvm")
    kernel = fft.rfft_kernel(4, 64, "float32")
    folder = tune.tune_kernel(
        kernel, target, trials=2, records_root=tmp_path, against_defaults=False
    )
    assert (folder / "target.json").is_file()
    monkeypatch.setenv("ATTNREWRITE_TARGETS", str(tmp_path))
    db = targets.database_for(target)
    assert len(db.get_all_tuning_records()) >= 1
    x = np.random.default_rng(0).standard_normal((4, 64))
    spec = Runner(kernel, target)(x)
    ref = np.fft.rfft(x)
    assert np.abs(spec[..., 0] + 1j * spec[..., 1] - ref).max() < 1e-4 * np.abs(ref).max()
