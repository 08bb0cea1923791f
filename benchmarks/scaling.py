"""How finding and rewriting grow with the number of attention blocks.

    python -m benchmarks.scaling --blocks 10 100 300 1000 --json benchmarks/results/scaling.json

Builds N causal self-attention layers in a row (tests/corpus/chain.py), then times each stage
of the rewrite on it in this process: load (parse, shape inference), find, substitute (exact),
serialize and check (onnx.checker, full). Finding and rewriting must grow linearly: 1,000
blocks in under 60 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import onnx
import onnx_ir as ir
from rich.console import Console
from rich.table import Table

from attnrewrite import __version__
from attnrewrite.loading import load_model
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import substitute
from tests.corpus.chain import chained_layers

STAGES = ("load", "find", "substitute", "serialize", "check")


def time_stages(blocks: int, folder: Path) -> dict[str, float]:
    path = folder / f"chain{blocks}.onnx"
    onnx.save(chained_layers(blocks), str(path))
    times, started = {}, time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal started
        now = time.perf_counter()
        times[stage] = now - started
        started = now

    model = load_model(path)
    lap("load")
    found = find_attention(model)
    lap("find")
    result = substitute(model, found.matches, get_method("exact"))
    lap("substitute")
    proto = ir.serde.serialize_model(model)
    lap("serialize")
    onnx.checker.check_model(proto, full_check=True)
    lap("check")
    assert len(found.matches) == len(result.rewritten) == blocks
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[10, 100, 300, 1000])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    table = Table(title="seconds per stage")
    for column in ("blocks", *STAGES, "find + substitute"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as folder:
        for blocks in args.blocks:
            times = time_stages(blocks, Path(folder))
            rows.append({"blocks": blocks, **times})
            both = times["find"] + times["substitute"]
            table.add_row(str(blocks), *(f"{times[s]:.2f}" for s in STAGES), f"{both:.2f}")
    Console().print(table)
    if args.json:
        meta = {"version": __version__, "python": platform.python_version()}
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
