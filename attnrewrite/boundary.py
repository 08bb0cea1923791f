"""The command line's one error boundary: whatever a stage or a library raises ends here as
one line on stderr and an exit status.

    0    done
    1    the rewrite failed its verification (the outputs are kept for inspection)
    2    bad input or options, or a library (onnx, onnx-ir, onnxruntime, torch, numpy, TVM)
         failed on the input: "attnrewrite: error: FILE: what is wrong (library Error)"
    130  interrupted by SIGINT, 143 by SIGTERM: the stack unwinds, so staging folders are
         removed, and nothing is written; once an output folder has been renamed into place
         the command is past its point of no return and finishes (exit 0) instead

Libraries stay quiet unless --verbose: Python warnings and logging are off, and both file
descriptor 2 (where C++ libraries write) and sys.stderr (where some Python libraries print)
go to /dev/null; our progress bars reach the user through `user_stderr`, and the final line
is printed once stderr is back. --debug prints the traceback too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from attnrewrite.errors import AttnRewriteError, VerificationError

EXIT_VERIFICATION = 1
EXIT_BAD_INPUT = 2
NOTE = "while reading "  # the note `about` adds; the boundary names the file from it
LIBRARY_TEXT = 300  # characters of a library's message kept in the line
_COMMITTING: list[Path] = []  # staging folders of this run being renamed into place
_HELD = {"depth": 0, "signal": 0}  # open interruptions_held blocks, the signal they hold back


class Interrupted(BaseException):
    """SIGINT or SIGTERM: unwinds the stack as KeyboardInterrupt does (for SIGTERM too)."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


@contextlib.contextmanager
def about(*paths: Path | str) -> Iterator[None]:
    """A failure inside names these input files in its line."""
    try:
        yield
    except Exception as err:
        err.add_note(NOTE + " and ".join(str(p) for p in paths))
        raise


def one_line(err: BaseException) -> str:
    """What the user reads after "attnrewrite: error: "."""
    if isinstance(err, AttnRewriteError):
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        return "; ".join(lines) or type(err).__name__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = (lines[0] if lines else "")[:LIBRARY_TEXT] or "failed"
    library = type(err).__module__.split(".")[0]
    kind = type(err).__name__ if library == "builtins" else f"{library} {type(err).__name__}"
    files = [n[len(NOTE) :] for n in getattr(err, "__notes__", []) if n.startswith(NOTE)]
    return f"{files[0]}: {text} ({kind})" if files else f"{text} ({kind})"


def run(command: Callable[[], int], debug: bool = False, verbose: bool = False) -> int:
    """Run a command; every way it can end becomes an exit status and at most one line."""
    try:
        with interruptible(), quiet_libraries(verbose):
            return command()
    except (Interrupted, KeyboardInterrupt) as err:  # KeyboardInterrupt: before ours was in
        number = err.number if isinstance(err, Interrupted) else signal.SIGINT
        line = f"interrupted ({signal.Signals(number).name}); nothing written"
        code = 128 + number
    except Exception as err:
        if debug:
            traceback.print_exc()
        line = one_line(err)
        code = EXIT_VERIFICATION if isinstance(err, VerificationError) else EXIT_BAD_INPUT
    print(f"attnrewrite: error: {line}".replace("\n", " "), file=sys.stderr)
    return code


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted once; later ones are ignored while unwinding."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    numbers = (signal.SIGINT, signal.SIGTERM)

    def interrupt(number: int, frame: object) -> None:
        if any(not staging.exists() for staging in _COMMITTING):
            return  # an output is in place: "nothing written" would be false
        if _HELD["depth"]:
            _HELD["signal"] = _HELD["signal"] or number
            return
        _raise_interrupted(number)

    previous = {n: signal.signal(n, interrupt) for n in numbers}
    try:
        yield
    finally:
        for n, handler in previous.items():
            signal.signal(n, handler)
        _COMMITTING.clear()
        _HELD.update(depth=0, signal=0)


def _raise_interrupted(number: int) -> None:
    for n in (signal.SIGINT, signal.SIGTERM):
        signal.signal(n, signal.SIG_IGN)  # once: the stack unwinds undisturbed
    raise Interrupted(number)


@contextlib.contextmanager
def interruptions_held() -> Iterator[Callable[[], None]]:
    """SIGINT/SIGTERM arriving in the block wait until the `resume()` it yields (or its end)
    and are raised there: a staging folder is created and the `try` that removes it entered
    with no interruption landing between the two (one did, and left the folder behind)."""
    _HELD["depth"] += 1
    holding = True

    def resume() -> None:
        nonlocal holding
        if holding:
            holding = False
            _HELD["depth"] -= 1
            if not _HELD["depth"] and _HELD["signal"]:
                number, _HELD["signal"] = _HELD["signal"], 0
                _raise_interrupted(number)

    try:
        yield resume
    except BaseException:
        if holding:
            holding = False
            _HELD["depth"] -= 1
        raise
    resume()


@contextlib.contextmanager
def point_of_no_return(staging: Path) -> Iterator[None]:
    """Around renaming `staging` into place: an interruption before the rename unwinds as
    usual; after it, SIGINT/SIGTERM are ignored so the command ends as a success with its
    outputs, never as "interrupted; nothing written" with them in place."""
    _COMMITTING.append(staging)
    try:
        yield
    except BaseException:
        _COMMITTING.remove(staging)
        raise


@contextlib.contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """Library warnings, log records and C++ writes to stderr stay hidden (see module doc)."""
    if verbose:
        yield
        return
    with warnings.catch_warnings(), _stderr_to_null():
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


_TERMINAL: list[TextIO] = []  # the user's stderr while the libraries' goes to /dev/null


def user_stderr() -> TextIO:
    """Where our own progress goes: the user's stderr, also while the libraries are quiet."""
    return _TERMINAL[-1] if _TERMINAL else sys.stderr


@contextlib.contextmanager
def _stderr_to_null() -> Iterator[None]:
    """fd 2 and sys.stderr to /dev/null (libraries print from C++ and from Python), the
    user's stderr kept for `user_stderr`: a copy of the old fd 2, or the stream a test
    captures."""
    ours = sys.stderr
    ours.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to hide
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    terminal = ours
    if _writes_to_fd2(ours):
        terminal = io.TextIOWrapper(
            io.FileIO(saved, "w", closefd=False),
            encoding=ours.encoding,
            errors="backslashreplace",
            line_buffering=True,
        )
    _TERMINAL.append(terminal)
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - closed below, when ours is back
    try:
        yield
    finally:
        sys.stderr.close()
        sys.stderr = ours
        _TERMINAL.pop()
        terminal.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _writes_to_fd2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
