"""What onnxruntime's own graph optimizer does to the original and to each rewritten model:
whether its fusions still apply around the new nodes.

    python benchmarks/ort_fusions.py                       # SmolLM2 (examples/smollm2)
    python benchmarks/ort_fusions.py --model examples/tiny-gpt2.onnx

Each model gets a CPU session at graph optimization level ALL that writes the graph it will
run (`optimized_model_filepath`); the table counts the fused operators it wrote (those of
onnxruntime's own domains, com.microsoft and friends) and all nodes, next to the original's.
The rewritten models' attention nodes are model-local functions, which onnxruntime inlines
before it optimizes, so their bodies can be fused like any other part of the graph. Writes
benchmarks/results/ort_fusions.json (every operator's count).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from attnrewrite.pipeline import MODEL_FILE, rewrite_model
from attnrewrite.plan.candidates import Candidate
from attnrewrite.substitute.methods import get_method

EXAMPLE = Path(__file__).parents[1] / "examples" / "smollm2" / "smollm2.onnx"
METHODS = (
    Candidate("exact"),
    Candidate("window", {"width": 128, "sinks": 4}),
    Candidate("multipole", {"block": 256}),
    Candidate("polysketch", {}),
    Candidate("convbasis", {}),
)


def optimized_operators(path: Path, folder: Path) -> Counter:
    """Operator counts of the graph onnxruntime runs at level ALL on CPU."""
    folder.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", "optimized.weights"
    )
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(folder / "optimized.onnx"), load_external_data=False).graph
    return Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=EXAMPLE)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    counts: dict[str, Counter] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        counts["original"] = optimized_operators(args.model, folder / "original-opt")
        for cand in METHODS:
            out = folder / cand.label
            rewrite_model(args.model, get_method(cand.method, cand.params), out, verify=False)
            counts[cand.label] = optimized_operators(out / MODEL_FILE, folder / f"{cand.label}-opt")
    fused = sorted({op for c in counts.values() for op in c if "." in op})
    table = Table(title=f"fused operators onnxruntime runs (level ALL, CPU): {args.model.name}")
    table.add_column("operator", no_wrap=True)
    for name in counts:
        table.add_column(name, justify="right")
    for op in fused:
        table.add_row(op, *(str(c.get(op, 0)) for c in counts.values()))
    table.add_row("all nodes", *(str(c.total()) for c in counts.values()))
    Console(width=200).print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "ort_fusions",
        "model": str(args.model),
        "fused_operators": fused,
        "operators": {name: dict(sorted(c.items())) for name, c in counts.items()},
    }
    (args.out / "ort_fusions.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
