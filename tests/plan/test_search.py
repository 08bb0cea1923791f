"""The plan search on made-up heads: which plan it returns for a budget, and why."""

from __future__ import annotations

import dataclasses
import itertools

from attnrewrite.plan.candidates import EXACT, Candidate
from attnrewrite.plan.choose import HeadChoice
from attnrewrite.plan.search import (
    COST_RESOLUTION,
    Plan,
    Trial,
    admissible,
    trade_off_family,
    uniform_plans,
)

CHEAP = Candidate("window", {"width": 32, "sinks": 4})
MIDDLE = Candidate("multipole", {"block": 32})


def options(errors: list[tuple[float, float]]) -> list[list[HeadChoice]]:
    """One block; per head (error of CHEAP, error of MIDDLE); costs exact 10, 2 and 4."""
    return [
        [
            HeadChoice(0, head, EXACT, 0.0, 10.0),
            HeadChoice(0, head, CHEAP, cheap, 2.0),
            HeadChoice(0, head, MIDDLE, middle, 4.0),
        ]
        for head, (cheap, middle) in enumerate(errors)
    ]


def summed(plan: Plan) -> dict[str, float]:
    """A stand-in for the end-to-end error: the root of the summed squared head errors."""
    return {"relative_l2": sum(p.error**2 for p in plan.picks) ** 0.5}


HEADS = options([(0.5, 0.05), (0.02, 0.01), (0.3, 0.2), (0.01, 0.005)])


def test_trade_off_family_runs_from_cheapest_to_exact() -> None:
    family = trade_off_family(HEADS)
    assert [p.candidate for p in family[0].picks] == [CHEAP] * 4
    assert [p.candidate for p in family[-1].picks] == [EXACT] * 4
    costs = [p.cost for p in family]
    assert costs == sorted(costs)
    errors = [summed(p)["relative_l2"] for p in family]
    assert errors == sorted(errors, reverse=True)


def test_search_returns_the_cheapest_plan_within_budget() -> None:
    for budget in (1.0, 0.3, 0.21, 0.1, 0.03, 1e-3):
        trials: list[Trial] = []
        plans = admissible(HEADS, summed, budget, trials)
        first = next(plans)
        every = trade_off_family(HEADS) + uniform_plans(HEADS)
        fitting = [p.cost for p in every if summed(p)["relative_l2"] <= budget]
        assert first.cost <= min(fitting) * (1 + COST_RESOLUTION)
        assert summed(first)["relative_l2"] <= budget
        rest = list(plans)
        assert all(summed(p)["relative_l2"] <= budget for p in rest)
        costs = [p.cost for p in [first, *rest]]
        assert all(b >= a / (1 + COST_RESOLUTION) for a, b in itertools.pairwise(costs))
        assert [first, *rest][-1].cost == 40.0  # exact everywhere closes the list
        assert len({t.plan.key for t in trials}) == len(trials)  # each plan evaluated once


def test_a_tiny_budget_keeps_every_head_exact() -> None:
    (plan,) = admissible(HEADS, summed, 1e-9, [])
    assert all(p.candidate == EXACT for p in plan.picks), plan.origin


def test_uniform_plan_wins_when_the_trade_off_family_skips_it() -> None:
    """The family goes (cheap, cheap) -> (cheap, middle) -> (exact, middle) -> exact: at a
    budget only (middle, middle) and the exact-heavy plans meet, the single method is found."""
    heads = options([(0.3, 0.29), (0.3, 0.0)])

    def worst_head(plan: Plan) -> dict[str, float]:
        return {"relative_l2": max(p.error for p in plan.picks)}

    family = trade_off_family(heads)
    assert [MIDDLE, MIDDLE] not in [[p.candidate for p in f.picks] for f in family]
    plans = list(admissible(heads, worst_head, 0.295, []))
    assert plans[0].origin == f"uniform {MIDDLE.label}"
    assert plans[0].cost == 8.0
    assert [p.candidate for p in plans[1].picks] == [EXACT, MIDDLE]  # the family's best


def test_plan_groups_put_heads_of_one_candidate_in_one_node() -> None:
    plan = trade_off_family(options([(0.5, 0.05), (0.01, 0.3), (0.5, 0.04)]))[1]
    groups = plan.groups()[0]
    assert sorted(h for g in groups for h in g.heads) == [0, 1, 2]
    assert len(groups) == len({p.candidate.label for p in plan.picks})


def test_plans_the_cost_model_cannot_tell_apart_come_most_accurate_first() -> None:
    """Cheap costs 2.0 and middle 2.02 (1% apart): middle, far more accurate, comes first."""
    heads = [
        [
            HeadChoice(0, head, EXACT, 0.0, 10.0),
            HeadChoice(0, head, CHEAP, 0.2, 2.0),
            HeadChoice(0, head, MIDDLE, 0.05, 2.02),
        ]
        for head in range(2)
    ]
    first = next(admissible(heads, summed, 0.5, []))
    assert [p.candidate for p in first.picks] == [MIDDLE, MIDDLE]


def test_an_exact_head_timed_at_zero_cost_still_plans() -> None:
    """Tiny nodes can time their per-head share as 0 (noise): the search must not divide by it
    (it raised ZeroDivisionError in a report on the tiny example)."""
    heads = [
        [HeadChoice(0, head, EXACT, 0.0, 0.0), HeadChoice(0, head, CHEAP, 0.1, 2.0)]
        for head in range(2)
    ]
    family = trade_off_family(heads, baseline=0.0)
    assert [p.candidate for p in family[-1].picks] == [EXACT, EXACT]
    assert all(p.relative_cost >= 0 for p in family)


def test_a_block_split_into_groups_pays_its_copies_once() -> None:
    """Two heads of one block on different candidates cost the block's split (copies of q, k,
    v and the outputs); the same candidate on both is one node and no split."""
    heads = [
        [
            HeadChoice(0, head, EXACT, 0.0, 10.0, split=3.0),
            HeadChoice(0, head, CHEAP, 0.1, 2.0, split=3.0),
        ]
        for head in range(2)
    ]
    mixed = Plan((heads[0][0], heads[1][1]), "mixed", 1.0)
    same = Plan((heads[0][1], heads[1][1]), "same", 1.0)
    assert mixed.cost == 10.0 + 2.0 + 3.0
    assert same.cost == 2.0 + 2.0


def test_the_trade_off_splits_a_block_only_where_that_pays_for_its_copies() -> None:
    """Head 0 is cheap with CHEAP (error 0.01), head 1 is not (error 0.5): at a moderate
    price of error the heads differ. With copies costing more than CHEAP saves on head 0,
    that block is not split: exact on both is cheaper than paying the split."""
    heads = [
        [HeadChoice(0, 0, EXACT, 0.0, 10.0), HeadChoice(0, 0, CHEAP, 0.01, 2.0)],
        [HeadChoice(0, 1, EXACT, 0.0, 10.0), HeadChoice(0, 1, CHEAP, 0.5, 2.0)],
    ]
    cheap_split = [[dataclasses.replace(c, split=1.0) for c in h] for h in heads]
    dear_split = [[dataclasses.replace(c, split=12.0) for c in h] for h in heads]
    mixed = (EXACT.label, CHEAP.label)
    assert any(plan.key in (mixed, mixed[::-1]) for plan in trade_off_family(cheap_split))
    family = trade_off_family(dear_split)
    assert all(len(set(plan.key)) == 1 for plan in family)
    assert [plan.key for plan in family] == [(CHEAP.label,) * 2, (EXACT.label,) * 2]
