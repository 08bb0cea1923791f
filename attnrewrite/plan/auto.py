"""`--method auto --max-error E`: choose per head, verify end to end on held-out inputs.

calibration inputs -> split (choose | held out)
capture each block's q, k, v, mask                 (calibrate)
measure every candidate on every head              (choose.measure, choose.options)
plans within budget on the choose half, cheapest first  (search, evaluate)
the first that also holds on the held-out half and runs faster than exact attention
everywhere, whole model at the target length (speed); exact everywhere at worst
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from attnrewrite.errors import AttnRewriteError
from attnrewrite.loading import default_opset, load_model
from attnrewrite.memory import release_freed
from attnrewrite.methods import METHODS
from attnrewrite.patterns import find_attention
from attnrewrite.pipeline import VERIFY_SEQ_LEN, RewriteOutcome, rewrite_model
from attnrewrite.plan.calibrate import capture
from attnrewrite.plan.candidates import (
    ORIGINAL,
    Candidate,
    default_candidates,
    fitted_candidates,
)
from attnrewrite.plan.choose import HeadChoice, measure
from attnrewrite.plan.choose import options as head_options
from attnrewrite.plan.evaluate import EndToEnd
from attnrewrite.plan.measure import Bench
from attnrewrite.plan.search import Plan, Trial, admissible, exact_plan, relative
from attnrewrite.plan.speed import Measured, SpeedCheck
from attnrewrite.plan.workspace import Workspace
from attnrewrite.progress import steps
from attnrewrite.report.inputs import ReportInputs
from attnrewrite.substitute.methods import get_method

MAX_TIMED = 3  # plans timed whole before exact everywhere is kept


def check_budget(budget: float) -> None:
    if not budget > 0:
        raise AttnRewriteError(f"--max-error must be > 0, got {budget}")


def split_rows(inputs: ReportInputs) -> tuple[ReportInputs, ReportInputs]:
    """First half of the batch to choose on, second half held out for the end-to-end check."""
    batch = {v.shape[0] for v in inputs.feeds.values() if v.ndim >= 1}
    if len(batch) != 1 or next(iter(batch)) < 2:
        raise AttnRewriteError(
            "--method auto needs a calibration batch of at least 2 sequences (half to choose, "
            "half held out); use --batch or a larger --calib file"
        )
    half = next(iter(batch)) // 2
    first = {k: v[:half] for k, v in inputs.feeds.items()}
    second = {k: v[half:] for k, v in inputs.feeds.items()}
    return (
        ReportInputs(first, inputs.source, inputs.path),
        ReportInputs(second, inputs.source, inputs.path),
    )


class Planner:
    """Everything a plan is chosen from, measured once: the model and its blocks, each head's
    options, and the two end-to-end evaluators. `plan(budget)` can then be asked for many
    budgets (the Pareto benchmark does) without calibrating again. A planner holds a
    workspace folder (the model's weights, once): use it in a `with` block, or `close()` it.

    Errors are measured at the calibration inputs' length, so that is the target length: a
    plan chosen at 64 tokens says nothing about 4096 (a 64-token multipole block is exact
    there). Costs are measured at `seq_len` (default: that length), the length the plan will
    run at; the report then states both lengths."""

    def __init__(
        self,
        path: Path,
        calibration: ReportInputs,
        seq_len: int | None = None,
        candidates: Sequence[Candidate] | None = None,
        threads: int = 0,
        costs: Path | None = None,
        check_speed: bool = True,
        fitted: bool = False,
    ) -> None:
        """`costs`: a cost table file, read where it exists and written back extended;
        `check_speed`: keep a plan only if the whole model runs faster with it than with exact
        attention everywhere (plan.speed), timed at the target length; `fitted`: also offer
        the fitted candidates (fitted_candidates, `--calibrate`)."""
        self.path, self.calibration = path, calibration
        self.calibration_len = int(calibration.describe()["seq_len"])
        self.cost_len = seq_len or self.calibration_len
        self.candidates = tuple(
            default_candidates(self.cost_len) if candidates is None else candidates
        ) + (fitted_candidates(self.cost_len) if fitted else ())
        usable = [c for c in self.candidates if not _no_body(c)]
        self.min_opset = max((METHODS[c.method].onnx.min_opset for c in usable), default=None)
        choose_on, held_out = split_rows(calibration)
        model = load_model(path, min_opset=self.min_opset or 13)
        found = find_attention(model)
        if not found.matches:
            raise AttnRewriteError(f"no softmax attention found in {path}")
        self.outputs = [m.output for m in found.matches]
        self.workspace = Workspace(model, found.matches, threads)
        del model, found  # the workspace holds the model from here on
        try:
            self._measure(usable, choose_on, held_out, threads, costs)
            self.speed = SpeedCheck(self.workspace, self.cost_len) if check_speed else None
        except BaseException:
            self.close()
            raise

    def _measure(
        self,
        usable: Sequence[Candidate],
        choose_on: ReportInputs,
        held_out: ReportInputs,
        threads: int,
        costs: Path | None,
    ) -> None:
        captured = capture(self.workspace, choose_on.feeds)
        bench = Bench(default_opset(self.workspace.base), threads)
        if costs is not None and costs.exists():
            bench.load(costs)
        measured = []
        with steps("measuring candidates per head", len(captured.blocks)) as advance:
            for block in captured.blocks:
                measured.append(measure(bench, block, usable, self.cost_len))
                advance(f"block {block.index}")
        self.options = [c for m in measured for c in head_options(m, bench, self.cost_len)]
        if costs is not None:
            bench.save(costs)
        self.baseline = sum(m.original.ms(m.block.heads) for m in measured)
        self.baseline_flops = sum(
            m.block.heads * ORIGINAL.flops(self.cost_len, m.block.q.shape[-1], m.block.is_causal)
            for m in measured
        )
        self.refused = {f"block {m.block.index}": m.reasons for m in measured if m.reasons}
        outputs = captured.outputs
        del captured, measured  # the blocks' operands: planning needs only their errors
        self.choosing = EndToEnd(self.workspace, choose_on, outputs)
        self.checking = EndToEnd(self.workspace, held_out)

    def __enter__(self) -> Planner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the workspace folder and drop what planning holds (the reference outputs, the
        timing sessions and their memory arenas): a rewrite after it has the memory to itself.
        `plan` cannot be asked again."""
        self.workspace.close()
        for name in ("options", "choosing", "checking", "speed"):
            self.__dict__.pop(name, None)
        release_freed()

    def plan(self, budget: float) -> tuple[Plan, dict[str, object]]:
        """The cheapest plan found within `budget` on both halves, and its record for
        rewrite.json (the rounds, every plan tried, which head got what)."""
        check_budget(budget)
        rounds: list[dict[str, object]] = []
        trials: list[Trial] = []
        exact = exact_plan(self.options, self.baseline)
        measured: Measured | None = None
        timed = 0
        for plan in admissible(
            self.options, lambda p: self.choosing.error(p.groups()), budget, trials, self.baseline
        ):
            held = self.checking.error(plan.groups())
            rounds.append(
                {
                    "plan": plan.origin,
                    "relative_cost": plan.relative_cost,
                    "held_out": held,
                    "won": plan.won,
                }
            )
            if plan.key == exact.key:
                break  # exact everywhere: within any budget (float rounding)
            if max(held.values()) > budget:
                continue
            if self.speed is None:
                break  # within budget on both halves
            measured = self.speed.measure(plan.groups())
            rounds[-1]["measured"] = measured.describe()
            if measured.faster:
                break  # and faster than exact attention, whole model
            measured, timed = None, timed + 1
            if timed == MAX_TIMED:  # the next plans are predicted costlier still
                plan, held = exact, self.checking.error(exact.groups())
                break
        record = {
            "max_error": budget,
            "calibration_seq_len": self.calibration_len,
            "cost_seq_len": self.cost_len,
            "calibration": self.calibration.describe(),
            "relative_cost": plan.relative_cost,
            "predicted_ms": plan.cost,
            "exact_ms": exact.cost,
            "original_ms": self.baseline,
            "flops_removed": 1.0 - plan.flops / self.baseline_flops,
            "held_out": held,
            "measured": None if measured is None else _measured(measured, plan, exact),
            "rounds": rounds,
            "trials": [_trial(t) for t in trials],
            "heads": [
                _describe(p, self.outputs[p.block], e)
                for p, e in zip(plan.picks, exact.picks, strict=True)
            ],
            "won": plan.won,
            "candidates_not_usable": {c.label: _no_body(c) for c in self.candidates if _no_body(c)},
            "refused": self.refused,
        }
        return plan, record

    def rewrite(
        self,
        plan: Plan,
        record: Mapping[str, object],
        out_dir: Path,
        verify: bool = True,
        verify_seq_len: int = VERIFY_SEQ_LEN,
    ) -> RewriteOutcome:
        """Write the model with `plan` (and `record` in rewrite.json) into `out_dir`."""
        extra = {
            "method": {"name": "auto", "params": {"max_error": record["max_error"]}},
            "auto": dict(record),
        }
        outcome = rewrite_model(
            self.path,
            get_method("exact"),
            out_dir,
            verify,
            verify_seq_len,
            plans=plan.groups(),
            extra=extra,
            min_opset=self.min_opset,
        )
        line = _plan_line(plan, record)
        return RewriteOutcome(outcome.out_dir, outcome.report, outcome.summary + line)


def _measured(measured: Measured, plan: Plan, exact: Plan) -> dict[str, object]:
    """The kept plan's whole-model time against exact attention everywhere, and the speed-up
    its node costs predicted: exact's measured time, less its attention's predicted time,
    plus the plan's."""
    predicted_ms = measured.exact_ms - exact.cost + plan.cost
    predicted = measured.exact_ms / predicted_ms if predicted_ms > 0 else None
    return {
        **measured.describe(),
        "predicted_speedup_vs_exact": predicted,
        "measured_over_predicted": measured.speedup / predicted if predicted else None,
    }


def _no_body(cand: Candidate) -> str | None:
    """Why a candidate's setting has no ONNX body (its method's declaration says)."""
    return METHODS[cand.method].onnx.refuses(cand.resolved())


def auto_rewrite(
    path: Path,
    out_dir: Path,
    budget: float,
    calibration: ReportInputs,
    seq_len: int | None = None,
    candidates: Sequence[Candidate] | None = None,
    verify: bool = True,
    verify_seq_len: int = VERIFY_SEQ_LEN,
    costs: Path | None = None,
    check_speed: bool = True,
    fitted: bool = False,
) -> RewriteOutcome:
    """`--method auto`: calibrate, plan for `budget`, write the rewritten model."""
    check_budget(budget)  # before calibrating, which takes a while
    with Planner(
        path,
        calibration,
        seq_len,
        candidates,
        costs=costs,
        check_speed=check_speed,
        fitted=fitted,
    ) as planner:
        plan, record = planner.plan(budget)
    return planner.rewrite(plan, record, out_dir, verify, verify_seq_len)


def _plan_line(plan: Plan, record: Mapping[str, object]) -> str:
    won = ", ".join(f"{label} {n}" for label, n in sorted(plan.won.items(), key=lambda x: -x[1]))
    held = record["held_out"]
    line = (
        f"\nplan for {len(plan.picks)} heads: {won}; predicted attention time "
        f"{plan.relative_cost:.2f}x the original's (measured per node); held-out rel L2 "
        f"{held['relative_l2']:.2g}, top-1 disagreement {held['top1_disagreement']:.1%}"
    )
    measured = record.get("measured")
    if measured:
        line += (
            f"; whole model at n={measured['seq_len']}: {measured['speedup_vs_exact']:.2f}x "
            "faster than exact attention everywhere"
        )
    slower = [
        r for r in record["rounds"] if r.get("measured") and not Measured.fast_enough(r["measured"])
    ]
    if slower and not measured:
        line += (
            f"; {len(slower)} plan(s) within budget ran no faster than exact attention "
            "everywhere, whole model: exact kept"
        )
    return line


def _trial(trial: Trial) -> dict[str, object]:
    return {
        "plan": trial.plan.origin,
        "relative_cost": trial.plan.relative_cost,
        **trial.error,
        "within": trial.within,
    }


def _describe(pick: HeadChoice, output: str, exact: HeadChoice) -> dict[str, object]:
    return {
        "block": pick.block,
        "output": output,
        "head": pick.head,
        "method": pick.candidate.method,
        "params": pick.candidate.params,
        **({"fitted": {k: v[0].tolist() for k, v in pick.fitted.items()}} if pick.fitted else {}),
        "error": float(np.float64(pick.error)),
        "cost_ms": pick.cost,
        "flops": pick.flops,
        "relative_cost": relative(pick.cost, exact.cost),
    }
