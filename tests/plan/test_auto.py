"""`--method auto` on the trained example: loose budgets replace heads, tight ones keep exact,
and the end-to-end error on held-out text stays within the budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from attnrewrite.plan.auto import MAX_TIMED, Planner, auto_rewrite, split_rows
from attnrewrite.plan.candidates import Candidate
from attnrewrite.plan.search import COST_RESOLUTION, uniform_plans
from attnrewrite.plan.speed import MIN_SPEEDUP, Measured, SpeedCheck
from attnrewrite.report.build import compare_models
from attnrewrite.report.inputs import from_text

MODEL = Path(__file__).parents[2] / "examples" / "tiny_lm" / "tiny-lm.onnx"
TEXT = Path(json.__file__).with_name("decoder.py")  # Python source, as the model was trained on
CANDIDATES = (
    Candidate("multipole", {"block": 32}),
    Candidate("multipole", {"block": 64}),
    Candidate("polysketch", {}),
)
SEQ_LEN = 256
COST_LEN = 2048  # costs are measured where the plan will run: there multipole saves time


@pytest.fixture(scope="module")
def calibration():
    return from_text(ir.load(str(MODEL)), TEXT, "bytes", SEQ_LEN, batch=4)


@pytest.fixture(scope="module")
def costs(tmp_path_factory) -> Path:
    """One cost table for the module: plans from the same measurements are repeatable."""
    return tmp_path_factory.mktemp("costs") / "costs.json"


def _auto(tmp: Path, budget: float, calibration, costs: Path, check_speed: bool = False) -> dict:
    """The plan for `budget`; by default without the whole-model speed check, whose outcome
    depends on the machine's load (tested on its own below)."""
    outcome = auto_rewrite(
        MODEL,
        tmp / f"b{budget}",
        budget,
        calibration,
        COST_LEN,
        candidates=CANDIDATES,
        costs=costs,
        check_speed=check_speed,
    )
    return outcome.report["auto"]


def _exact_heads(plan: dict) -> int:
    return sum(n for label, n in plan["won"].items() if label.startswith("exact"))


def test_held_out_rows_are_not_the_chosen_ones(calibration) -> None:
    chosen, held = split_rows(calibration)
    ids_a, ids_b = chosen.feeds["input_ids"], held.feeds["input_ids"]
    assert ids_a.shape == ids_b.shape == (2, SEQ_LEN)
    assert (ids_a != ids_b).any()


def test_loose_budget_replaces_most_heads_within_budget(tmp_path, calibration, costs) -> None:
    plan = _auto(tmp_path, 0.3, calibration, costs)
    assert 16 - _exact_heads(plan) >= 12
    assert plan["held_out"]["relative_l2"] <= 0.3
    assert plan["held_out"]["top1_disagreement"] <= 0.3
    # measured node times: cheaper than keeping every head exact, and than the original
    assert plan["predicted_ms"] < plan["exact_ms"] < plan["original_ms"]
    assert plan["relative_cost"] == pytest.approx(plan["predicted_ms"] / plan["original_ms"])
    assert 0.5 < plan["flops_removed"] < 1


def test_tight_budget_keeps_heads_exact(tmp_path, calibration, costs) -> None:
    plan = _auto(tmp_path, 1e-4, calibration, costs)
    assert _exact_heads(plan) >= 14
    assert plan["held_out"]["relative_l2"] <= 1e-4


def test_written_model_has_the_error_the_planner_measured(tmp_path, calibration, costs) -> None:
    """The plan's held-out error is the rewritten file's error on those rows, not an estimate."""
    plan = _auto(tmp_path, 0.1, calibration, costs)
    _, held_out = split_rows(calibration)
    outputs, _, _ = compare_models(MODEL, tmp_path / "b0.1" / "model.onnx", held_out)
    assert outputs[0]["relative_l2"] == pytest.approx(plan["held_out"]["relative_l2"], rel=1e-6)


def test_plan_is_repeatable_from_one_cost_table(tmp_path, calibration, costs) -> None:
    first = _auto(tmp_path / "1", 0.05, calibration, costs)
    second = _auto(tmp_path / "2", 0.05, calibration, costs)
    assert first["heads"] == second["heads"]


def test_no_single_method_within_budget_is_cheaper(calibration, costs) -> None:
    """The auto plan costs no more (within the cost resolution) than any one candidate on
    every head that meets the budget on both halves of the calibration batch."""
    budget, fitting = 0.1, 0
    with Planner(
        MODEL, calibration, COST_LEN, candidates=CANDIDATES, costs=costs, check_speed=False
    ) as planner:
        plan, _ = planner.plan(budget)
        for uniform in uniform_plans(planner.options, planner.baseline):
            groups = uniform.groups()
            errors = [planner.choosing.error(groups), planner.checking.error(groups)]
            if all(max(e.values()) <= budget for e in errors):
                fitting += 1
                # plans within the cost resolution of each other are tied (most accurate first)
                assert plan.cost <= uniform.cost * (1 + COST_RESOLUTION), uniform.origin
    assert fitting >= 1  # the comparison is not empty: some single method fits this budget


def test_a_plan_is_kept_only_if_the_whole_model_runs_faster(tmp_path, calibration, costs) -> None:
    """Timed whole at the target length against exact attention everywhere: the plan kept is
    measured faster (its record says by how much and what its node costs predicted)."""
    plan = _auto(tmp_path, 0.3, calibration, costs, check_speed=True)
    measured = plan["measured"]
    if measured is None:  # every plan within budget ran no faster: exact everywhere
        assert _exact_heads(plan) == 16
        assert any("measured" in r for r in plan["rounds"])
    else:
        assert measured["seq_len"] == COST_LEN
        assert measured["speedup_vs_exact"] == pytest.approx(
            measured["exact_ms"] / measured["plan_ms"]
        )
        assert measured["speedup_vs_exact"] >= MIN_SPEEDUP
        assert measured["predicted_speedup_vs_exact"] > 1  # node costs rate it cheaper
        assert _exact_heads(plan) < 16


def test_plans_measured_slower_than_exact_are_dropped(calibration, costs, monkeypatch) -> None:
    """A plan within budget that does not run faster than exact attention everywhere is not
    kept: after MAX_TIMED such plans, exact everywhere is (zero error, chunked exact's speed)."""
    timed = []

    def slower(self, plans) -> Measured:
        timed.append(plans)
        return Measured(plan_ms=2.0, exact_ms=1.0, seq_len=COST_LEN, rounds=1)

    monkeypatch.setattr(SpeedCheck, "measure", slower)
    with Planner(MODEL, calibration, COST_LEN, candidates=CANDIDATES, costs=costs) as planner:
        plan, record = planner.plan(0.3)
    assert len(timed) == MAX_TIMED
    assert all(any(g.method.name != "exact" for gs in p.values() for g in gs) for p in timed)
    assert all(p.candidate.method == "exact" for p in plan.picks)
    assert record["measured"] is None
    assert sum("measured" in r for r in record["rounds"]) == MAX_TIMED
    assert record["held_out"]["relative_l2"] < 1e-5


def test_fitted_candidates_are_measured_per_head_and_written(calibration, costs) -> None:
    """With --calibrate the planner fits multipole per block (plan.fit) and measures the
    calibrated node: on the example its heads err less than plain multipole's, and a plan of
    them is written with each group's fitted rows and runs closer to the original."""
    plain = Candidate("multipole", {"block": 32})
    fitted = Candidate("multipole", {"block": 32}, fitted=True)
    with Planner(MODEL, calibration, COST_LEN, candidates=(plain,), costs=costs, fitted=False) as p:
        assert [c.label for c in p.candidates] == ["multipole(block=32)"]
    with Planner(MODEL, calibration, COST_LEN, candidates=(plain, fitted), costs=costs) as planner:
        errors = {
            c.label: [x.error for head in planner.options for x in head if x.candidate == c]
            for c in (plain, fitted)
        }
        assert np.median(errors[fitted.label]) < 0.95 * np.median(errors[plain.label])
        uniform = {p.origin: p.groups() for p in uniform_plans(planner.options, planner.baseline)}
        groups = uniform[f"uniform {fitted.label}"]
        for block, (group,) in groups.items():
            assert group.method.fitted["expansion"].shape == (len(group.heads), 32), block
        end_to_end = [
            planner.choosing.error(uniform[f"uniform {c.label}"]) for c in (plain, fitted)
        ]
        assert end_to_end[1]["relative_l2"] < end_to_end[0]["relative_l2"]
