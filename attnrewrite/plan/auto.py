"""`--method auto --max-error E`: choose per head, verify end to end on held-out inputs.

calibration inputs -> split (choose | held out)
capture each block's q, k, v, mask           (calibrate)
measure every candidate on every head        (choose.measure)
per head: cheapest candidate within budget   (choose.choose)
rewrite with the plan, compare with the original on the held-out half;
over budget -> halve the per-head budget and plan again (twice), then return the worst
approximated heads to exact, a quarter per round, until the budget holds
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from attnrewrite.errors import AttnRewriteError
from attnrewrite.loading import load_model
from attnrewrite.patterns import find_attention
from attnrewrite.pipeline import MODEL_FILE, VERIFY_SEQ_LEN, RewriteOutcome, rewrite_model
from attnrewrite.plan.calibrate import capture
from attnrewrite.plan.candidates import DEFAULT_CANDIDATES, EXACT, Candidate
from attnrewrite.plan.choose import HeadChoice, choose, measure
from attnrewrite.progress import steps
from attnrewrite.report.build import compare_models
from attnrewrite.report.inputs import ReportInputs
from attnrewrite.substitute.methods import BODIES, get_method
from attnrewrite.substitute.rewrite import HeadGroup

TIGHTEN = 0.5  # per-head budget factor of the first HALVINGS rounds
HALVINGS = 2
DEMOTE = 0.25  # then the worst quarter of the approximated heads becomes exact, per round


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


def end_to_end(original: Path, rewritten: Path, held_out: ReportInputs) -> dict[str, float]:
    """Worst relative L2 over outputs and top-1 disagreement of logits, on held-out inputs."""
    outputs, _, _ = compare_models(original, rewritten, held_out)
    worst = max((o["relative_l2"] for o in outputs), default=0.0)
    logits = [o["logits"]["top1_agreement"] for o in outputs if o["logits"]]
    return {"relative_l2": worst, "top1_disagreement": 1.0 - min(logits, default=1.0)}


def demote_worst(
    picks: Sequence[HeadChoice], share: float, exact_costs: Mapping[int, float]
) -> list[HeadChoice]:
    """The worst `share` of the approximated heads (by measured error, at least one) exact."""
    approximated = sorted(
        (p for p in picks if p.candidate != EXACT), key=lambda p: p.error, reverse=True
    )
    worst = {
        (p.block, p.head) for p in approximated[: max(1, math.ceil(share * len(approximated)))]
    }
    return [
        HeadChoice(p.block, p.head, EXACT, 0.0, exact_costs[p.block])
        if (p.block, p.head) in worst
        else p
        for p in picks
    ]


def plan_groups(picks: Sequence[HeadChoice]) -> dict[int, list[HeadGroup]]:
    """Heads of each block grouped by their chosen candidate, one group per candidate."""
    by_block: dict[int, dict[str, list[HeadChoice]]] = defaultdict(lambda: defaultdict(list))
    for pick in picks:
        by_block[pick.block][pick.candidate.label].append(pick)
    plans = {}
    for block, groups in by_block.items():
        plans[block] = [
            HeadGroup(
                get_method(chosen[0].candidate.method, chosen[0].candidate.params),
                tuple(p.head for p in chosen),
            )
            for chosen in groups.values()
        ]
    return plans


def auto_rewrite(
    path: Path,
    out_dir: Path,
    budget: float,
    calibration: ReportInputs,
    seq_len: int | None = None,
    candidates: Sequence[Candidate] = DEFAULT_CANDIDATES,
    verify: bool = True,
    verify_seq_len: int = VERIFY_SEQ_LEN,
) -> RewriteOutcome:
    """Errors are measured at the calibration inputs' length, so that is the target length:
    a plan chosen at 64 tokens says nothing about 4096 (a 64-token multipole block is exact
    there). Costs may be taken at a longer `seq_len` (what the plan will run at) only when
    the user says so explicitly; the report then states both lengths."""
    if not budget > 0:
        raise AttnRewriteError(f"--max-error must be > 0, got {budget}")
    usable = [c for c in candidates if c.method in BODIES]
    min_opset = 17 if any(c.method == "convbasis" for c in usable) else None
    model = load_model(path, min_opset=min_opset or 13)
    found = find_attention(model)
    if not found.matches:
        raise AttnRewriteError(f"no softmax attention found in {path}")
    choose_on, held_out = split_rows(calibration)
    blocks = capture(model, found.matches, choose_on.feeds)
    measured = []
    with steps("measuring candidates per head", len(blocks)) as advance:
        for block in blocks:
            measured.append(measure(block, usable))
            advance(f"block {block.index}")
    calib_len = int(calibration.describe()["seq_len"])
    target = seq_len or calib_len
    exact = get_method("exact")
    exact_costs = {b.index: EXACT.cost(target, b.q.shape[-1], b.is_causal) for b in blocks}
    head_budget, rounds = budget, []
    picks = [p for m in measured for p in choose(m, head_budget, target)]
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in itertools.count():
            folder = Path(tmp) / str(attempt)
            plans = plan_groups(picks)
            rewrite_model(path, exact, folder, False, plans=plans, min_opset=min_opset)
            measured_e2e = end_to_end(path, folder / MODEL_FILE, held_out)
            rounds.append({"head_budget": head_budget, **measured_e2e, **_counts(picks)})
            if max(measured_e2e.values()) <= budget or all(p.candidate == EXACT for p in picks):
                break  # within budget, or exact everywhere (only float rounding is left)
            if attempt < HALVINGS:  # first: more accurate candidates for every head
                head_budget *= TIGHTEN
                picks = [p for m in measured for p in choose(m, head_budget, target)]
            else:  # then: the worst approximated heads go back to exact
                picks = demote_worst(picks, DEMOTE, exact_costs)
    extra = {
        "method": {"name": "auto", "params": {"max_error": budget}},
        "auto": {
            "max_error": budget,
            "calibration_seq_len": calib_len,
            "cost_seq_len": target,
            "calibration": calibration.describe(),
            "rounds": rounds,
            "heads": [_describe(p) for p in picks],
            "won": _counts(picks)["won"],
            "candidates_not_usable": {
                c.label: "no ONNX body" for c in candidates if c.method not in BODIES
            },
            "refused": {f"block {m.block.index}": m.reasons for m in measured if m.reasons},
        },
    }
    return rewrite_model(
        path,
        exact,
        out_dir,
        verify,
        verify_seq_len,
        plans=plan_groups(picks),
        extra=extra,
        min_opset=min_opset,
    )


def _counts(picks: Sequence[HeadChoice]) -> dict[str, Mapping[str, int]]:
    return {"won": dict(Counter(p.candidate.label for p in picks))}


def _describe(pick: HeadChoice) -> dict[str, object]:
    return {
        "block": pick.block,
        "head": pick.head,
        "method": pick.candidate.method,
        "params": pick.candidate.params,
        "error": float(np.float64(pick.error)),
        "cost_flops": pick.cost,
    }
