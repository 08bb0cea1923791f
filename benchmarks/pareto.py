"""Speed/error trade-off on the trained example: each method alone against `--method auto`.

    python benchmarks/pareto.py --lengths 512 1024

For every configuration the trained example (examples/tiny_lm) is rewritten by the tool and
compared with the original in onnxruntime on held-out Python source (json/decoder.py, a file
the plans are never calibrated on): relative L2 of the logits, top-1 agreement, median latency
of the whole model. Auto plans are calibrated on other text (json/encoder.py, 4 rows: 2 to
choose, 2 held out inside the planner). A configuration is on the Pareto front when no other
one is both faster and more accurate. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import onnx
from rich.console import Console
from rich.table import Table

from attnrewrite.pipeline import MODEL_FILE, rewrite_model
from attnrewrite.plan.auto import auto_rewrite
from attnrewrite.report.build import compare_models, latency_ms
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
BUDGETS = [3e-1, 1e-1, 1e-2, 1e-3]


def measure(rewritten: Path, evaluation, repeats: int) -> dict:
    outputs, _, _ = compare_models(EXAMPLE, rewritten, evaluation)
    (logits,) = outputs
    return {
        "relative_l2": logits["relative_l2"],
        "top1_agreement": logits["logits"]["top1_agreement"],
        "latency_ms": latency_ms(rewritten, evaluation.feeds, repeats, 2),
    }


def front(rows: list[dict]) -> None:
    """Mark rows no other row beats on both error and latency."""
    for row in rows:
        row["pareto"] = not any(
            o["relative_l2"] <= row["relative_l2"]
            and o["latency_ms"] <= row["latency_ms"]
            and (o["relative_l2"] < row["relative_l2"] or o["latency_ms"] < row["latency_ms"])
            for o in rows
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pareto.json"))
    args = parser.parse_args()
    signature = onnx.load(str(EXAMPLE))
    console = Console()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.lengths:
            evaluation = from_text(signature, SOURCE / "decoder.py", "bytes", n, batch=2)
            calibration = from_text(signature, SOURCE / "encoder.py", "bytes", n, batch=4)
            rows = []
            for name, params in SINGLE:
                folder = Path(tmp) / f"{n}-{name}-{'-'.join(map(str, params.values()))}"
                rewrite_model(EXAMPLE, get_method(name, params), folder, verify=False)
                label = name + "".join(f" {k}={v}" for k, v in params.items())
                rows.append(
                    {
                        "n": n,
                        "config": label,
                        **measure(folder / MODEL_FILE, evaluation, args.repeats),
                    }
                )
                console.print(rows[-1])
            for budget in BUDGETS:
                folder = Path(tmp) / f"{n}-auto-{budget}"
                outcome = auto_rewrite(EXAMPLE, folder, budget, calibration, verify=False)
                row = {"n": n, "config": f"auto max-error={budget:g}"}
                row |= measure(folder / MODEL_FILE, evaluation, args.repeats)
                row["won"] = outcome.report["auto"]["won"]
                rows.append(row)
                console.print(rows[-1])
            front(rows)
            results.extend(rows)
    table = Table(title="trained example: end-to-end error on held-out text vs latency (2 threads)")
    for col in ("n", "config", "rel L2 logits", "top-1", "ms", "front", "heads won"):
        table.add_column(col)
    for r in results:
        won = ", ".join(f"{k}: {v}" for k, v in r.get("won", {}).items())
        table.add_row(
            str(r["n"]),
            r["config"],
            f"{r['relative_l2']:.3g}",
            f"{r['top1_agreement']:.1%}",
            f"{r['latency_ms']:.1f}",
            "*" if r["pareto"] else "",
            won,
        )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "pareto", "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
