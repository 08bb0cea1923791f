"""meta_schedule tuning of the FFT and block-scan kernels, with records kept per target.

    python -m attnrewrite.lower.tune rfft --batch 64 --n 1024 --trials 32 --target llvm
    python -m attnrewrite.lower.tune scan --batch 8 --n 4096 --features 64 --channels 64

tunes one kernel for a target and merges the best schedule of each workload into
``attnrewrite/targets/<target name>/`` (``--out`` for another records root), next to
``target.json``. ``runner.Runner`` / ``runner.compile_kernel`` (and model builds) for that
target apply the records automatically. Tuning measures on this machine, so tune CPU targets
on the machine they are for (set TVM_NUM_THREADS to the target's core count) and CUDA targets
on a GPU (``--rpc host:port:key`` for a remote one). Workloads are matched structurally: a
record applies to the same kernel, shape and dtype only.

Over RPC, candidates are built here and measured on the servers registered with the tracker
under ``key`` (``python -m tvm.exec.rpc_tracker``, ``python -m tvm.exec.rpc_server --tracker
host:port --key key``); ``--rpc-workers N`` measures on up to N of them at once. The build
target is still ``--target``: name the servers' CPU (``--target llvm:znver4`` with
``TVM_NUM_THREADS`` set on the servers) when they are not this machine's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from attnrewrite.lower import fft, scan
from attnrewrite.lower.kernel import DTYPES, Kernel
from attnrewrite.lower.runner import Runner
from attnrewrite.lower.targets import make_target, records_dir, target_name, write_target_json

KERNELS = {
    "rfft": lambda a: fft.rfft_kernel(a.batch, a.n, a.dtype),
    "irfft": lambda a: fft.irfft_kernel(a.batch, a.n, a.dtype),
    "conv_basis": lambda a: fft.conv_basis_kernel(
        a.batch, a.heads, a.bases, a.n, a.channels, a.dtype
    ),
    "scan": lambda a: scan.block_scan_kernel(
        a.batch * a.heads, a.n, a.n, a.features, a.channels, a.block, a.dtype
    ),
}


def merge_best(source, folder: Path, baseline=None) -> int:
    """Copy the best record of each workload in ``source`` into the JSONDatabase at
    ``folder``; return how many were copied. ``baseline(workload_mod)``, when given, is the
    workload's run time without a record (``default_seconds``): records slower than it are
    left out, so that a short tuning run cannot make a build slower than the defaults."""
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
    if baseline is not None:
        best = {k: v for k, v in best.items() if v[0] < baseline(v[1].workload.mod)}
    for _, record in best.values():
        workload = dest.commit_workload(record.workload.mod)
        dest.commit_tuning_record(
            ms.database.TuningRecord(
                record.trace, workload, record.run_secs, record.target, record.args_info
            )
        )
    return len(best)


def default_seconds(mod, target) -> float:
    """Mean run time here of a workload (an IRModule of one PrimFunc) under the default
    schedules of ``attnrewrite.lower.schedules``, timed as meta_schedule's local runner times
    candidates (3 runs per measurement, at least 100 ms): random float inputs, zeros for
    integer ones (they may be gather indices)."""
    import numpy as np
    import tvm

    from attnrewrite.lower.schedules import schedule  # TVM's compiler: not for tune --help

    target = make_target(target)
    ((gvar, func),) = mod.functions.items()
    lib = tvm.compile(schedule(mod, target), target=target).jit()
    rng = np.random.default_rng(0)
    args = []
    for param in func.params:
        shape = [int(d) for d in param.ty.shape]
        dtype = str(param.ty.dtype)
        kind = np.dtype(dtype).kind
        array = rng.standard_normal(shape).astype(dtype) if kind == "f" else np.zeros(shape, dtype)
        args.append(tvm.runtime.tensor(array))
    timer = lib.time_evaluator(gvar.name_hint, tvm.cpu(), number=3, repeat=1, min_repeat_ms=100)
    return float(timer(*args).mean)


def defaults_baseline(target, runner=None) -> Callable[[Any], float] | None:
    """``default_seconds`` for ``target`` as ``merge_best``'s baseline, when candidates are
    measured on this machine (an llvm target, no remote runner): only then do their times
    compare with it."""
    if runner is not None or target.kind.name != "llvm":
        return None
    return partial(default_seconds, target=target)


def build_cpu(mod, target, _params=None):
    """meta_schedule's default build minus its ``import tvm.s_tir.tensor_intrin``: that
    import parses every intrinsic library (20-25 s, mostly CUDA's) in each builder worker, and
    LocalBuilder starts new workers for every batch. A CPU candidate reaches the builder
    already tensorized or not, so lowering it needs no intrinsic registry."""
    from tvm import tirx
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def tune_kernel(
    kernel: Kernel,
    target="llvm",
    trials: int = 32,
    records_root: Path | None = None,
    work_dir: str | None = None,
    runner=None,
    against_defaults: bool = True,
) -> Path:
    """Tune ``kernel`` for ``target`` (``trials`` measured candidates) and merge the best
    schedule into the target's records folder; return that folder. With ``against_defaults``
    (and an llvm target measured here) only when it beats the default schedule."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    target = make_target(target)
    mod = tvm.IRModule({kernel.name: kernel.func})
    folder = records_dir(target, records_root)
    with tempfile.TemporaryDirectory() as tmp:
        db = ms.tune_tir(
            mod,
            target,
            work_dir or tmp,
            max_trials_global=trials,
            num_trials_per_iter=min(16, trials),
            # 512 candidates evolved per batch (the default) cost ~20 s on 2 cores: scale the
            # population down for the few-trial runs (smoke tests) that would spend most there
            strategy=ms.search_strategy.EvolutionarySearch(
                population_size=min(512, max(64, 16 * trials))
            ),
            builder=ms.builder.LocalBuilder(
                timeout_sec=120, f_build=build_cpu if target.kind.name == "llvm" else None
            ),
            runner=runner or "local",
        )
        merge_best(db, folder, defaults_baseline(target, runner) if against_defaults else None)
    write_target_json(target, folder)
    return folder


def rpc_runner(spec: str, workers: int = 1, timeout_sec: int = 60):
    """A meta_schedule RPCRunner for ``host:port:key`` (a tracker), measuring on up to
    ``workers`` servers at once; ``timeout_sec`` bounds each session (connect, upload, run)."""
    from tvm.s_tir import meta_schedule as ms

    host, port, key = spec.split(":", 2)
    config = ms.runner.RPCConfig(host, int(port), key, session_timeout_sec=timeout_sec)
    return ms.runner.RPCRunner(config, max_workers=workers)


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """Where to tune for and where the records go: shared by kernel and model tuning."""
    parser.add_argument("--target", default="llvm", help="llvm, cuda:sm_90, ... (default llvm)")
    parser.add_argument("--arch", help="with --target cuda: sm_80, sm_90, ...")
    parser.add_argument("--out", type=Path, default=None, help="records root (default shipped)")
    parser.add_argument("--rpc", default=None, help="host:port:key of an RPC tracker")
    parser.add_argument("--rpc-workers", type=int, default=1, help="servers measured at once")
    parser.add_argument(
        "--work-dir",
        default=None,
        help="keep meta_schedule's logs and database here (default: a temporary folder); a run "
        "into an existing one starts its search from the records already there",
    )


def target_of(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The tvm Target the options name (``--arch`` only with ``--target cuda``)."""
    if args.arch and args.target != "cuda":
        parser.error("--arch applies to --target cuda")
    return make_target(f"cuda:{args.arch}" if args.arch else args.target)


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnrewrite tune",
        description="Tune one kernel (FFT stages, conv-basis kernel, block scan) at given sizes.",
    )
    parser.add_argument("kernel", choices=sorted(KERNELS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--n", type=int, default=1024, help="FFT length (conv, scan: sequence length)"
    )
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--bases", type=int, default=4)
    parser.add_argument("--channels", type=int, default=16, help="conv channels, scan width E")
    parser.add_argument("--features", type=int, default=64, help="scan: features per token R")
    parser.add_argument("--block", type=int, default=256, help="scan: block size")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--trials", type=int, default=32)
    add_target_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    target = target_of(args, parser)
    runner = rpc_runner(args.rpc, args.rpc_workers) if args.rpc else None
    kernel = KERNELS[args.kernel](args)
    local = defaults_baseline(target, runner) is not None  # timings here mean this machine
    untuned = Runner(kernel, target, database=None) if local else None
    start = time.perf_counter()
    folder = tune_kernel(kernel, target, args.trials, args.out, args.work_dir, runner)
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
        tuned = Runner(kernel, target, database="auto")
        t0, t1 = untuned.time(*arrays, number=3, repeat=3), tuned.time(*arrays)
        print(f"default schedule {t0 * 1e3:.3f} ms, with records {t1 * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
