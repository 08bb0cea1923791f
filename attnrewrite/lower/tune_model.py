"""meta_schedule tuning of every TIR function of a whole (rewritten) model, records per target.

    attnrewrite tune model.onnx --target llvm --dim batch=1 --dim seq=4096 --trials 200
    attnrewrite tune model.onnx --dim batch=1 --dim seq=4096 --trials 5000 --time-limit 3600 \
        --work-dir tuning/     # stops measuring after an hour; a later run resumes from tuning/

imports the model as ``build`` does (``prepare`` -> ``to_relax`` -> ``legalize``), extracts
one task per distinct PrimFunc, tunes them together (meta_schedule's gradient task scheduler:
round-robin first, ``--per-task`` trials per task and round, so ``--trials`` should be at least
tasks x per-task) and merges the best schedule of each workload that beats its default schedule
(``attnrewrite.lower.schedules``, timed here; a short run mostly does not) into
``attnrewrite/targets/<target name>/`` (``--out`` for another records root). A later ``build``
for that target applies them through ``compile_relax``: the workloads are the legalized,
unfused PrimFuncs, matched structurally, so the records apply to the same model at the same
shapes only. Tune CPU targets on the machine they are for: TVM_NUM_THREADS defaults to the
target's core count while tuning.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from attnrewrite.lower.relax_import import legalize, prepare, to_relax
from attnrewrite.lower.targets import make_target, records_dir, target_name, write_target_json
from attnrewrite.lower.tune import (
    add_target_options,
    build_cpu,
    defaults_baseline,
    merge_best,
    rpc_runner,
    target_of,
)


def tune_model(
    model_path: str | os.PathLike,
    dims: Mapping[str, int],
    target="llvm",
    trials: int = 200,
    per_task: int = 4,
    records_root: Path | None = None,
    runner=None,
    against_defaults: bool = True,
    work_dir: str | None = None,
    time_limit: float | None = None,
) -> tuple[Path, int]:
    """Tune every PrimFunc of the model built at ``dims`` for ``target`` (``trials`` measured
    candidates in all) and merge the best records into the target's folder; return the folder
    and the number of workloads recorded. With ``against_defaults`` (and measurements on this
    machine: an llvm target and no ``runner``), a record is kept only where it beats the
    workload's default schedule (``tune.default_seconds``). ``work_dir`` keeps meta_schedule's
    logs and database (default: a temporary folder); after ``time_limit`` seconds no new batch
    of candidates is measured (``deadline``)."""
    from tvm.s_tir import meta_schedule as ms

    target = make_target(target)
    mod = legalize(to_relax(prepare(model_path, dims)), target)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    folder = records_dir(target, records_root)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = work_dir or scratch
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks,
            tmp,
            # the default population (512 evolved per batch) costs more than the few trials
            # each small task gets here measure
            strategy=ms.search_strategy.EvolutionarySearch(
                population_size=min(512, max(64, 16 * per_task))
            ),
        )
        db = ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=tmp,
            max_trials_global=trials,
            num_trials_per_iter=per_task,
            builder=ms.builder.LocalBuilder(
                timeout_sec=120, f_build=build_cpu if target.kind.name == "llvm" else None
            ),
            runner=runner or "local",
            measure_callbacks=[
                *ms.measure_callback.MeasureCallback.create("default"),
                *([deadline(time_limit)] if time_limit is not None else []),
            ],
        )
        baseline = defaults_baseline(target, runner) if against_defaults else None
        count = merge_best(db, folder, baseline)
    write_target_json(target, folder)
    return folder, count


def deadline(seconds: float):
    """A meta_schedule measure callback that ends every task once ``seconds`` have passed
    since it was made: the batch just measured is kept, no new one starts, and the task
    scheduler returns its database as at the end of a full run. Every task still gets its
    first batch (the scheduler's opening round-robin), so a run lasts at least that long."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    end = time.monotonic() + seconds

    @derived_object
    class Deadline(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, results):
            if time.monotonic() >= end:
                for index, task in enumerate(task_scheduler.tasks_):
                    if not task.is_terminated:
                        task_scheduler.terminate_task(index)

    return Deadline()


def parse_dims(items: list[str]) -> dict[str, int]:
    """``["batch=1", "seq=64"]`` -> ``{"batch": 1, "seq": 64}``."""
    dims = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise argparse.ArgumentTypeError(f"--dim wants name=value, got {item!r}")
        dims[name] = int(value)
    return dims


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnrewrite tune MODEL.onnx",
        description="Tune every function of a model at fixed shapes (--dim per symbolic dim).",
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--dim", action="append", default=[], help="name=value, per symbolic dim")
    parser.add_argument("--trials", type=int, default=200, help="measured candidates in all")
    parser.add_argument("--per-task", type=int, default=4, help="trials per task and round")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds: no new batch is measured after this (every task still gets its first "
        "batch); the records so far are merged",
    )
    add_target_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    target = target_of(args, parser)
    try:
        dims = parse_dims(args.dim)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    if target.kind.name == "llvm" and not args.rpc:
        os.environ.setdefault("TVM_NUM_THREADS", str(int(target.attrs["num-cores"])))

    runner = rpc_runner(args.rpc, args.rpc_workers) if args.rpc else None
    start = time.perf_counter()
    folder, count = tune_model(
        args.model,
        dims,
        target,
        args.trials,
        args.per_task,
        args.out,
        runner=runner,
        work_dir=args.work_dir,
        time_limit=args.time_limit,
    )
    print(
        f"tuned {args.model} for {target_name(target)} in {time.perf_counter() - start:.0f} s: "
        f"{count} workloads recorded in {folder} (those whose best schedule beat the default)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
