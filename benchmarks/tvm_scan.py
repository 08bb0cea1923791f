"""TVM block scan (attnrewrite.lower.scan) against torch's cumsum and Relax's cumsum.

PolySketch's across-block term, far = phi_q . (exclusive prefix over blocks of
phi_k^T [v, 1]), at B*H rows of n tokens, R features, E value columns, block b, float32:

- TVM untuned: ``scan.block_scan_kernel`` with the default CPU schedules
  (``attnrewrite.lower.schedules``; TVM's own CPU lowering schedules nothing);
- TVM tuned: the same kernel with this machine's records from attnrewrite/targets (or
  ``--records``), written by ``attnrewrite tune scan``; "-" where no record matches the shape;
- torch: the reference's formulation (batched matmuls and ``cumsum`` over blocks);
- relax cumsum: the ONNX body's formulation (MatMul, exclusive CumSum, MatMul) as Relax ops,
  compiled by ``tvm.compile`` with default lowering, what an imported model would run.

    python -m benchmarks.tvm_scan                     # n = 1k, 4k, 16k; 8 rows, R = E = 64
    python -m benchmarks.tvm_scan --lengths 1024 --threads 2 --json /tmp/scan.json

Each time is the median of ``--repeat`` timings after one warm-up call, device-resident inputs
for TVM. Prints a table and writes JSON (default benchmarks/results/tvm_scan_2core.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def calls_within(fn, budget: float = 0.2) -> int:
    """How many calls of ``fn`` take about ``budget`` seconds, from one timed call."""
    start = time.perf_counter()
    fn()
    return max(1, int(budget / max(time.perf_counter() - start, 1e-6)))


def relax_cumsum_module(rows: int, n: int, features: int, width: int, block: int):
    """Relax ``main(phi_q, phi_k, x) -> far`` as the ONNX body computes it (n % block == 0)."""
    from tvm import relax

    nk = n // block
    bb = relax.BlockBuilder()
    args = [
        relax.Var(name, relax.TensorType([rows, n, w], "float32"))
        for name, w in (("phi_q", features), ("phi_k", features), ("x", width))
    ]
    op = relax.op
    with bb.function("main", args):
        with bb.dataflow():
            q, k, x = (bb.emit(op.reshape(a, [rows, nk, block, -1])) for a in args)
            states = bb.emit(op.matmul(bb.emit(op.permute_dims(k, [0, 1, 3, 2])), x))
            prefix = bb.emit(op.cumsum(states, axis=1, exclusive=True))
            far = bb.emit(op.reshape(bb.emit(op.matmul(q, prefix)), [rows, n, width]))
            out = bb.emit_output(far)
        bb.emit_func_output(out)
    return bb.get()


def torch_scan(q, k, x, block: int):
    """far by torch: per-block states, cumsum over blocks minus the own block, matmul."""
    rows, n, features = q.shape
    nk = n // block
    kb, xb = k.view(rows, nk, block, features), x.view(rows, nk, block, -1)
    states = kb.transpose(-1, -2) @ xb
    prefix = states.cumsum(1) - states
    return (q.view(rows, nk, block, features) @ prefix).view(rows, n, -1)


def measure(n: int, args, target, db) -> dict:
    """One length: every formulation's error against float64 numpy and its median time."""
    import torch
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from attnrewrite.lower import scan
    from attnrewrite.lower.runner import Runner
    from attnrewrite.timing import median_ms
    from tests.lower.references import block_scan_reference

    rng = np.random.default_rng(n)
    shapes = ((args.rows, n, args.features),) * 2 + ((args.rows, n, args.width),)
    q, k, x = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    want = block_scan_reference(q, k, x, args.block)
    scale = np.abs(want).max()
    kernel = scan.block_scan_kernel(args.rows, n, n, args.features, args.width, args.block)
    row = {"n": n, "rows": args.rows, "features": args.features, "width": args.width}
    row |= {"block": args.block, "gflop": kernel.flops / 1e9}
    runners = {"tvm_untuned": Runner(kernel, target, database=None), "tvm_tuned": None}
    mod = tvm.IRModule({kernel.name: kernel.func})
    if db is not None and ms.tir_integration.compile_tir(db, mod, target) is not None:
        runners["tvm_tuned"] = Runner(kernel, target, database=db)
    for name, runner in runners.items():
        row[f"{name}_ms"] = None
        if runner is None:
            continue
        row[f"{name}_err"] = float(np.abs(runner(q, k, x) - want).max() / scale)
        number = max(1, int(0.2 / runner.time(q, k, x, number=1, repeat=1)))
        row[f"{name}_ms"] = runner.time(q, k, x, number=number, repeat=args.repeat) * 1e3
    tq, tk, tx = (torch.from_numpy(a) for a in (q, k, x))
    got = torch_scan(tq, tk, tx, args.block).numpy()
    row["torch_err"] = float(np.abs(got - want).max() / scale)

    def torch_run():
        return torch_scan(tq, tk, tx, args.block)

    row["torch_ms"] = median_ms(torch_run, args.repeat, calls_within(torch_run))
    module = relax_cumsum_module(args.rows, n, args.features, args.width, args.block)
    vm = relax.VirtualMachine(tvm.compile(module, target=target), tvm.cpu())
    dev_args = [tvm.runtime.tensor(a) for a in (q, k, x)]
    row["relax_cumsum_err"] = float(np.abs(vm["main"](*dev_args).numpy() - want).max() / scale)

    def relax_run():
        return vm["main"](*dev_args)

    row["relax_cumsum_ms"] = median_ms(relax_run, args.repeat, calls_within(relax_run))
    return row


def run(args) -> dict:
    import torch
    import tvm

    from attnrewrite.lower.targets import find_records, make_target, target_name

    torch.set_num_threads(args.threads)
    target = make_target("llvm")
    if args.records:
        os.environ["ATTNREWRITE_TARGETS"] = str(args.records)
    records = find_records(target)
    db = None
    if records is not None:
        from tvm.s_tir import meta_schedule as ms

        db = ms.database.JSONDatabase(work_dir=str(records), module_equality="structural")
    rows = []
    for n in args.lengths:
        if n % args.block:
            raise SystemExit(f"--lengths must be multiples of --block ({args.block}), got {n}")
        rows.append(measure(n, args, target, db))
        print(table(rows[-1:], header=len(rows) == 1), flush=True)
    return {
        "benchmark": "tvm_scan",
        "environment": {
            "target": target_name(target),
            "cpu": platform.processor() or platform.machine(),
            "cores": len(os.sched_getaffinity(0)),
            "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(),
            "tvm": tvm.__version__,
            "torch": torch.__version__,
            "records": str(records) if records else None,
        },
        "rows": rows,
    }


COLUMNS = ("n", "gflop", "tvm_untuned_ms", "tvm_tuned_ms", "torch_ms", "relax_cumsum_ms")


def table(rows: list[dict], header: bool = True) -> str:
    lines = ["  ".join(f"{c:>16}" for c in COLUMNS)] if header else []
    for row in rows:
        cells = []
        for c in COLUMNS:
            v = row.get(c)
            cells.append(
                f"{'-':>16}" if v is None else f"{v:16.3f}" if isinstance(v, float) else f"{v:>16}"
            )
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--rows", type=int, default=8, help="batch x heads")
    parser.add_argument("--features", type=int, default=64, help="R: features per token")
    parser.add_argument("--width", type=int, default=64, help="E: value columns (dv + 1)")
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="TVM and torch threads")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--records", type=Path, default=None, help="records root to use")
    parser.add_argument("--json", type=Path, default=RESULTS / "tvm_scan_2core.json")
    args = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    result = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
