"""Whole-model speed of a real pretrained LM in onnxruntime: the original, what a user would
pick instead, each method, and `--method auto` plans, at long context.

    python examples/smollm2/build.py                      # smollm2.onnx + tokenizer.json, once
    python benchmarks/pretrained_speed.py --lengths 2048 4096 8192

Per length n (batch 1, held-out text, `--threads` intra-op threads): the original; the
original after onnxruntime's transformer optimizer (onnxruntime.transformers.optimizer: what
a user would run instead; what it fused is listed); exact attention in chunks; single methods;
and auto plans at each budget, planned at n on the calibration text (benchmarks/pretrained.py
describes both texts). Every model of a length is timed in the same rounds (median and range
of `--repeats` rounds after a warm-up each), so load that comes and goes hits them alike.
For plans, the planner's prediction is checked: it times each attention node alone, so its
predicted whole-model time is the original's measured time minus the original attention's
predicted time plus the plan's; the table gives predicted and measured speed-ups and their
ratio, and the planner's own whole-model check of the plan against exact attention everywhere
(plan.speed: a plan not measured faster is not kept). A model whose attention scores would
not fit in memory at n is skipped and says so.
Sessions run without onnxruntime's memory arena (timing.cpu_session), so all of a length's
models fit side by side at 8k; `--arena` times them with it, as onnxruntime runs a model by
default (every run then reuses its buffers instead of paying their page faults, which favours
the models with the largest buffers: the original), where memory allows.

Planning at 8k takes longer than the timing: `--plans` times auto rewrites made before
(folders of `attnrewrite --method auto`, or of this benchmark at a shorter length), labelled
with the length they were planned at, instead of planning at each n; `--methods` picks the
single methods (conv-basis at 8k takes minutes per forward).
Writes benchmarks/results/pretrained_speed_<n>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx_ir as ir
import psutil
from pretrained import EXAMPLE, plan_label, plan_record, texts  # beside this file
from pretrained import SINGLE as METHODS
from rich.console import Console
from rich.table import Table

from attnrewrite.pipeline import MODEL_FILE, rewrite_model
from attnrewrite.plan.auto import Planner
from attnrewrite.report.inputs import from_text
from attnrewrite.substitute.methods import get_method
from attnrewrite.timing import cpu_session, interleaved_ms, session_feeds

BUDGETS = (3e-2, 1e-2)


def ort_optimized(source: Path, folder: Path, heads: int, hidden: int) -> tuple[Path, dict]:
    """The model after onnxruntime's transformer optimizer, and the operators it fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(source), model_type="gpt2", num_heads=heads, hidden_size=hidden)
    fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    path = folder / "model.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    model.save_model_to_file(str(path))
    return path, fused


def scores_fit(n: int, heads: int, available: int) -> bool:
    """Whether a few [heads, n, n] float32 score tensors (the original attention) fit."""
    return 3 * heads * n * n * 4 < available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=EXAMPLE / "smollm2.onnx")
    parser.add_argument("--tokenizer", type=Path, default=EXAMPLE / "tokenizer.json")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument(
        "--budgets", type=float, nargs="*", default=list(BUDGETS), help="none: no auto plans"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heads", type=int, default=9, help="for onnxruntime's optimizer")
    parser.add_argument("--hidden", type=int, default=576, help="for onnxruntime's optimizer")
    parser.add_argument("--costs", type=Path, help="the planner's cost table (kept between runs)")
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=list(METHODS), metavar="LABEL"
    )
    parser.add_argument(
        "--plans", type=Path, nargs="+", help="auto rewrites to time instead of planning at n"
    )
    parser.add_argument(
        "--arena", action="store_true", help="sessions with onnxruntime's memory arena"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    console = Console()
    signature = ir.load(str(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        calibration_text, held_text = texts(folder)
        optimized, fused = ort_optimized(args.model, folder / "ort", args.heads, args.hidden)
        console.print(f"onnxruntime's transformer optimizer fused: {fused}")
        for n in args.lengths:
            held = from_text(signature, held_text, str(args.tokenizer), n, batch=1)
            fits = scores_fit(n, args.heads, psutil.virtual_memory().available)
            rows: list[dict] = []
            if fits:
                rows.append({"config": "original", "path": args.model})
                rows.append({"config": "original + ORT optimizer", "path": optimized})
            for label in args.methods:
                cand = METHODS[label]
                out = folder / f"{n}-{cand.label}"
                rewrite_model(args.model, get_method(cand.method, cand.params), out, verify=False)
                rows.append({"config": cand.label, "path": out / MODEL_FILE})
            if args.plans:
                rows += [plan_row(plan / MODEL_FILE, plan_record(plan), n) for plan in args.plans]
            elif args.budgets:
                calibration = from_text(signature, calibration_text, str(args.tokenizer), n, 2)
                with Planner(args.model, calibration, costs=args.costs) as planner:
                    for budget in args.budgets:
                        plan, record = planner.plan(budget)
                        out = folder / f"{n}-auto-{budget}"
                        planner.rewrite(plan, record, out, verify=False)
                        rows.append(plan_row(out / MODEL_FILE, record, n))
            time_rows(rows, held.feeds, args.repeats, args.threads, args.arena)
            finish(rows, n, fits)
            print_table(console, n, rows, fits)
            args.out.mkdir(parents=True, exist_ok=True)
            result = {
                "benchmark": "pretrained_speed",
                "model": str(args.model),
                "n": n,
                "threads": args.threads,
                "repeats": args.repeats,
                "arena": args.arena,
                "ort_optimizer_fused": fused,
                "rows": [{k: v for k, v in r.items() if k != "path"} for r in rows],
            }
            path = args.out / f"pretrained_speed_{n}{'_arena' if args.arena else ''}.json"
            path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def plan_row(path: Path, record: dict, n: int) -> dict:
    """A plan's row; its predicted attention time holds at the length it was priced at only."""
    row = {
        "config": plan_label(record, n),
        "path": path,
        "won": record["won"],
        "flops_removed": record["flops_removed"],
        "planner_check": record.get("measured"),  # its whole-model check against exact
        "planner_timed": [  # every plan within budget it timed whole, kept or not
            {"plan": r["plan"], **r["measured"]} for r in record["rounds"] if "measured" in r
        ],
        "planner_rounds": [  # every plan it tried, cheapest first: why this one was kept
            {k: r[k] for k in ("plan", "relative_cost", "held_out")} for r in record["rounds"]
        ],
    }
    if record["cost_seq_len"] == n:
        row["predicted_attention_ms"] = record["predicted_ms"]
        row["original_attention_ms"] = record["original_ms"]
    return row


def time_rows(rows: list[dict], feeds: dict, repeats: int, threads: int, arena: bool) -> None:
    runs = []
    for row in rows:
        session = cpu_session(row["path"], threads, arena)
        runs.append(functools.partial(session.run, None, session_feeds(session, feeds)))
    for row, times in zip(rows, interleaved_ms(runs, repeats), strict=True):
        row["median_ms"] = float(np.median(times))
        row["range_ms"] = [min(times), max(times)]


def finish(rows: list[dict], n: int, fits: bool) -> None:
    """Speed-ups against the original, and the planner's predicted ones."""
    if not fits:
        return
    base = rows[0]["median_ms"]
    for row in rows:
        row["speedup"] = base / row["median_ms"]
        if row.get("original_attention_ms", 0) >= base:
            row["prediction"] = "the original attention was priced above the whole model's time"
        elif "predicted_attention_ms" in row:
            predicted = base - row["original_attention_ms"] + row["predicted_attention_ms"]
            row["predicted_speedup"] = base / predicted
            row["measured_over_predicted"] = row["speedup"] / row["predicted_speedup"]


def print_table(console: Console, n: int, rows: list[dict], fits: bool) -> None:
    title = f"n = {n}, whole model" + ("" if fits else " (the original does not fit in memory)")
    table = Table(title=title)
    columns = ("config", "ms (range)", "speed-up", "predicted", "measured/predicted")
    for column in (*columns, "planner: vs exact", "heads"):
        table.add_column(column)
    for r in rows:
        won = Counter({k.split("(")[0]: v for k, v in r.get("won", {}).items()})
        table.add_row(
            r["config"],
            f"{r['median_ms']:.0f} ({r['range_ms'][0]:.0f}-{r['range_ms'][1]:.0f})",
            f"{r['speedup']:.2f}x" if "speedup" in r else "-",
            f"{r['predicted_speedup']:.2f}x" if "predicted_speedup" in r else "",
            f"{r['measured_over_predicted']:.2f}" if "measured_over_predicted" in r else "",
            _planner_check(r),
            ", ".join(f"{k} {v}" for k, v in r.get("won", {}).items()) if won else "",
        )
    console.print(table)


def _planner_check(row: dict) -> str:
    """The plan's speed-up over exact attention everywhere as the planner timed it (and as its
    node costs predicted), before keeping it."""
    check = row.get("planner_check")
    if not check:
        return ""
    return (
        f"{check['speedup_vs_exact']:.2f}x (predicted {check['predicted_speedup_vs_exact']:.2f}x)"
    )


if __name__ == "__main__":
    main()
