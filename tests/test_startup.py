"""Start-up: the command line imports onnx, onnxruntime, torch and TVM (seconds each) only in
the commands that use them, so --version, --help, errors about the arguments and inspecting
an ONNX model answer without torch. Each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from attnrewrite.methods import METHODS
from tests.corpus.handbuilt import all_cases

CORPUS = Path(__file__).parent / "corpus" / "exported"
HEAVY = ("torch", "tvm", "onnx", "onnxruntime", "onnx_ir", "matplotlib")

PROBE = """
import json, sys
from attnrewrite.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as done:
    status = done.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"status": status, "imported": heavy}}), file=sys.stderr)
"""


def _run(*argv: str) -> dict:
    """Exit status and the heavy modules imported by `attnrewrite ARGV` in a new process."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_importing_the_command_line_imports_no_heavy_library() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, attnrewrite.cli; print([m for m in {HEAVY!r} if m in sys.modules])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ("--version",),
        ("--help",),
        ("absent.onnx", "--method", "exact"),
        ("inspect", "absent.onnx"),
        ("report", "absent.onnx", "other.onnx"),
        ("x.onnx", "--method", "exact", "--frobnicate"),
        ("x.onnx", "--method", "multipole", "--calibrate"),  # no calibration inputs
    ],
)
def test_version_help_and_argument_errors_import_no_heavy_library(argv: tuple[str, ...]) -> None:
    result = _run(*argv)
    assert result["status"] in (0, 2) and result["imported"] == []


def test_inspecting_an_onnx_model_does_not_import_torch(tmp_path: Path) -> None:
    case = next(c for c in all_cases() if c.name == "gqa_expand")
    onnx.save(case.model, str(tmp_path / "m.onnx"))
    result = _run("inspect", str(tmp_path / "m.onnx"), "--json")
    assert result["status"] == 0
    assert "onnx" in result["imported"]  # it did read the model
    assert "torch" not in result["imported"] and "tvm" not in result["imported"]


@pytest.mark.parametrize("method", list(METHODS))
def test_an_onnx_rewrite_imports_neither_torch_nor_tvm(tmp_path: Path, method: str) -> None:
    """torch belongs to the torch path and the methods' references: rewriting an ONNX model
    (parameters checked, bodies built, the parity run) needs neither it nor TVM."""
    model = CORPUS / "gpt2_sdpa_dynamo18.onnx"
    result = _run(str(model), "--method", method, "-o", str(tmp_path / "out"))
    assert result["status"] == 0
    assert "onnxruntime" in result["imported"]  # it did rewrite and verify
    assert "torch" not in result["imported"] and "tvm" not in result["imported"]
