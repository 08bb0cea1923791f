"""Wall-time measurement shared by the report, the compiled-library check and the benchmarks:
one convention (a warm-up call, then the median of ``repeats`` calls) so that their numbers
compare."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

SHARED_MIN_BYTES = 1 << 20  # initializers this large are shared between timed sessions


def median_ms(run: Callable[[], object], repeats: int, number: int = 1) -> float:
    """Median wall time of one ``run()`` in milliseconds over ``repeats`` timings of
    ``number`` calls each (more calls per timing for calls too short to time alone), after
    one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            run()
        times.append((time.perf_counter() - start) / number)
    return 1e3 * float(np.median(times))


def best_ms(run: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of one ``run()`` in milliseconds over ``repeats`` calls after one
    warm-up call: what the work itself costs, when other load comes and goes (the planner
    compares candidates timed minutes apart on a shared machine)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def interleaved_ms(
    runs: Sequence[Callable[[], object]],
    repeats: int,
    settle: Callable[[], object] | None = None,
) -> list[list[float]]:
    """Wall times (ms) of each run over ``repeats`` rounds of one call each, after one warm-up
    call each. Load that comes and goes on a shared machine then hits every run alike, so
    the numbers of models compared in one report compare. ``settle`` is called before every
    call, outside its timing (memory.release_freed: what one model's run left in the C heap
    is not resident under the next one's)."""
    for run in runs:
        if settle is not None:
            settle()
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, out in zip(runs, times, strict=True):
            if settle is not None:
                settle()
            start = time.perf_counter()
            run()
            out.append(1e3 * (time.perf_counter() - start))
    return times


def cpu_options(threads: int, arena: bool = False) -> ort.SessionOptions:
    """``threads`` intra-op threads (0: onnxruntime's choice), quiet logging, and by default
    no memory arena: a session gives its buffers back after each run, so the sessions a
    report, benchmark or plan keeps side by side fit in memory at long context (SmolLM2 at
    8k: the original peaks at 6 GB alone; a report with arenas kept 18.7 GB, a plan passed
    24 GB). Without it every run pays the page faults of its large buffers (one attention
    node at n = 4096 ran 1.5-3x slower), which slows the original's whole-score attention
    most; ``arena`` times a model as onnxruntime runs it by default."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = arena
    options.log_severity_level = 3
    return options


def cpu_session(path: Path, threads: int, arena: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session on `path` with `cpu_options`."""
    options = cpu_options(threads, arena)
    return ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])


@dataclass(frozen=True)
class SharedWeightSessions:
    """`cpu_session`s that hold the weights their models have alike once, and those buffers,
    which onnxruntime reads in place: they must outlive the sessions, so keep this object for
    as long as any of its sessions runs."""

    sessions: list[ort.InferenceSession]
    weights: dict[str, ort.OrtValue]


def shared_weight_sessions(
    paths: Sequence[Path],
    threads: int,
    arena: bool = False,
    memory_pattern: Sequence[bool] | None = None,
) -> SharedWeightSessions:
    """Sessions on `paths` (`cpu_options`): an initializer of SHARED_MIN_BYTES or more whose
    name and bytes equal the first model's is handed to each session from one buffer
    (SessionOptions.add_initializer) instead of each keeping its own copy. `memory_pattern`
    says per path whether its session keeps onnxruntime's memory pattern (default: all do).

    A rewrite keeps the original's weights, so a report or benchmark that times models side by
    side held them once per session (SmolLM2: 0.65 GiB a session, most of a report's memory
    beside the runs at long context). Shared buffers must stay as given, so these sessions do
    not prepack MatMul weights (onnxruntime then packs them per call, a cost that vanishes
    beside the products at the lengths where memory matters; every model timed alike)."""
    first = _large_initializers(paths[0]) if paths else {}
    weights = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in first.items()}
    sessions = []
    for index, path in enumerate(paths):
        options = cpu_options(threads, arena)
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.enable_mem_pattern = True if memory_pattern is None else memory_pattern[index]
        own = first if index == 0 else _large_initializers(path)
        for name, array in own.items():
            if name in first and np.array_equal(array, first[name]):
                options.add_initializer(name, weights[name])
        del own
        sessions.append(ort.InferenceSession(str(path), options, ["CPUExecutionProvider"]))
    return SharedWeightSessions(sessions, weights)


def _large_initializers(path: Path) -> dict[str, np.ndarray]:
    """The main graph's numeric initializers of SHARED_MIN_BYTES or more, as arrays (numpy's
    own dtypes: what onnxruntime takes from a numpy buffer), each a copy of its own."""
    arrays = {}
    for name, value in ir.load(str(path)).graph.initializers.items():
        tensor = value.const_value
        if tensor is None or tensor.dtype.numpy().kind not in "biuf":
            continue
        if tensor.nbytes >= SHARED_MIN_BYTES:
            arrays[name] = np.array(tensor.numpy())
    return arrays


def session_feeds(
    session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The feeds the session takes (generated inputs may name more)."""
    wanted = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in wanted}
