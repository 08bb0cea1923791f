"""What `-o` means: written only when the whole command succeeded, a non-empty folder is
replaced only with --force (never merged into), inputs are never overwritten, and folders
get the permissions the umask gives."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import onnx
import pytest

from attnrewrite.cli import main
from tests.corpus.handbuilt import all_cases

CASES = {case.name: case for case in all_cases()}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "m.onnx"
    path.parent.mkdir()
    onnx.save(CASES["gqa_expand"].model, str(path))
    return path


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else ""
        for p in sorted(folder.rglob("*"))
    }


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_non_empty_folder_is_refused_then_replaced_with_force(model, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("an older report")
    assert main([str(model), "--method", "exact", "-o", str(out)]) == 2
    assert "is not empty" in _one_line(capsys) and (out / "report.html").exists()
    assert main([str(model), "--method", "window", "-o", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "rewrite.json"]  # not merged
    assert json.loads((out / "rewrite.json").read_text())["method"]["name"] == "window"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("where", ["the model", "inside the model", "the model's folder"])
def test_an_output_that_would_overwrite_the_input_is_refused(model, where, capsys) -> None:
    out = {"the model": model, "inside the model": model / "x", "the model's folder": model.parent}
    before = _tree(model.parent.parent)
    argv = [str(model), "--method", "exact", "-o", str(out[where]), "--force"]
    assert main(argv) == 2
    assert f"would overwrite the input {model}" in _one_line(capsys)
    assert _tree(model.parent.parent) == before


def test_a_failure_after_the_rewrite_leaves_nothing(model, tmp_path, monkeypatch, capsys) -> None:
    def failing_report(*args, **kwargs):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr("attnrewrite.report.run.report", failing_report)
    before = _tree(tmp_path)
    argv = [str(model), "--method", "exact", "--report", "--seq-len", "8", "--repeats", "1"]
    assert main([*argv, "-o", str(tmp_path / "a" / "b" / "out")]) == 2
    assert "rendering failed (RuntimeError)" in _one_line(capsys)
    assert _tree(tmp_path) == before  # no out, no staging folder, no created parents


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_folders_get_the_umask_permissions(model, tmp_path, mask) -> None:
    previous = os.umask(mask)
    try:
        assert main([str(model), "--method", "exact", "-o", str(tmp_path / "out")]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "out" / "model.onnx").stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_an_unwritable_output_is_one_line(model, tmp_path, where, capsys) -> None:
    (tmp_path / "file").write_text("x")
    out = {"under a file": tmp_path / "file" / "out", "in /proc": Path("/proc/attnrewrite-out")}
    assert main([str(model), "--method", "exact", "-o", str(out[where])]) == 2
    assert f"cannot write the output folder {out[where]}" in _one_line(capsys)
