"""The check of a compiled library against onnxruntime: a library that computes something
else is caught and the command fails with one line, leaving nothing behind (like any failure
after the rewrite: the output folder is renamed into place only when everything passed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from attnrewrite.cli import main
from attnrewrite.lower.relax_import import Artifact

GPT2 = Path(__file__).resolve().parents[2] / "examples" / "tiny-gpt2.onnx"
ARGS = [str(GPT2), "--method", "exact", "--target", "llvm", "--seq-len", "12", "--batch", "1"]


def test_a_library_that_differs_from_onnxruntime_fails_the_command(tmp_path, monkeypatch, capsys):
    honest = Artifact.run

    def off_by_a_little(self, inputs):
        return [out + 1e-2 * np.abs(out).max() for out in honest(self, inputs)]

    monkeypatch.setattr(Artifact, "run", off_by_a_little)
    out = tmp_path / "out"
    assert main([*ARGS, "-o", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "differs from onnxruntime" in error and "1.0e-02" in error
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_no_verify_skips_the_check(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*ARGS, "--no-verify", "-o", str(out)]) == 0
    assert "not checked against onnxruntime" in capsys.readouterr().out
    assert not list(out.glob("tvm-*/check.json"))
