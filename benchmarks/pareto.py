"""Speed/error trade-off on the trained example: each method alone against `--method auto`.

    python benchmarks/pareto.py --lengths 512 1024

For every configuration the trained example (examples/tiny_lm) is rewritten by the tool and
compared with the original in onnxruntime on held-out Python source (json/decoder.py, a file
the plans are never calibrated on): relative L2 of the logits, top-1 agreement, the predicted
attention cost against exact attention's (the planner's cost model) and the median latency of
the whole model (all configurations of one length timed in interleaved rounds, so that drift
of the machine hits them alike). Auto plans are calibrated once per length on other text
(json/encoder.py, 4 rows: 2 to choose, 2 held out inside the planner) and planned for a grid
of budgets, plus each single method's own error on the calibration rows (where that method
is an admissible plan, so the auto plan there costs no more by construction). A single
method is dominated when an auto plan is at least as accurate (relative L2 and top-1) and no
more costly: by the cost model, and separately by measured latency.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from attnrewrite.loading import load_model
from attnrewrite.patterns import find_attention
from attnrewrite.pipeline import MODEL_FILE, rewrite_model
from attnrewrite.plan.auto import Planner
from attnrewrite.plan.candidates import ORIGINAL, Candidate
from attnrewrite.plan.search import COST_RESOLUTION, uniform_plans
from attnrewrite.report.build import compare_models
from attnrewrite.report.inputs import from_text
from attnrewrite.substitute.methods import get_method

EXAMPLE = Path(__file__).parents[1] / "examples" / "tiny_lm" / "tiny-lm.onnx"
SOURCE = Path(json.__file__).parent
SINGLE = [
    ("exact", {}),
    ("window", {"width": 32, "sinks": 4}),
    ("window", {"width": 64, "sinks": 4}),
    ("window", {"width": 128, "sinks": 4}),
    ("multipole", {"block": 32}),
    ("multipole", {"block": 64}),
    ("multipole", {"block": 128}),
    ("polysketch", {}),
    ("convbasis", {"bases": 16}),
]
CANDIDATES = tuple(Candidate(name, params) for name, params in SINGLE if name != "exact")
BUDGETS = [0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01, 1e-3]


def errors(rewritten: Path, evaluation) -> dict:
    outputs, _, _ = compare_models(EXAMPLE, rewritten, evaluation)
    (logits,) = outputs
    return {
        "relative_l2": logits["relative_l2"],
        "top1_agreement": logits["logits"]["top1_agreement"],
    }


def latencies(paths: list[Path], feeds: dict, rounds: int, threads: int = 2) -> list[float]:
    """Median ms of one run per model, the models run in turn in each round."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    sessions = [
        ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths
    ]
    times: list[list[float]] = [[] for _ in paths]
    for warm in (True, *([False] * rounds)):
        for session, bucket in zip(sessions, times, strict=True):
            start = time.perf_counter()
            session.run(None, feeds)
            if not warm:
                bucket.append(1e3 * (time.perf_counter() - start))
    return [float(np.median(t)) for t in times]


def no_worse(a: dict, b: dict, key: str, resolution: float = 0.0) -> bool:
    """`a` is at least as accurate as `b` and costs no more by `key` (within `resolution`)."""
    return (
        a["relative_l2"] <= b["relative_l2"]
        and a["top1_agreement"] >= b["top1_agreement"]
        and a[key] <= b[key] * (1 + resolution)
    )


def mark(rows: list[dict]) -> None:
    """The Pareto front (by latency) and, for single methods, whether an auto plan dominates."""
    for row in rows:
        row["pareto"] = not any(
            no_worse(o, row, "latency_ms") and o is not row and not no_worse(row, o, "latency_ms")
            for o in rows
        )
        if row["kind"] == "single" and row["config"] != "exact":
            autos = [o for o in rows if o["kind"] == "auto"]
            row["dominated_cost"] = any(
                no_worse(o, row, "relative_flops", COST_RESOLUTION) for o in autos
            )
            row["dominated_latency"] = any(no_worse(o, row, "latency_ms") for o in autos)


def matched_budgets(planner: Planner) -> list[float]:
    """Each single method's own end-to-end error on the calibration rows (both halves): the
    budget at which that method is itself an admissible plan, so the auto plan there is
    comparable with it."""
    budgets = []
    for plan in uniform_plans(planner.options, planner.baseline):
        groups = plan.groups()
        budgets.append(
            max(max(e.error(groups).values()) for e in (planner.choosing, planner.checking))
        )
    return budgets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=20, help="timing rounds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pareto.json"))
    args = parser.parse_args()
    signature = ir.load(str(EXAMPLE))
    console = Console()
    results = []
    head_dim = find_attention(load_model(EXAMPLE)).matches[0].head_dim
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.lengths:
            evaluation = from_text(signature, SOURCE / "decoder.py", "bytes", n, batch=2)
            calibration = from_text(signature, SOURCE / "encoder.py", "bytes", n, batch=4)
            rows, paths = [], []
            for name, params in SINGLE:
                folder = Path(tmp) / f"{n}-{name}-{'-'.join(map(str, params.values()))}"
                rewrite_model(EXAMPLE, get_method(name, params), folder, verify=False)
                cand = Candidate(name, params)
                rows.append(
                    {
                        "n": n,
                        "kind": "single",
                        "config": name + "".join(f" {k}={v}" for k, v in params.items()),
                        "relative_flops": cand.flops(n, head_dim, True)
                        / ORIGINAL.flops(n, head_dim, True),
                        **errors(folder / MODEL_FILE, evaluation),
                    }
                )
                paths.append(folder / MODEL_FILE)
                console.print(rows[-1])
            planner = Planner(EXAMPLE, calibration, candidates=CANDIDATES)
            seen: dict[tuple, float] = {}
            for budget in sorted({*BUDGETS, *matched_budgets(planner)}, reverse=True):
                plan, record = planner.plan(budget)
                if plan.key in seen:
                    console.print(f"budget {budget:.4g}: the plan of budget {seen[plan.key]:.4g}")
                    continue
                seen[plan.key] = budget
                folder = Path(tmp) / f"{n}-auto-{budget}"
                planner.rewrite(plan, record, folder, verify=False)
                rows.append(
                    {
                        "n": n,
                        "kind": "auto",
                        "config": f"auto max-error={budget:.4g}",
                        "relative_flops": 1.0 - record["flops_removed"],
                        "predicted_time": plan.relative_cost,
                        **errors(folder / MODEL_FILE, evaluation),
                        "won": plan.won,
                    }
                )
                paths.append(folder / MODEL_FILE)
                console.print(rows[-1])
            planner.close()
            timed = latencies(paths, evaluation.feeds, args.repeats)
            for row, ms in zip(rows, timed, strict=True):
                row["latency_ms"] = ms
            mark(rows)
            results.extend(rows)
    table = Table(title="trained example: end-to-end error on held-out text vs cost (2 threads)")
    columns = ("n", "config", "rel L2 logits", "top-1", "cost", "ms", "front", "dominated")
    for col in (*columns, "heads won"):
        table.add_column(col)
    for r in results:
        won = ", ".join(f"{k}: {v}" for k, v in r.get("won", {}).items())
        dominated = {
            (True, True): "cost+ms",
            (True, False): "cost",
            (False, True): "ms",
            (False, False): "no",
        }.get((r.get("dominated_cost"), r.get("dominated_latency")), "")
        table.add_row(
            str(r["n"]),
            r["config"],
            f"{r['relative_l2']:.3g}",
            f"{r['top1_agreement']:.1%}",
            f"{r['relative_flops']:.3f}",
            f"{r['latency_ms']:.1f}",
            "*" if r["pareto"] else "",
            dominated,
            won,
        )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "pareto", "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
