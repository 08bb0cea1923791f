"""One rewritten attention layer in onnxruntime against the TVM llvm build of the same model.

    python benchmarks/tvm_attention.py                        # n = 1k, 4k, 16k; three methods
    python benchmarks/tvm_attention.py --lengths 1024 --methods multipole --repeats 3

The layer is `attnrewrite.layers.attention_layer` (B=1, 8 heads, d=64, causal) rewritten by the
tool with each method at its defaults; the TVM side is `attnrewrite.lower.build` of that same
rewritten model (Relax through TVM's ONNX frontend, our DFT converter, the default schedules
of attnrewrite.lower.schedules except where attnrewrite/targets, or a records root named by
ATTNREWRITE_TARGETS, holds records for this CPU, e.g. from `attnrewrite tune rewritten.onnx
--dim ...`). Every
(method, n) runs in a child process with TVM_NUM_THREADS and onnxruntime's intra-op threads
both set to --threads; the child reports the build time, the median of --repeats runs after a
warm-up for each, and the TVM output's max abs difference from onnxruntime's relative to its
largest value. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from rich.console import Console
from rich.table import Table

from attnrewrite import __version__
from attnrewrite.layers import LayerSpec, attention_layer
from attnrewrite.loading import prepare_model
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import substitute

METHODS = ("convbasis", "multipole", "polysketch")


def rewritten_layer(method: str, folder: Path) -> Path:
    """The causal layer rewritten with `method` at its defaults, saved in `folder`."""
    chosen = get_method(method)
    model = prepare_model(attention_layer(LayerSpec()), min_opset=chosen.min_opset)
    (block,) = substitute(model, find_attention(model).matches, chosen).rewritten
    if block.fallback:
        raise SystemExit(f"{method} kept the block exact: {block.fallback}")
    path = folder / f"{method}.onnx"
    onnx.save(ir.serde.serialize_model(model), path)
    return path


def child(model: Path, n: int, repeats: int, threads: int) -> dict:
    """Build and time one model at length n in this process (TVM_NUM_THREADS set by the
    runner before TVM loads)."""
    from attnrewrite.lower import build, load
    from attnrewrite.report.build import latency_ms
    from attnrewrite.timing import median_ms

    feeds = LayerSpec().inputs(1, n)
    ort_ms = latency_ms(model, feeds, repeats, threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    want = ort.InferenceSession(str(model), options).run(None, feeds)[0]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        artifact = load(build(model, "llvm", tmp, {"batch": 1, "q_len": n, "kv_len": n}))
        build_s = time.perf_counter() - start
        got = artifact.run(feeds)[0]
        tvm_ms = median_ms(lambda: artifact.run(feeds), repeats)
    error = float(np.abs(got - want).max() / np.abs(want).max())
    return {"status": "ok", "ort_ms": ort_ms, "tvm_ms": tvm_ms, "build_s": build_s, "rel": error}


def measure(model: Path, n: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", str(model), "--n", str(n)]
    command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    env = {**os.environ, "TVM_NUM_THREADS": str(args.threads)}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timeout > {args.timeout:.0f} s"}
    if done.returncode < 0:
        return {"status": f"killed by signal {-done.returncode}"}
    if done.returncode != 0:
        lines = (done.stderr or "").strip().splitlines()
        return {"status": f"failed: {lines[-1][:200] if lines else done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per-child seconds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tvm_attention.json"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.repeats, args.threads)))
        return

    console = Console()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            model = rewritten_layer(method, Path(tmp))
            for n in args.lengths:
                result = measure(model, n, args)
                rows.append({"method": method, "n": n, **result})
                console.print(f"{method:>10} n={n:>6}: {result}")

    table = Table(
        title=f"rewritten layer, B=1, 8 heads, d=64, causal, {args.threads} threads: "
        "onnxruntime vs TVM llvm (ms)"
    )
    for column in ("method", "n", "onnxruntime", "TVM", "ORT / TVM", "build s", "rel diff"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        if row["status"] != "ok":
            table.add_row(row["method"], str(row["n"]), row["status"], "", "", "", "")
            continue
        table.add_row(
            row["method"],
            str(row["n"]),
            f"{row['ort_ms']:.1f}",
            f"{row['tvm_ms']:.1f}",
            f"{row['ort_ms'] / row['tvm_ms']:.2f}x",
            f"{row['build_s']:.0f}",
            f"{row['rel']:.1e}",
        )
    console.print(table)
    import onnxruntime as ort
    import tvm

    payload = {
        "benchmark": "tvm_attention",
        "tool_version": __version__,
        "environment": {
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "tvm": tvm.__version__,
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            # tuning records applied (ATTNREWRITE_TARGETS roots before the shipped folder)
            "records": os.environ.get("ATTNREWRITE_TARGETS") or "shipped",
            "load_average": list(os.getloadavg()),
        },
        "layer": {"batch": 1, "heads": 8, "head_dim": 64, "causal": True},
        "repeats": args.repeats,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
