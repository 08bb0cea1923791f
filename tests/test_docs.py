"""What a newcomer reads: links that resolve in a clone, and --calib explained where it is
used (the help, the README, and the error for a file that does not fit)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from attnrewrite.cli import main, rewrite_parser

ROOT = Path(__file__).parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)")


@pytest.mark.parametrize(
    "doc", ["README.md", *(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
)
def test_relative_links_resolve_inside_the_repository(doc: str) -> None:
    text = (ROOT / doc).read_text()
    assert "../shared" not in text
    for target in LINK.findall(text):
        if "://" in target:
            continue
        path = ((ROOT / doc).parent / target).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{doc}: {target}"


def test_the_methods_maths_is_in_the_repository() -> None:
    text = (ROOT / "docs" / "methods.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    for name in (
        "conv-basis",
        "PolySketch",
        "Fast Multipole Attention",
        "Sliding window",
        "Vertical-slash",
    ):
        assert any(name in h for h in headings), name
    assert "docs/methods.md" in (ROOT / "README.md").read_text()


def test_calib_is_explained_in_the_help_and_the_readme() -> None:
    help_text = " ".join(rewrite_parser().format_help().split())
    assert "--inputs NPZ, --calib NPZ" in help_text
    assert "np.savez('batch.npz', input_ids=ids, attention_mask=mask)" in help_text
    readme = (ROOT / "README.md").read_text()
    assert "### Calibration inputs (`--calib` / `--inputs batch.npz`)" in readme
    assert 'np.savez("batch.npz", input_ids=rows, attention_mask=np.ones_like(rows))' in readme


def test_a_calibration_file_that_misses_an_input_lists_what_the_model_takes(
    tmp_path, capsys
) -> None:
    np.savez(tmp_path / "batch.npz", ids=np.zeros((2, 8), np.int64))
    model = ROOT / "examples" / "tiny-gpt2.onnx"
    args = ["--method", "auto", "--max-error", "0.1", "--calib", str(tmp_path / "batch.npz")]
    assert main([str(model), *args, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"attnrewrite: error: {tmp_path / 'batch.npz'} has no input 'input_ids' that the model "
        "needs (it holds ids; the model takes input_ids int64 [batch, seq], attention_mask "
        "int64 [batch, seq])"
    )
