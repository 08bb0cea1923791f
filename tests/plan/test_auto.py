"""`--method auto` on the trained example: loose budgets replace heads, tight ones keep exact,
and the end-to-end error on held-out text stays within the budget."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from attnrewrite.plan.auto import Planner, auto_rewrite, split_rows
from attnrewrite.plan.candidates import Candidate
from attnrewrite.plan.search import uniform_plans
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


@pytest.fixture(scope="module")
def calibration():
    return from_text(onnx.load(str(MODEL)), TEXT, "bytes", SEQ_LEN, batch=4)


def _auto(tmp: Path, budget: float, calibration) -> dict:
    outcome = auto_rewrite(MODEL, tmp / f"b{budget}", budget, calibration, candidates=CANDIDATES)
    return outcome.report["auto"]


def test_held_out_rows_are_not_the_chosen_ones(calibration) -> None:
    chosen, held = split_rows(calibration)
    ids_a, ids_b = chosen.feeds["input_ids"], held.feeds["input_ids"]
    assert ids_a.shape == ids_b.shape == (2, SEQ_LEN)
    assert (ids_a != ids_b).any()


def test_loose_budget_replaces_most_heads_within_budget(tmp_path, calibration) -> None:
    plan = _auto(tmp_path, 0.3, calibration)
    replaced = sum(n for label, n in plan["won"].items() if label != "exact")
    assert replaced >= 12  # of 16 heads
    assert plan["held_out"]["relative_l2"] <= 0.3
    assert plan["held_out"]["top1_disagreement"] <= 0.3
    assert plan["relative_cost"] < 0.5


def test_tight_budget_keeps_heads_exact(tmp_path, calibration) -> None:
    plan = _auto(tmp_path, 1e-4, calibration)
    assert plan["won"].get("exact", 0) >= 14
    assert plan["held_out"]["relative_l2"] <= 1e-4


def test_written_model_has_the_error_the_planner_measured(tmp_path, calibration) -> None:
    """The plan's held-out error is the rewritten file's error on those rows, not an estimate."""
    plan = _auto(tmp_path, 0.1, calibration)
    _, held_out = split_rows(calibration)
    outputs, _, _ = compare_models(MODEL, tmp_path / "b0.1" / "model.onnx", held_out)
    assert outputs[0]["relative_l2"] == pytest.approx(plan["held_out"]["relative_l2"], rel=1e-6)


def test_plan_is_deterministic(tmp_path, calibration) -> None:
    first = _auto(tmp_path / "1", 0.05, calibration)
    second = _auto(tmp_path / "2", 0.05, calibration)
    assert first["heads"] == second["heads"]


def test_no_single_method_within_budget_is_cheaper(calibration) -> None:
    """The auto plan costs no more than any one candidate on every head that also meets the
    budget on both halves of the calibration batch."""
    planner = Planner(MODEL, calibration, candidates=CANDIDATES)
    budget = 0.1
    plan, _ = planner.plan(budget)
    fitting = 0
    for uniform in uniform_plans(planner.options):
        groups = uniform.groups()
        errors = [planner.choosing.error(groups), planner.checking.error(groups)]
        if all(max(e.values()) <= budget for e in errors):
            fitting += 1
            assert plan.cost <= uniform.cost, uniform.origin
    assert fitting >= 1  # the comparison is not empty: some single method fits this budget
