"""Model folders in: a tiny transformers checkpoint goes folder -> ONNX (checked against
torch, cached outside the folder) -> found blocks -> exact rewrite, with its own tokenizer
for --text; pickle weights and unsupported checkpoints are one line, exit 2."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer, LlamaForCausalLM

from attnrewrite.cli import main
from attnrewrite.errors import AttnRewriteError
from attnrewrite.ingest import cache_folder, checkpoint_of
from attnrewrite.ingest import exporter as exporter_module
from attnrewrite.ingest.cache import CACHE_VARIABLE, RECORD_FILE
from attnrewrite.ingest.exporter import LogitsOnly
from attnrewrite.substitute.rewrite import DOMAIN
from tests.ingest.checkpoints import VOCAB, text_file, tiny_llama
from tests.test_startup import _run as run_in_new_process


@dataclass(frozen=True)
class Ran:
    """One command on the tiny checkpoint: `attnrewrite FOLDER --method exact --report
    --text T` with no --tokenizer, as a user types it."""

    folder: Path
    model: LlamaForCausalLM
    files_before: list[str]
    cache: Path
    out: Path
    text: Path
    status: int
    stderr: str


def _main(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ran]:
    root = tmp_path_factory.mktemp("ingest")
    folder = root / "tiny-llama"
    model = tiny_llama(folder)
    files_before = sorted(os.listdir(folder))
    text = text_file(root / "text.txt")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_VARIABLE, str(root / "cache"))
        status, _, stderr = _main(
            folder, "--method", "exact", "-o", root / "out", "--report", "--text", text,
            "--seq-len", 16, "--batch", 2, "--repeats", 1,
        )  # fmt: skip
        yield Ran(folder, model, files_before, root / "cache", root / "out", text, status, stderr)


def _export_folder(ran: Ran) -> Path:
    (folder,) = (ran.cache / "exports").iterdir()
    return folder


def test_a_checkpoint_folder_is_exported_found_and_rewritten_exactly(ran: Ran) -> None:
    assert ran.status == 0, ran.stderr
    record = json.loads((ran.out / "rewrite.json").read_text())
    assert record["summary"]["attention_blocks"] == 2
    assert record["summary"]["masks"] == {"causal_padding": 2}
    assert record["verification"]["passed"]
    rewritten = onnx.load(str(ran.out / "model.onnx"))
    assert sum(n.domain == DOMAIN for n in rewritten.graph.node) == 2
    # the rewritten model against the torch model the user has, with a padded row
    rng = np.random.default_rng(1)
    ids = rng.integers(0, VOCAB, (2, 13))
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    with torch.no_grad():
        want = ran.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    session = ort.InferenceSession(str(ran.out / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
    want = want.logits.numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_the_export_is_checked_cached_outside_the_folder_and_said_where(ran: Ran) -> None:
    folder = _export_folder(ran)
    record = json.loads((folder / RECORD_FILE).read_text())
    assert record["check"]["max_relative_error"] < 1e-5
    assert record["inputs"] == ["input_ids", "attention_mask"]
    assert record["use_cache"] is False and record["attention"] == "eager"
    exported = onnx.load(str(folder / record["onnx"]))
    axes = {
        i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in exported.graph.input
    }
    assert axes == {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]}
    assert f"into {folder}, once: later runs read it from this cache" in ran.stderr
    assert "max rel error" in ran.stderr and "tokenizer.json beside it" in ran.stderr
    assert sorted(os.listdir(ran.folder)) == ran.files_before  # nothing written there


def test_text_is_read_with_the_checkpoints_own_tokenizer(ran: Ran) -> None:
    report = json.loads((ran.out / "report.json").read_text())
    assert report["inputs"]["source"] == "text"
    assert report["inputs"]["seq_len"] == 16
    text = ran.text.read_text()
    saved = Tokenizer.from_file(str(_export_folder(ran) / "tokenizer.json"))
    assert saved.encode(text).ids == AutoTokenizer.from_pretrained(ran.folder)(text).input_ids
    assert report["outputs"][0]["logits"]["top1_agreement"] == 1.0


def test_a_second_run_reads_the_export_from_the_cache(
    ran: Ran, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CACHE_VARIABLE, str(ran.cache))
    exported = next(_export_folder(ran).glob("*.onnx"))
    written = exported.stat().st_mtime_ns

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(exporter_module, "export_checkpoint", no_export)
    status, stdout, stderr = _main("inspect", ran.folder, "--json")
    assert status == 0, stderr
    assert len(json.loads(stdout)["matches"]) == 2
    assert "cached ONNX export of tiny-llama" in stderr
    status, _, stderr = _main(
        "report", ran.folder, ran.out / "model.onnx", "-o", tmp_path, "--repeats", 1,
        "--text", ran.text, "--seq-len", 8, "--batch", 1,
    )  # fmt: skip
    assert status == 0, stderr
    assert json.loads((tmp_path / "report.json").read_text())["inputs"]["source"] == "text"
    assert exported.stat().st_mtime_ns == written


def test_touching_a_weight_file_makes_a_new_cache_entry(ran: Ran, tmp_path: Path) -> None:
    copy = shutil.copytree(ran.folder, tmp_path / "tiny-llama")
    before = cache_folder(checkpoint_of(copy))
    weights = copy / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert cache_folder(checkpoint_of(copy)) != before
    assert cache_folder(checkpoint_of(ran.folder)) != before  # another path, another entry


def test_an_export_that_differs_from_torch_is_refused(ran: Ran) -> None:
    torch.manual_seed(1)
    other = LlamaForCausalLM(ran.model.config).eval()
    exported = next(_export_folder(ran).glob("*.onnx"))
    with pytest.raises(AttnRewriteError, match=r"differs from the torch model by .*: refused"):
        exporter_module._check(checkpoint_of(ran.folder), LogitsOnly(other), exported)


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt"])
def test_pickled_weights_are_refused_naming_the_file(
    weights: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "cache"))
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / weights).write_bytes(b"\x80\x04 not for unpickling")
    result = run_in_new_process("inspect", str(folder))
    assert result["status"] == 2 and "torch" not in result["imported"]
    status, _, stderr = _main(folder, "--method", "exact", "-o", tmp_path / "out")
    assert status == 2
    assert stderr.count("\n") == 1 and f"{folder / weights} holds pickled" in stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def _config_folder(root: Path, config: dict) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config))
    (root / "model.safetensors").write_bytes(b"")
    return root


BAD_INPUTS = {
    "no config": (lambda p: p.mkdir() or p, "not a transformers checkpoint (no config.json)"),
    "not gguf": (
        lambda p: (p.with_suffix(".gguf").write_bytes(b"PK\x03\x04"), p.with_suffix(".gguf"))[1],
        "is not a GGUF file",
    ),
    "unknown model type": (
        lambda p: _config_folder(p, {"model_type": "frobnitz"}),
        "unsupported architecture: transformers cannot read",
    ),
    "not a language model": (
        lambda p: _config_folder(
            p, {"model_type": "vit", "architectures": ["ViTForImageClassification"]}
        ),
        "unsupported architecture ViTForImageClassification",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_unreadable_or_unsupported_checkpoints_are_one_line(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "cache"))
    make, message = BAD_INPUTS[case]
    status, _, stderr = _main("inspect", make(tmp_path / "model"))
    assert status == 2 and stderr.count("\n") == 1
    assert message in stderr


def test_a_folder_with_one_gguf_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "model.Q8_0.gguf").write_bytes(b"GGUF" + bytes(60))
    checkpoint = checkpoint_of(tmp_path)
    assert checkpoint is not None and checkpoint.source == (tmp_path / "model.Q8_0.gguf").resolve()
    assert checkpoint.name == "model.Q8_0"
    (tmp_path / "other.gguf").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(AttnRewriteError, match=r"2 \.gguf files, name one"):
        checkpoint_of(tmp_path)


def test_missing_packages_name_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "cache"))
    (tmp_path / "model").mkdir()
    gguf = tmp_path / "model" / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    real = exporter_module.importlib.util.find_spec
    monkeypatch.setattr(
        exporter_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("gguf", "accelerate") else real(name, *a),
    )
    status, _, stderr = _main("inspect", gguf)
    assert status == 2 and stderr.count("\n") == 1
    assert "needs the package(s) gguf, accelerate: pip install 'attnrewrite[hf]'" in stderr


def test_the_cache_is_never_beside_the_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "cache"))
    status, _, stderr = _main("inspect", gguf)
    assert status == 2 and "the export cache" in stderr and "is inside" in stderr


@pytest.mark.slow
def test_weights_above_the_external_data_threshold_go_beside_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a checkpoint over 2 GB gets (NAME.onnx.data), shown at a tiny threshold: the
    export, the finder, the rewrite and its verification all read it."""
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(exporter_module, "EXTERNAL_DATA_BYTES", 0)
    tiny_llama(tmp_path / "tiny-llama", tokenizer=False)
    status, _, stderr = _main(tmp_path / "tiny-llama", "--method", "exact", "-o", tmp_path / "o")
    assert status == 0, stderr
    assert "no tokenizer" in stderr
    (export,) = (tmp_path / "cache" / "exports").iterdir()
    assert (export / "tiny-llama.onnx.data").stat().st_size > 15_000 * 4
    assert json.loads((tmp_path / "o" / "rewrite.json").read_text())["verification"]["passed"]
