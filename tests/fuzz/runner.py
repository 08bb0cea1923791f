"""Run fuzz cases through `attnrewrite.cli.main` and classify each one.

Every case runs in a child forked from this process (the libraries are imported once, so a
case costs a fork, not an interpreter start), in its own sandbox, with stdout and stderr
(file descriptors 1 and 2, so the C++ libraries' own writes are caught too) sent to files.
The parent kills a child that runs past the time limit (a hang) or grows past the memory
limit (a blow-up, counted as a crash), and sends a case's signal when it asks for one.

Verdicts:
    ok     exit 0 and nothing on stderr
    error  exit 2 (or 1) with exactly one line "attnrewrite: error: ..." on stderr; or,
           after our SIGINT/SIGTERM, an exit with at most one line, or death by that signal
    crash  anything else: a traceback, several lines, another exit status, a signal of
           its own, the memory limit
    hang   still running at the time limit
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz.cases import Case
from tests.fuzz.sandbox import (
    TRIPWIRE_ENV,
    OpenWatch,
    Sandbox,
    integrity_problems,
    snapshot,
)

TIME_LIMIT_S = 600.0  # a deep model with a large body runs minutes (1,000 polysketch blocks: 3)
MEMORY_LIMIT_BYTES = 4 << 30
POLL_S = 0.02
PAGE = os.sysconf("SC_PAGE_SIZE")
# imported before forking so that no case pays for them (the CLI imports some lazily)
PRELOAD = (
    "attnrewrite.cli",
    "attnrewrite.torch.pt2",
    "attnrewrite.report.render",
    "matplotlib.pyplot",
)


@dataclass(frozen=True)
class Outcome:
    case: Case
    verdict: str
    exit_status: int | None
    stderr: str
    seconds: float
    problems: tuple[str, ...]
    why: str = ""

    def line(self) -> str:
        """One line for a failure listing."""
        detail = self.why or (self.stderr.strip().splitlines() or [""])[-1][:160]
        text = f"[{self.case.family}] {self.case.label}: {self.verdict} ({detail})"
        return text + (f"; integrity: {'; '.join(self.problems)}" if self.problems else "")


def preload() -> None:
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)


@dataclass
class _Running:
    case: Case
    box: Sandbox
    logs: Path
    argv: list[str]
    before: dict
    watch: OpenWatch
    started: float
    signalled: bool = False


def run_cases(
    cases: Iterable[Case],
    workers: int = 2,
    time_limit: float = TIME_LIMIT_S,
    memory_limit: int = MEMORY_LIMIT_BYTES,
) -> Iterator[Outcome]:
    """Outcomes in completion order; `workers` children at a time."""
    preload()
    pending = list(cases)
    pending.reverse()
    running: dict[int, _Running] = {}
    with tempfile.TemporaryDirectory(prefix="attnrewrite-fuzz-") as base:
        counter = 0
        while pending or running:
            while pending and len(running) < workers:
                counter += 1
                pid, state = _start(pending.pop(), Path(base) / f"case{counter}")
                running[pid] = state
            time.sleep(POLL_S)
            for pid, state in list(running.items()):
                outcome = _poll(pid, state, time_limit, memory_limit)
                if outcome is not None:
                    del running[pid]
                    yield outcome


def _start(case: Case, folder: Path) -> tuple[int, _Running]:
    box = Sandbox(folder / "box")
    box.create()
    case.setup(box)
    logs = folder / "logs"
    logs.mkdir()
    for name in ("stdout", "stderr"):  # there even when a signal kills the child at once
        (logs / name).touch()
    argv = [box.fill(a) for a in case.argv]
    before = snapshot(box.root)
    watch = OpenWatch(box.outside)
    pid = os.fork()
    if pid == 0:
        _child(argv, box, logs)
    return pid, _Running(case, box, logs, argv, before, watch, time.monotonic())


def _child(argv: list[str], box: Sandbox, logs: Path) -> None:
    """Runs in the forked child: the CLI exactly as `python -m attnrewrite` would."""
    code = 1
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(box.cwd)
        os.environ[TRIPWIRE_ENV] = str(box.marker)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(logs / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
        sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
        from attnrewrite.cli import main

        try:
            result = main(argv)
            code = 0 if result is None else int(result)
        except SystemExit as exc:  # what `sys.exit(main())` would make of it
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _poll(pid: int, state: _Running, time_limit: float, memory_limit: int) -> Outcome | None:
    elapsed = time.monotonic() - state.started
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        return _finish(state, status, elapsed)
    if state.case.signal is not None and not state.signalled:
        number, delay = state.case.signal
        if elapsed >= delay:
            os.kill(pid, number)
            state.signalled = True
    why = ""
    if elapsed > time_limit:
        why = f"hang: still running after {time_limit:.0f} s"
    elif _rss(pid) > memory_limit:
        why = f"crash: memory above {memory_limit >> 20} MiB"
    if not why:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    outcome = _finish(state, None, elapsed)
    verdict, reason = why.split(": ", 1)
    return Outcome(outcome.case, verdict, None, outcome.stderr, elapsed, outcome.problems, reason)


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _finish(state: _Running, status: int | None, elapsed: float) -> Outcome:
    opened = state.watch.opened()
    stderr = (state.logs / "stderr").read_text(errors="replace")
    verdict, why, code = "crash", "", None
    if status is not None:
        verdict, why = classify(status, stderr, state.signalled, state.case.signal)
        code = os.waitstatus_to_exitcode(status)
    kept = code in (0, 1)
    after = snapshot(state.box.root)
    outputs = tuple(Path(state.box.fill(o)) for o in state.case.outputs)
    if not any(a in ("-o", "--out") for a in state.argv):  # the default ./MODEL-METHOD
        outputs += tuple(state.box.cwd / p for p in _new_in_cwd(state, after))
    problems = integrity_problems(state.box, state.before, after, outputs, kept, opened)
    return Outcome(state.case, verdict, code, stderr, elapsed, tuple(problems), why)


def _new_in_cwd(state: _Running, after: dict) -> set[str]:
    """New visible entries at the top of cwd."""
    cwd = state.box.cwd.relative_to(state.box.root)
    return {
        Path(rel).relative_to(cwd).parts[0]
        for rel in set(after) - set(state.before)
        if Path(rel).is_relative_to(cwd)
        and Path(rel) != cwd
        and not Path(rel).relative_to(cwd).parts[0].startswith(".")
    }


def classify(
    status: int, stderr: str, signalled: bool, sent: tuple[int, float] | None
) -> tuple[str, str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if signalled and sent is not None and number == sent[0] and len(lines) <= 1:
            return "error", ""
        return "crash", f"killed by signal {number}"
    code = os.WEXITSTATUS(status)
    if "Traceback (most recent call last)" in stderr:
        return "crash", f"traceback: {lines[-1][:200]}"
    if code == 0:
        return ("ok", "") if not lines else ("crash", f"exit 0 with {len(lines)} stderr lines")
    one_line = len(lines) == 1 and lines[0].startswith("attnrewrite:")
    if code in (1, 2) and one_line and "error:" in lines[0]:
        return "error", ""
    if signalled and len(lines) <= 1:
        return "error", ""
    return "crash", f"exit {code} with {len(lines)} stderr lines"
