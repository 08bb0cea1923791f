"""One attention layer in onnxruntime: the original against each rewritten method, side by side.

    python benchmarks/attention_layer.py                      # n = 1k, 4k, 16k, 64k; both masks
    python benchmarks/attention_layer.py --lengths 1024 4096 --methods convbasis --repeats 3
    python benchmarks/attention_layer.py --lengths 1024 8192 --methods exact verticalslash \
        --masks causal --heads 9 --kv-heads 3         # SmolLM2's layout (GQA)

The layer is `attnrewrite.layers.attention_layer` (B=1, 8 heads unless --heads / --kv-heads say
otherwise, d=64, causal or bidirectional),
written in standard ops as an exporter writes it; each method's version is that layer rewritten
by the tool. Every (model, n) runs in a child process with its own memory limit, so a variant
that exhausts memory is recorded as such instead of taking the run down; the child reports the
median of `--repeats` timed runs after one warm-up, and its peak resident memory above what the
process held with its inputs ready, before creating the session. Prints a table
(speed-ups are against the original in the same run) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from attnrewrite import __version__
from attnrewrite.layers import LayerSpec, attention_layer
from attnrewrite.loading import prepare_model
from attnrewrite.patterns import find_attention
from attnrewrite.report.build import latency_ms
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import substitute

ORIGINAL = "original"
METHODS = ("convbasis", "polysketch", "multipole")


def build(spec: LayerSpec, method: str, folder: Path) -> Path:
    """The layer as exported (`original`) or rewritten with `method`, saved in `folder`."""
    path = folder / f"{method}-{'causal' if spec.causal else 'bidir'}.onnx"
    proto = attention_layer(spec)
    if method != ORIGINAL:
        chosen = get_method(method)
        model = prepare_model(proto, min_opset=chosen.min_opset)
        result = substitute(model, find_attention(model).matches, chosen)
        (block,) = result.rewritten
        if block.fallback:
            raise SystemExit(f"{method} kept the block exact: {block.fallback}")
        proto = ir.serde.serialize_model(model)
    onnx.save(proto, path)
    return path


def child(model: Path, n: int, args: argparse.Namespace) -> dict:
    """Time one model at length n in this process (run as a child of the runner)."""
    feeds = _spec(args, not args.bidirectional).inputs(1, n)
    repeats, threads = args.repeats, args.threads
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median_ms = latency_ms(model, feeds, repeats, threads)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before_mb
    return {"median_ms": median_ms, "peak_mb": peak_mb, "status": "ok"}


def measure(model: Path, n: int, args: argparse.Namespace, causal: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        str(model),
        "--n",
        str(n),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--heads",
        str(args.heads),
        "--kv-heads",
        str(args.kv_heads),
        *([] if causal else ["--bidirectional"]),
    ]
    limit = int(args.memory_gb * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        done = subprocess.run(
            command, capture_output=True, text=True, preexec_fn=cap, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timeout > {args.timeout} s"}
    if done.returncode != 0:
        lines = (done.stderr or "").strip().splitlines()
        memory = any(w in (done.stderr or "") for w in ("bad_alloc", "Failed to allocate"))
        return {"status": "out of memory" if memory else f"failed: {lines[-1] if lines else ''}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth(rows: list[dict], method: str, causal: bool, low: int, high: int) -> float | None:
    """Exponent a in time ~ n^a between lengths low and high."""
    times = {
        r["n"]: r["median_ms"]
        for r in rows
        if r["method"] == method and r["causal"] == causal and r.get("status") == "ok"
    }
    if low not in times or high not in times:
        return None
    return math.log(times[high] / times[low]) / math.log(high / low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--masks", nargs="+", default=["causal", "bidirectional"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8, help="query heads")
    parser.add_argument("--kv-heads", type=int, help="key/value heads (GQA; default: --heads)")
    parser.add_argument("--memory-gb", type=float, default=24.0, help="per-child memory cap")
    parser.add_argument("--timeout", type=float, default=900.0, help="per-child seconds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attention_layer.json"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bidirectional", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.kv_heads = args.kv_heads or args.heads
    if args.child:
        print(json.dumps(child(args.child, args.n, args)))
        return

    console = Console()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for mask in args.masks:
            causal = mask == "causal"
            spec = _spec(args, causal)
            for method in (ORIGINAL, *args.methods):
                model = build(spec, method, Path(tmp))
                for n in args.lengths:
                    result = measure(model, n, args, causal)
                    rows.append({"method": method, "causal": causal, "n": n, **result})
                    console.print(f"{mask:>13} {method:>10} n={n:>6}: {_cell(result)}")

    kv = f" ({args.kv_heads} kv)" if args.kv_heads != args.heads else ""
    heads = f"{args.heads} heads{kv}"
    table = Table(title=f"one attention layer, B=1, {heads}, d=64, {args.threads} threads (ms)")
    table.add_column("mask")
    table.add_column("n", justify="right")
    for method in (ORIGINAL, *args.methods):
        table.add_column(method, justify="right")
    for mask in args.masks:
        causal = mask == "causal"
        for n in args.lengths:
            cells = {r["method"]: r for r in rows if r["causal"] == causal and r["n"] == n}
            base = cells[ORIGINAL].get("median_ms")
            table.add_row(mask, str(n), *(_cell(cells[m], base) for m in (ORIGINAL, *args.methods)))
    console.print(table)
    exponents = {
        f"{mask}/{m}": growth(rows, m, mask == "causal", 4096, max(args.lengths))
        for mask in args.masks
        for m in (ORIGINAL, *args.methods)
    }
    console.print(f"time growth exponent 4k -> {max(args.lengths)}: {exponents}")
    payload = {
        "benchmark": "attention_layer",
        "tool_version": __version__,
        "environment": {
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
        },
        "layer": {"batch": 1, "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": 64},
        "repeats": args.repeats,
        "results": rows,
        "growth_exponent_4k_to_max": exponents,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {args.out}")


def _spec(args: argparse.Namespace, causal: bool) -> LayerSpec:
    return LayerSpec(causal=causal, heads=args.heads, kv_heads=args.kv_heads)


def _cell(result: dict, base: float | None = None) -> str:
    if result.get("status") != "ok":
        return result.get("status", "?")
    text = f"{result['median_ms']:.1f} ({result['peak_mb']:.0f} MB)"
    if base:
        text += f" x{base / result['median_ms']:.1f}"
    return text


if __name__ == "__main__":
    main()
