"""Accuracy of every method on a real pretrained LM, on text it was not calibrated on.

    python examples/smollm2/build.py                      # smollm2.onnx + tokenizer.json, once
    python benchmarks/pretrained.py --lengths 512 2048 4096

Text: Python's help topics (pydoc_data, English prose with some code), topics A-L for
calibration and M-Z held out, so no held-out token was seen while planning. Per length n:
the original on held-out text (batch 1) against every single method at its defaults and at
the planner's candidate settings, and `--method auto` at each budget, calibrated at n (batch 2:
one sequence to choose on, one to check on). Columns: logits relative L2, top-1 agreement,
KL(original || rewritten), perplexity, share of the original attention's flops removed, the
plan's heads per method. Prints a table per length and writes benchmarks/results/
pretrained_<n>.json. `--plans` scores auto rewrites made before (by `attnrewrite --method
auto` or at another length: how a plan chosen at 2k holds at 8k) instead of planning at n;
`--methods` picks the single methods; `--calibrate` adds, for each of them that has fitted
parameters (multipole, polysketch, convbasis), the method fitted per head on the calibration
text at n (`attnrewrite --calibrate`), with the time the fit took, and offers the planner fitted
multipole too (`--method auto --calibrate`); `--budgets` with no value skips the planner.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
from rich.console import Console
from rich.table import Table

from attnrewrite.loading import load_model
from attnrewrite.methods import METHODS
from attnrewrite.patterns import find_attention
from attnrewrite.pipeline import MODEL_FILE, rewrite_model
from attnrewrite.plan.auto import Planner
from attnrewrite.plan.calibrated import calibrated_rewrite
from attnrewrite.plan.candidates import ORIGINAL, Candidate
from attnrewrite.report.inputs import ReportInputs, from_text
from attnrewrite.report.metrics import logits_metrics, relative_l2
from attnrewrite.substitute.methods import get_method
from attnrewrite.timing import cpu_session, session_feeds

EXAMPLE = Path(__file__).parents[1] / "examples" / "smollm2"
SINGLE = {
    c.label: c
    for c in (
        Candidate("exact"),
        Candidate("window", {"width": 128, "sinks": 4}),
        Candidate("window", {"width": 512, "sinks": 4}),
        Candidate("multipole", {}),
        Candidate("multipole", {"block": 128}),
        Candidate("multipole", {"block": 256}),
        Candidate("multipole", {"block": 512}),
        Candidate("polysketch", {}),
        Candidate("convbasis", {}),
    )
}
BUDGETS = (1e-1, 3e-2, 1e-2)


def texts(folder: Path) -> tuple[Path, Path]:
    """Calibration (topics A-L) and held-out (M-Z) text files."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    calibration, held_out = folder / "calibration.txt", folder / "held_out.txt"
    calibration.write_text("\n\n".join(topics[k] for k in sorted(topics) if k[0] < "m"))
    held_out.write_text("\n\n".join(topics[k] for k in sorted(topics) if k[0] >= "m"))
    return calibration, held_out


def plan_record(folder: Path) -> dict:
    """The planner's record kept in an auto rewrite's rewrite.json."""
    record = json.loads((folder / "rewrite.json").read_text()).get("auto")
    if record is None:
        raise SystemExit(f"{folder} is not an auto rewrite (rewrite.json has no 'auto')")
    return record


def plan_label(record: dict, n: int) -> str:
    planned_at = record["cost_seq_len"]
    return f"auto max-error={record['max_error']:g}" + (
        "" if planned_at == n else f" (planned at {planned_at})"
    )


def logits(path: Path, inputs: ReportInputs, threads: int) -> np.ndarray:
    session = cpu_session(path, threads)
    return session.run(None, session_feeds(session, inputs.feeds))[0]


def scores(reference: np.ndarray, path: Path, inputs: ReportInputs, threads: int) -> dict:
    start = time.perf_counter()
    out = logits(path, inputs, threads)
    row = {"relative_l2": relative_l2(reference, out), "run_s": time.perf_counter() - start}
    return row | logits_metrics(reference, out, inputs.token_ids, inputs.keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=EXAMPLE / "smollm2.onnx")
    parser.add_argument("--tokenizer", type=Path, default=EXAMPLE / "tokenizer.json")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--budgets", type=float, nargs="*", default=list(BUDGETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--costs", type=Path, help="the planner's cost table (kept between runs)")
    parser.add_argument(
        "--methods", nargs="+", choices=list(SINGLE), default=list(SINGLE), metavar="LABEL"
    )
    parser.add_argument(
        "--plans", type=Path, nargs="+", help="auto rewrites to score instead of planning at n"
    )
    parser.add_argument(
        "--calibrate", action="store_true", help="also each method fitted per head at n"
    )
    parser.add_argument(
        "--save-plans", type=Path, help="keep the auto rewrites here (for pretrained_speed --plans)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    console = Console()
    signature = ir.load(str(args.model))
    match = find_attention(load_model(args.model)).matches[0]
    head_dim, causal = match.head_dim or 64, match.mask.is_causal
    with tempfile.TemporaryDirectory() as tmp:
        calibration_text, held_text = texts(Path(tmp))
        for n in args.lengths:
            held = from_text(signature, held_text, str(args.tokenizer), n, batch=1)
            reference = logits(args.model, held, args.threads)
            rows = []
            for label in args.methods:
                cand = SINGLE[label]
                folder = Path(tmp) / f"{n}-{cand.label}"
                outcome = rewrite_model(
                    args.model, get_method(cand.method, cand.params), folder, verify=False
                )
                kept = outcome.report["summary"]["kept_exact"]
                flops = cand.flops(n, head_dim, causal) / ORIGINAL.flops(n, head_dim, causal)
                rows.append(
                    {
                        "config": cand.label,
                        "flops_removed": 1.0 - flops,
                        "kept_exact_blocks": kept,
                        **scores(reference, folder / MODEL_FILE, held, args.threads),
                    }
                )
                console.print(rows[-1])
                if args.calibrate and METHODS[cand.method].fitted:
                    calibration = from_text(signature, calibration_text, str(args.tokenizer), n, 1)
                    kept = (args.save_plans or Path(tmp)) / f"{n}-{cand.label}-calibrated"
                    rows.append(
                        calibrated_row(
                            args.model, cand, kept, calibration, held, reference, args.threads
                        )
                    )
                    rows[-1]["flops_removed"] = rows[-2]["flops_removed"]
                    console.print(rows[-1])
            if args.plans:
                for folder in args.plans:
                    record = plan_record(folder)
                    rows.append(
                        plan_row(record, n, reference, folder / MODEL_FILE, held, args.threads)
                    )
                    console.print(rows[-1])
            elif args.budgets:
                calibration = from_text(signature, calibration_text, str(args.tokenizer), n, 2)
                started = time.perf_counter()
                with Planner(
                    args.model, calibration, costs=args.costs, fitted=args.calibrate
                ) as planner:
                    planned = time.perf_counter() - started
                    for budget in args.budgets:
                        plan, record = planner.plan(budget)
                        folder = (args.save_plans or Path(tmp)) / f"{n}-auto-{budget:g}"
                        planner.rewrite(plan, record, folder, verify=False)
                        row = plan_row(
                            record, n, reference, folder / MODEL_FILE, held, args.threads
                        )
                        rows.append(row | {"calibration_s": planned})
                        console.print(rows[-1])
            print_table(console, n, rows)
            args.out.mkdir(parents=True, exist_ok=True)
            result = {"benchmark": "pretrained", "model": str(args.model), "n": n, "rows": rows}
            (args.out / f"pretrained_{n}.json").write_text(json.dumps(result, indent=2) + "\n")


def calibrated_row(
    model: Path,
    cand: Candidate,
    folder: Path,
    calibration: ReportInputs,
    held: ReportInputs,
    reference: np.ndarray,
    threads: int,
) -> dict:
    """`cand` fitted per head on `calibration` (written into `folder`), scored on `held`."""
    started = time.perf_counter()
    method = get_method(cand.method, cand.params)
    outcome = calibrated_rewrite(model, method, folder, calibration, verify=False)
    fit = outcome.report["calibration"]
    return {
        "config": f"{cand.label} calibrated",
        "kept_exact_blocks": outcome.report["summary"]["kept_exact"],
        "calibration_s": time.perf_counter() - started,
        "capture_fit_measure_s": fit["seconds"],
        "fit_s": fit["fit_seconds"],
        "median_head_error_default": fit["median_error_default"],
        "median_head_error_fitted": fit["median_error_fitted"],
        **scores(reference, folder / MODEL_FILE, held, threads),
    }


def plan_row(
    record: dict, n: int, reference: np.ndarray, path: Path, held: ReportInputs, threads: int
) -> dict:
    return {
        "config": plan_label(record, n),
        "flops_removed": record["flops_removed"],
        "predicted_time": record["relative_cost"],
        "won": record["won"],
        "held_out_calibration": record["held_out"],
        **scores(reference, path, held, threads),
    }


def print_table(console: Console, n: int, rows: list[dict]) -> None:
    table = Table(title=f"{n} tokens of held-out text")
    for column in ("config", "rel L2", "top-1", "KL", "ppl", "flops removed", "heads"):
        table.add_column(column)
    for r in rows:
        won = ", ".join(f"{k} {v}" for k, v in sorted(r.get("won", {}).items()))
        table.add_row(
            r["config"],
            f"{r['relative_l2']:.3g}",
            f"{r['top1_agreement']:.1%}",
            f"{r['kl_original_rewritten']:.2g}",
            f"{r['perplexity_rewritten']:.2f} ({r['perplexity_original']:.2f})",
            f"{r['flops_removed']:.0%}",
            won,
        )
    console.print(table)


if __name__ == "__main__":
    main()
