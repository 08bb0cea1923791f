"""Which per-head plan to build: the cheapest one found whose end-to-end error fits the budget.

Each head has options (choose.options): exact, and every candidate measured on it, with its
calibration error e and cost c. Whole-model plans come from two families:

- trade-off plans: at a price lambda per unit of squared error, every head takes the option
  minimising c / c_exact + lambda e^2 (squared: the errors of different heads add roughly in
  energy). lambda = 0 is the cheapest plan, a large lambda is exact everywhere; in between,
  cost rises and error falls along the family, head by head where it pays most;
- uniform plans: one candidate on every head it can run on, exact elsewhere: what a user
  would pick by hand. Trying them is what keeps an auto plan from costing more than any
  single method that meets the same budget on the same inputs.

`admissible` binary-searches the trade-off family for its cheapest member within budget
(error falls along it) and yields, cheapest first, every plan within budget from there and
among the uniform plans: the caller checks each on held-out inputs and keeps the first that
holds there too (exact everywhere, the last, always does). A plan's error is the end-to-end
error of the rewritten model (evaluate.EndToEnd), never a sum of head errors.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from attnrewrite.plan.choose import HeadChoice
from attnrewrite.substitute.methods import ResolvedMethod, get_method
from attnrewrite.substitute.rewrite import HeadGroup

MIN_COST_MS = 1e-3  # a per-head cost timed as 0 (noise on a tiny node) still divides
COST_RESOLUTION = 0.02  # plans this close in predicted cost are a tie: the more accurate first
PRICES = tuple(float(p) for p in np.logspace(-2, 6, 33))  # lambda of the trade-off family


@dataclass(frozen=True)
class Plan:
    picks: tuple[HeadChoice, ...]
    origin: str  # how it was made: "trade-off lambda=...", "uniform <candidate>", "exact"
    baseline: float  # cost of the original attention on every head, for relative costs

    @property
    def cost(self) -> float:
        """Predicted attention time: every head's share, each node's fixed part once (one
        node per block and candidate), and the copies of each block split into groups."""
        nodes = {(p.block, p.candidate.label): p.fixed for p in self.picks}
        labels: dict[int, set[str]] = defaultdict(set)
        for pick in self.picks:
            labels[pick.block].add(pick.candidate.label)
        splits = {p.block: p.split for p in self.picks if len(labels[p.block]) > 1}
        return sum(p.cost for p in self.picks) + sum(nodes.values()) + sum(splits.values())

    @property
    def relative_cost(self) -> float:
        """Predicted attention time against the original attention's."""
        return relative(self.cost, self.baseline)

    @property
    def flops(self) -> float:
        return sum(p.flops for p in self.picks)

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(p.candidate.label for p in self.picks)

    @property
    def won(self) -> dict[str, int]:
        return dict(Counter(p.candidate.label for p in self.picks))

    def groups(self) -> dict[int, list[HeadGroup]]:
        """Heads of each block grouped by their candidate, one group (one node) each."""
        by_block: dict[int, dict[str, list[HeadChoice]]] = defaultdict(lambda: defaultdict(list))
        for pick in self.picks:
            by_block[pick.block][pick.candidate.label].append(pick)
        return {
            block: [
                HeadGroup(_method(same), tuple(p.head for p in same)) for same in groups.values()
            ]
            for block, groups in by_block.items()
        }


def _method(picks: Sequence[HeadChoice]) -> ResolvedMethod:
    """The picks' candidate, reading the fitted rows of their heads where it is fitted."""
    method = get_method(picks[0].candidate.method, picks[0].candidate.params)
    if not picks[0].fitted:
        return method
    return method.with_fitted(
        {k: np.concatenate([p.fitted[k] for p in picks]) for k in picks[0].fitted}
    )


Options = Sequence[Sequence[HeadChoice]]  # per head: exact first, then each candidate


def relative(cost: float, reference: float) -> float:
    """`cost` against `reference`, which noise can time as 0 on a tiny node."""
    return cost / max(reference, MIN_COST_MS)


def exact_plan(options: Options, baseline: float | None = None) -> Plan:
    """Exact attention on every head: within any budget, up to float rounding. Costs are
    relative to `baseline`, by default this plan's own cost."""
    picks = tuple(choices[0] for choices in options)
    plan = Plan(picks, "exact", 1.0)
    return Plan(picks, "exact", plan.cost if baseline is None else baseline)


def _objective(choice: HeadChoice, exact: HeadChoice, price: float) -> float:
    """A head's cost relative to exact's, plus price * error**2."""
    return relative(choice.cost, exact.cost) + price * choice.error**2


def _block_picks(block: Options, price: float) -> list[HeadChoice]:
    """Each head of one block its cheapest choice at `price`; but if that splits the block
    into groups, one candidate on every head instead where that is cheaper, the split's copies
    counted (relative to a head's exact cost, like the rest)."""
    picks = [min(c, key=lambda x, e=c[0]: _objective(x, e, price)) for c in block]
    if len({p.candidate.label for p in picks}) < 2:
        return picks
    best = sum(_objective(p, c[0], price) for p, c in zip(picks, block, strict=True))
    best += relative(picks[0].split, block[0][0].cost)
    common = set.intersection(*({x.candidate.label for x in c} for c in block))
    for label in sorted(common):
        same = [next(x for x in c if x.candidate.label == label) for c in block]
        total = sum(_objective(p, c[0], price) for p, c in zip(same, block, strict=True))
        if total < best:
            best, picks = total, same
    return picks


def trade_off_family(options: Options, baseline: float | None = None) -> list[Plan]:
    """Plans for increasing prices of error, cheapest first, duplicates dropped, ending with
    exact everywhere."""
    plans: list[Plan] = []
    exact = exact_plan(options, baseline)
    blocks: dict[int, list[Sequence[HeadChoice]]] = defaultdict(list)
    for choices in options:
        blocks[choices[0].block].append(choices)
    for price in (0.0, *PRICES):
        chosen = {
            (p.block, p.head): p for block in blocks.values() for p in _block_picks(block, price)
        }
        picks = tuple(chosen[c[0].block, c[0].head] for c in options)
        plan = Plan(picks, f"trade-off lambda={price:.3g}", exact.baseline)
        if not plans or plans[-1].key != plan.key:
            plans.append(plan)
    if plans[-1].key != exact.key:
        plans.append(exact)
    return plans


def uniform_plans(options: Options, baseline: float | None = None) -> list[Plan]:
    """One plan per candidate: that candidate wherever it ran, exact elsewhere."""
    base = exact_plan(options, baseline).baseline
    labels = dict.fromkeys(c.candidate.label for choices in options for c in choices[1:])
    plans = []
    for label in labels:
        picks = tuple(
            next((c for c in choices if c.candidate.label == label), choices[0])
            for choices in options
        )
        plans.append(Plan(picks, f"uniform {label}", base))
    return sorted(plans, key=lambda p: p.cost)


@dataclass(frozen=True)
class Trial:
    plan: Plan
    error: dict[str, float]
    within: bool


def admissible(
    options: Options,
    error_of: Callable[[Plan], dict[str, float]],
    budget: float,
    trials: list[Trial],
    baseline: float | None = None,
) -> Iterator[Plan]:
    """Plans within `budget`, cheapest first, ending with exact everywhere; every plan
    evaluated is appended to `trials`.

    Candidates: the trade-off family from its cheapest member within budget (binary search)
    on, and every uniform plan no costlier than exact. The caller takes them in turn until
    one also holds on its held-out inputs, so a single method within budget on both is never
    passed over for a costlier plan. Plans within COST_RESOLUTION of each other in predicted
    cost come most accurate first: the cost model cannot tell them apart (it is off by
    0.5-1.5x against measured times), the errors can."""
    errors: dict[tuple[str, ...], float] = {}

    def error(plan: Plan) -> float:
        if plan.key not in errors:
            measured = error_of(plan)
            errors[plan.key] = max(measured.values())
            trials.append(Trial(plan, measured, errors[plan.key] <= budget))
        return errors[plan.key]

    family = trade_off_family(options, baseline)
    exact = family[-1]
    errors[exact.key] = 0.0  # exact everywhere is within any budget (up to float rounding)
    low, high = 0, len(family) - 1
    while low < high:
        middle = (low + high) // 2
        if error(family[middle]) <= budget:
            high = middle
        else:
            low = middle + 1
    uniform = uniform_plans(options, baseline)
    pool = {p.key: p for p in (*family[high:], *uniform) if p.cost <= exact.cost}
    remaining = sorted(pool.values(), key=lambda p: p.cost)
    while remaining:
        tied = [p for p in remaining if p.cost <= remaining[0].cost * (1 + COST_RESOLUTION)]
        remaining = remaining[len(tied) :]
        fitting = [p for p in tied if error(p) <= budget]
        yield from sorted(fitting, key=lambda p: (error(p), p.cost))
