"""Start-up time of the command line: wall time of `python -m attnrewrite ARGS` in a new
process, median of several runs, for the commands a user meets first.

    python benchmarks/startup.py [--repeats 5] [--model examples/tiny-gpt2.onnx]

Target: under 1 s for --version, --help and an error about the input file (they import no
onnx, onnxruntime, torch or TVM); `inspect` of an ONNX model reads onnx but not torch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def wall_s(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", type=Path, default=Path("examples/tiny-gpt2.onnx"))
    args = parser.parse_args()
    tool = [sys.executable, "-m", "attnrewrite"]
    commands = {
        "--version": [*tool, "--version"],
        "--help": [*tool, "--help"],
        "missing input file": [*tool, "absent.onnx", "--method", "exact"],
        f"inspect {args.model.name}": [*tool, "inspect", str(args.model)],
        "python -c pass (the interpreter alone)": [sys.executable, "-c", "pass"],
    }
    table = Table(title=f"start-up, median of {args.repeats} runs (s)")
    for column in ("command", "median", "min", "max"):
        table.add_column(column)
    for label, command in commands.items():
        runs = [wall_s(command) for _ in range(args.repeats)]
        table.add_row(
            label, f"{statistics.median(runs):.2f}", f"{min(runs):.2f}", f"{max(runs):.2f}"
        )
    Console().print(table)


if __name__ == "__main__":
    main()
