"""meta_schedule tuning of the FFT kernels, with records kept per target.

    python -m attnrewrite.lower.tune rfft --batch 64 --n 1024 --trials 32 --target llvm

tunes one kernel for a target and merges the best schedule of each workload into
``attnrewrite/targets/<target name>/`` (``--out`` for another records root), next to
``target.json``. ``Runner`` / ``compile_kernel`` (and model builds) for that target apply the
records automatically. Tuning measures on this machine, so tune CPU targets on the machine
they are for (set TVM_NUM_THREADS to the target's core count) and CUDA targets on a GPU
(``--rpc host:port:key`` for a remote one). Workloads are matched structurally: a record
applies to the same kernel, shape and dtype only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from attnrewrite.lower import fft
from attnrewrite.lower.targets import SHIPPED, make_target, target_name, write_target_json

KERNELS = {
    "rfft": lambda a: fft.rfft_kernel(a.batch, a.n, a.dtype),
    "irfft": lambda a: fft.irfft_kernel(a.batch, a.n, a.dtype),
    "conv_basis": lambda a: fft.conv_basis_kernel(
        a.batch, a.heads, a.bases, a.n, a.channels, a.dtype
    ),
}


def merge_best(source, folder: Path) -> int:
    """Copy the best record of each workload in ``source`` into the JSONDatabase at
    ``folder``; return how many were copied."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    folder.mkdir(parents=True, exist_ok=True)
    dest = ms.database.JSONDatabase(work_dir=str(folder), module_equality="structural")
    best = {}
    for record in source.get_all_tuning_records():
        if not record.run_secs:
            continue
        secs = sum(float(s) for s in record.run_secs) / len(record.run_secs)
        key = tvm_ffi.structural_hash(record.workload.mod)
        if key not in best or secs < best[key][0]:
            best[key] = (secs, record)
    for _, record in best.values():
        workload = dest.commit_workload(record.workload.mod)
        dest.commit_tuning_record(
            ms.database.TuningRecord(
                record.trace, workload, record.run_secs, record.target, record.args_info
            )
        )
    return len(best)


def tune_kernel(
    kernel: fft.Kernel,
    target="llvm",
    trials: int = 32,
    records_root: Path | None = None,
    work_dir: str | None = None,
    runner=None,
) -> Path:
    """Tune ``kernel`` for ``target`` (``trials`` measured candidates) and merge the best
    schedule into the target's records folder; return that folder."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    target = make_target(target)
    mod = tvm.IRModule({kernel.name: kernel.func})
    folder = (records_root or SHIPPED) / target_name(target)
    with tempfile.TemporaryDirectory() as tmp:
        db = ms.tune_tir(
            mod,
            target,
            work_dir or tmp,
            max_trials_global=trials,
            num_trials_per_iter=min(16, trials),
            builder=ms.builder.LocalBuilder(timeout_sec=120),
            runner=runner or "local",
        )
        merge_best(db, folder)
    write_target_json(target, folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnrewrite tune")
    parser.add_argument("kernel", choices=sorted(KERNELS))
    parser.add_argument("--target", default="llvm", help="llvm, cuda:sm_90, ... (default llvm)")
    parser.add_argument("--arch", help="with --target cuda: sm_80, sm_90, ...")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n", type=int, default=1024, help="FFT length (conv: sequence length)")
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--bases", type=int, default=4)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=fft.DTYPES)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="records root (default shipped)")
    parser.add_argument("--rpc", default=None, help="host:port:key of an RPC tracker")
    args = parser.parse_args(argv)
    if args.arch and args.target != "cuda":
        parser.error("--arch applies to --target cuda")
    target = make_target(f"cuda:{args.arch}" if args.arch else args.target)
    runner = None
    if args.rpc:
        from tvm.s_tir import meta_schedule as ms

        host, port, key = args.rpc.split(":")
        runner = ms.runner.RPCRunner(ms.runner.RPCConfig(host, int(port), key))
    kernel = KERNELS[args.kernel](args)
    untuned = fft.Runner(kernel, target, database=None) if target.kind.name == "llvm" else None
    start = time.perf_counter()
    folder = tune_kernel(kernel, target, args.trials, args.out, runner=runner)
    print(f"tuned {kernel.name} for {target_name(target)} in {time.perf_counter() - start:.0f} s")
    print(f"records: {folder}")
    if untuned is not None:
        import numpy as np

        if args.out:
            previous = os.environ.get("ATTNREWRITE_TARGETS", "")
            os.environ["ATTNREWRITE_TARGETS"] = os.pathsep.join(
                p for p in (str(args.out), previous) if p
            )
        rng = np.random.default_rng(0)
        arrays = [rng.standard_normal(shape) for _, shape in kernel.inputs]
        tuned = fft.Runner(kernel, target, database="auto")
        t0, t1 = untuned.time(*arrays, number=3, repeat=3), tuned.time(*arrays)
        print(f"untuned {t0 * 1e3:.3f} ms, tuned {t1 * 1e3:.3f} ms ({t0 / t1:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
