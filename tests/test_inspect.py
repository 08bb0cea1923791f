"""`attnrewrite inspect`: tables that never cut a name, and a model without attention said so
with exit status 2, as the rewrite does."""

from __future__ import annotations

import io
from pathlib import Path

import onnx
from rich.console import Console

from attnrewrite.cli import _print_findings, main
from attnrewrite.pipeline import inspect_model
from tests.corpus.handbuilt import all_cases

CASES = {case.name: case for case in all_cases()}
TINY_LM = Path(__file__).parents[1] / "examples" / "tiny_lm" / "tiny-lm.onnx"


def _save(name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{name}.onnx"
    onnx.save(CASES[name].model, str(path))
    return path


def test_piped_output_has_every_name_whole(capsys) -> None:
    assert main(["inspect", str(TINY_LM)]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "..." not in out
    for block in range(4):
        row = next(line for line in out.splitlines() if f"/blocks.{block}/attn/Softmax" in line)
        assert "softmax k:transpose mask:where" in row  # one row, not wrapped


def test_a_narrow_terminal_folds_long_names_instead_of_cutting_them() -> None:
    buffer = io.StringIO()
    narrow = Console(file=buffer, width=60, force_terminal=True, color_system=None)
    _print_findings(inspect_model(TINY_LM), TINY_LM, narrow)
    text = buffer.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 60
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if "│" in line)
    assert "/blocks.3/attn/Softmax" in cells  # the anchor column, folded and joined again


def test_a_model_without_attention_exits_2_and_still_shows_why(tmp_path, capsys) -> None:
    assert main(["inspect", str(_save("classifier_softmax", tmp_path))]) == 2
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert line.startswith("attnrewrite: error: no softmax attention found in")
    assert "Softmax/attention op(s) not rewritten" in captured.out
    assert "attention block(s)" not in captured.out  # no empty table


def test_a_model_without_any_softmax_exits_2(tmp_path, capsys) -> None:
    assert main(["inspect", str(_save("no_attention", tmp_path))]) == 2
    assert "the model has no Softmax and no attention op" in capsys.readouterr().err
