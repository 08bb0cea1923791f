"""The command line's error boundary: a library failing on a damaged model is one line naming
the file (exit 2), --debug adds the traceback, library noise stays off stderr unless
--verbose, and SIGINT/SIGTERM end the run with nothing written."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from attnrewrite.cli import main
from tests.corpus.handbuilt import all_cases

ROOT = Path(__file__).parents[1]
CASES = {case.name: case for case in all_cases()}


def _unknown_operator(tmp_path: Path) -> Path:
    """A node of an operator no opset has: onnx's checker raises on the file. (Two writers of
    one value, the earlier case here, is now refused by attnrewrite.repair in its own words.)"""
    model = onnx.ModelProto()
    model.CopyFrom(CASES["gqa_expand"].model)
    next(n for n in model.graph.node if n.op_type == "MatMul").op_type = "MatMulX"
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    return path


def test_library_failure_is_one_line_naming_the_file(tmp_path, capsys) -> None:
    source = _unknown_operator(tmp_path)
    assert main([str(source), "--method", "exact", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"attnrewrite: error: {source}: ")
    assert "No Op registered for MatMulX" in err and err.endswith("(onnx ValidationError)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_debug_adds_the_traceback(tmp_path, capsys) -> None:
    source = _unknown_operator(tmp_path)
    assert main([str(source), "--method", "exact", "-o", str(tmp_path / "out"), "--debug"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):"
    assert err[-1].startswith(f"attnrewrite: error: {source}: ")


NOISY = """
    import logging, os, sys, warnings
    import attnrewrite.cli as cli
    import attnrewrite.pipeline as pipeline

    def noisy_rewrite(*args, **kwargs):
        warnings.warn("a library warning")
        logging.getLogger("torch").warning("a library log record")
        os.write(2, b"a C++ library writing to fd 2\\n")
        raise RuntimeError("the library gave up")

    pipeline.rewrite_model = noisy_rewrite  # the command imports it when it runs
    sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_library_noise_reaches_stderr_only_with_verbose(tmp_path, verbose) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(CASES["gqa_expand"].model, str(source))
    argv = [str(source), "--method", "exact", "-o", str(tmp_path / "out")]
    done = _run(NOISY, [*argv, *(["--verbose"] if verbose else [])])
    assert done.returncode == 2
    last = f"attnrewrite: error: {source}: the library gave up (RuntimeError)"
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == last
    noise = ("a library warning", "a library log record", "a C++ library writing to fd 2")
    if verbose:
        assert all(any(n in line for line in lines) for n in noise), lines
    else:
        assert lines == [last]


SIGNAL_AFTER = """
    import os, signal, sys, tempfile
    import attnrewrite.pipeline as pipeline
    import attnrewrite.cli as cli

    call = {owner}.{attribute}

    def call_then_signal(*args, **kwargs):
        result = call(*args, **kwargs)
        if {when}:
            os.kill(os.getpid(), signal.{name})
        return result

    {owner}.{attribute} = call_then_signal
    sys.exit(cli.main(sys.argv[1:]))
"""
SAVED = ("pipeline", "save_model", "True")  # the staging folder now holds a whole model
RENAMED = ("os", "replace", "os.path.basename(args[1]) == 'out'")  # the outputs are in place
MADE = ("tempfile", "mkdtemp", "True")  # a staging folder, not yet in the try that removes it


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_removes_the_staging_folders(tmp_path, number) -> None:
    done = _interrupted(tmp_path, SAVED, number, "out")
    assert (done.returncode, done.stderr) == (128 + number, _nothing_written(number))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no out, no .out.*


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_after_the_outputs_are_in_place_lets_the_command_finish(tmp_path, number) -> None:
    done = _interrupted(tmp_path, RENAMED, number, "out")
    assert (done.returncode, done.stderr) == (0, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out"]
    assert (tmp_path / "out" / "model.onnx").is_file()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_as_a_staging_folder_is_made_leaves_nothing(tmp_path, number) -> None:
    done = _interrupted(tmp_path, MADE, number, "sub/out")
    assert (done.returncode, done.stderr) == (128 + number, _nothing_written(number))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no sub/, no .out.*


STARTING = """
    import builtins, os, signal, sys

    load = builtins.__import__

    def interrupt_the_import(name, *args, **kwargs):
        if name == "attnrewrite.cli":  # what the command line imports first
            os.kill(os.getpid(), signal.SIGINT)
        return load(name, *args, **kwargs)

    builtins.__import__ = interrupt_the_import
    from attnrewrite.__main__ import main
    sys.exit(main())
"""


def test_sigint_during_start_up_is_one_line(tmp_path) -> None:
    done = _run(STARTING, ["inspect", "m.onnx"], cwd=tmp_path)
    assert (done.returncode, done.stderr) == (128 + signal.SIGINT, _nothing_written(signal.SIGINT))


def _interrupted(
    tmp_path: Path, after: tuple[str, str, str], number: int, out: str
) -> subprocess.CompletedProcess:
    """An exact rewrite of a small model to `out` that sends itself signal `number` after
    `after` = (module, function, condition on its args) returns."""
    source = tmp_path / "m.onnx"
    onnx.save(CASES["gqa_expand"].model, str(source))
    owner, attribute, when = after
    script = SIGNAL_AFTER.replace("{owner}", owner).replace("{attribute}", attribute)
    script = script.replace("{when}", when).replace("{name}", signal.Signals(number).name)
    return _run(script, [str(source), "--method", "exact", "-o", out], cwd=tmp_path)


def _nothing_written(number: int) -> str:
    return f"attnrewrite: error: interrupted ({signal.Signals(number).name}); nothing written\n"


def _run(script: str, argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *argv],
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
