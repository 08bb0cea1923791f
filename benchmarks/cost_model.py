"""How far the planner's cost model is from measured time: predicted vs measured speed-up.

    python benchmarks/cost_model.py benchmarks/results/attention_layer_h100host_2cores.json

Reads a result of benchmarks/attention_layer.py (the layer: 8 heads, d = 64, default
parameters) and prints, per method, mask and length, the speed-up over the original that the
flop counts of attnrewrite.plan.candidates predict (raw flops, and with the measured
efficiency factors the planner uses) and the one onnxruntime measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from attnrewrite.plan.candidates import EXACT, Candidate

HEAD_DIM = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    rows = json.loads(args.results.read_text())["results"]
    times = {(r["method"], r["causal"], r["n"]): r.get("median_ms") for r in rows}
    table = Table(title=f"cost model vs {args.results.name}")
    columns = ("method", "mask", "n", "flops x", "planner x", "measured x", "measured / planner")
    for col in columns:
        table.add_column(col)
    for (method, causal, n), ms in sorted(times.items()):
        base = times.get(("original", causal, n))
        if method == "original" or ms is None or base is None:
            continue
        cand = Candidate(method)
        flops = EXACT.flops(n, HEAD_DIM, causal) / cand.flops(n, HEAD_DIM, causal)
        planner = EXACT.cost(n, HEAD_DIM, causal) / cand.cost(n, HEAD_DIM, causal)
        measured = base / ms
        table.add_row(
            method,
            "causal" if causal else "bidirectional",
            str(n),
            f"{flops:.2f}",
            f"{planner:.2f}",
            f"{measured:.2f}",
            f"{measured / planner:.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
