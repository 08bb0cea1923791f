"""Verification says at which length it ran: beyond a model's widest window, or at the
length a fixed-shape model runs at, not the one asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnrewrite.pipeline import rewrite_model
from attnrewrite.substitute.methods import get_method

CORPUS = Path(__file__).parent / "corpus" / "exported"


@pytest.mark.parametrize(
    ("model", "length", "why"),
    [
        ("qwen2sw20_eager_dynamo18", 22, "beyond the widest window; 11 asked"),
        ("vit_eager_dynamo18", 17, "the model's own length; 11 asked"),
        ("gpt2_eager_dynamo18", 11, None),
    ],
)
def test_the_length_verified_at_is_the_length_run(tmp_path, model, length, why) -> None:
    outcome = rewrite_model(CORPUS / f"{model}.onnx", get_method("exact"), tmp_path / "out")
    verification = outcome.report["verification"]
    assert verification["passed"] and verification["seq_len"] == length
    expected = f"verified at n={length}" + (f" ({why})" if why else ":")
    assert expected in outcome.summary
