"""`attnrewrite tune --help` shows both forms (one kernel, a whole model) with their options."""

from __future__ import annotations

import pytest

pytest.importorskip("tvm")

from attnrewrite.cli import main


def test_help_shows_the_kernel_form_and_the_model_form(capsys) -> None:
    assert main(["tune", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: attnrewrite tune [-h]" in out and "{conv_basis,irfft,rfft,scan}" in out
    assert "usage: attnrewrite tune MODEL.onnx" in out
    for option in ("--n N", "--dim DIM", "--time-limit", "--per-task", "--rpc RPC"):
        assert option in out, option


def test_no_arguments_say_what_tune_needs(capsys) -> None:
    assert main(["tune"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnrewrite: error: tune needs a kernel") and len(err.splitlines()) == 1
