"""`--method auto` on the trained example: loose budgets replace heads, tight ones keep exact,
and the end-to-end error on held-out text stays within the budget."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from attnrewrite.plan.auto import auto_rewrite, demote_worst, split_rows
from attnrewrite.plan.candidates import EXACT, Candidate
from attnrewrite.plan.choose import HeadChoice
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
    final = plan["rounds"][-1]
    assert final["relative_l2"] <= 0.3 and final["top1_disagreement"] <= 0.3
    assert all(h["error"] <= plan["rounds"][-1]["head_budget"] for h in plan["heads"])


def test_tight_budget_keeps_heads_exact(tmp_path, calibration) -> None:
    plan = _auto(tmp_path, 1e-4, calibration)
    assert plan["won"].get("exact", 0) >= 14
    assert plan["rounds"][-1]["relative_l2"] <= 1e-4


def test_plan_is_deterministic(tmp_path, calibration) -> None:
    first = _auto(tmp_path / "1", 0.05, calibration)
    second = _auto(tmp_path / "2", 0.05, calibration)
    assert first["heads"] == second["heads"]


def test_demotion_returns_the_worst_heads_to_exact() -> None:
    cand = Candidate("multipole", {"block": 32})
    picks = [HeadChoice(0, h, cand, error, 1.0) for h, error in enumerate([0.3, 0.1, 0.2, 0.05])]
    picks.append(HeadChoice(1, 0, EXACT, 0.0, 9.0))
    demoted = demote_worst(picks, 0.25, {0: 9.0, 1: 9.0})
    assert [(p.block, p.head) for p in demoted if p.candidate == EXACT] == [(0, 0), (1, 0)]
    assert demoted[0].cost == 9.0 and demoted[0].error == 0.0
    halved = demote_worst(picks, 0.5, {0: 9.0, 1: 9.0})
    assert {p.head for p in halved if p.block == 0 and p.candidate == EXACT} == {0, 2}
