"""The command line as a user runs it: outputs, rewrite.json, and one-line errors on bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from attnrewrite.cli import main
from attnrewrite.substitute.exact import build as exact_build
from tests.corpus.handbuilt import all_cases

CASES = {case.name: case for case in all_cases()}


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rewrite_writes_model_and_report_and_leaves_input_alone(tmp_path, capsys) -> None:
    source = _save(CASES["gqa_expand"].model, tmp_path / "gqa.onnx")
    before = _digest(source)
    assert main([str(source), "--method", "exact", "-o", str(tmp_path / "out")]) == 0
    assert _digest(source) == before
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "rewrite.json"]
    report = json.loads((out / "rewrite.json").read_text())
    assert report["summary"]["rewritten"] == report["summary"]["attention_blocks"] == 1
    (block,) = report["matches"]
    assert block["mask"] == "causal" and block["kv_heads"] == 2 and block["q_heads"] == 4
    assert block["method"] == "exact" and block["overload"].startswith("r4_f32")
    assert report["verification"]["passed"] is True
    assert report["verification"]["max_relative_error"] <= 1e-5
    rewritten = onnx.load(str(out / "model.onnx"))
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("ExactAttention") == 1 and "Softmax" not in ops
    assert "rewrote 1/1 attention blocks" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left


def test_default_output_folder_is_new_and_named_after_model_and_method(tmp_path, monkeypatch):
    source = _save(CASES["legacy_gpt2_where"].model, tmp_path / "gpt.onnx")
    monkeypatch.chdir(tmp_path)
    assert main([str(source), "--method", "exact"]) == 0
    assert main([str(source), "--method", "exact"]) == 0
    assert (tmp_path / "gpt-exact" / "model.onnx").exists()
    assert (tmp_path / "gpt-exact-2" / "model.onnx").exists()


def test_inspect_reports_why_a_softmax_was_not_rewritten(tmp_path, capsys) -> None:
    source = _save(CASES["probs_second_consumer"].model, tmp_path / "m.onnx")
    assert main(["inspect", str(source), "--json"]) == 2  # no attention, as the rewrite says
    payload = json.loads(capsys.readouterr().out)
    assert payload["matches"] == []
    (refusal,) = payload["not_rewritten"]
    assert refusal["op_type"] == "Softmax" and "another consumer" in refusal["reason"]


def test_verification_failure_names_the_block_and_exits_1(tmp_path, monkeypatch, capsys) -> None:
    def off_by_one_percent(b, sig, inputs, params):
        return b.op("Mul", exact_build(b, sig, inputs, params), b.const(1.01, "float32"))

    monkeypatch.setattr("attnrewrite.substitute.exact.build", off_by_one_percent)
    source = _save(CASES["rotary_qknorm"].model, tmp_path / "rope.onnx")
    assert main([str(source), "--method", "exact", "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "does not reproduce the original" in err and "first at block" in err
    report = json.loads((tmp_path / "out" / "rewrite.json").read_text())
    assert report["verification"]["passed"] is False
    assert report["verification"]["blocks"][0]["relative"] > 1e-3


def test_inspect_prints_matches_and_refusals(tmp_path, capsys) -> None:
    source = _save(CASES["kv_cache_concat"].model, tmp_path / "kv.onnx")
    assert main(["inspect", str(source), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    (match,) = payload["matches"]
    assert match["mask"] == "causal" and match["kv_len"] != match["q_len"]


def _no_attention(tmp_path: Path) -> Path:
    return _save(CASES["no_attention"].model, tmp_path / "mlp.onnx")


def _classifier(tmp_path: Path) -> Path:
    return _save(CASES["classifier_softmax"].model, tmp_path / "cls.onnx")


def _not_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n")
    return path


def _truncated(tmp_path: Path) -> Path:
    data = CASES["gqa_expand"].model.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path


def _old_opset(tmp_path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=7)
    return _save(model, tmp_path / "old.onnx")


def _gqa(tmp_path: Path) -> Path:
    return _save(CASES["gqa_expand"].model, tmp_path / "m.onnx")


BAD_INPUTS = {
    "missing file": (lambda tmp: tmp / "absent.onnx", [], "no such file"),
    "not onnx": (_not_onnx, [], "not"),
    "truncated protobuf": (_truncated, [], "not a readable ONNX model"),
    "no attention": (_no_attention, [], "no softmax attention found"),
    "only a classifier softmax": (_classifier, [], "not attention"),
    "unsupported opset": (_old_opset, [], "opset 9"),
    "unknown method": (
        _gqa,
        ["--method", "magic"],
        "unknown method 'magic'",
    ),
    "odd polysketch degree": (
        _gqa,
        ["--method", "polysketch", "--degree", "3"],
        "degree must be even",
    ),
    "block not a power of two": (
        _gqa,
        ["--method", "polysketch", "--block", "100"],
        "block must be a power of two",
    ),
    "k below one": (
        _gqa,
        ["--method", "convbasis", "--k", "0"],
        "bases must be an int >= 1",
    ),
    "not an int": (
        _gqa,
        ["--method", "multipole", "--block", "big"],
        "block='big' is not a valid int",
    ),
    "parameter of another method": (
        _gqa,
        ["--method", "multipole", "--degree", "4"],
        "--degree does not apply to --method multipole",
    ),
    "speed check of a single method": (
        _gqa,
        ["--method", "window", "--no-speed-check"],
        "--no-speed-check apply to --method auto",
    ),
    "unknown option": (
        _gqa,
        ["--frobnicate"],
        "unrecognized arguments",
    ),
    "calibration without inputs": (
        _gqa,
        ["--method", "multipole", "--calibrate"],
        "--calibrate needs calibration inputs: --text FILE --tokenizer TOKENIZER",
    ),
    "calibrating a method with nothing to fit": (
        _gqa,
        ["--method", "window", "--calibrate", "--text", "notes.txt"],
        "--calibrate fits convbasis, polysketch, multipole; window has no parameters to fit",
    ),
    "calibrating auto without inputs": (
        _gqa,
        ["--method", "auto", "--max-error", "0.1", "--calibrate"],
        "--calibrate needs calibration inputs",
    ),
    "calibration with a sweep": (
        _gqa,
        ["--method", "multipole", "--calibrate", "--text", "notes.txt", "--sweep", "block=4,8"],
        "--sweep does not apply to --calibrate",
    ),
    "calibration text missing": (
        _gqa,
        ["--method", "multipole", "--calibrate", "--text", "absent.txt", "--tokenizer", "bytes"],
        "no such text file",
    ),
}


@pytest.mark.parametrize("label", BAD_INPUTS)
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path, label, capsys) -> None:
    make, extra, expected = BAD_INPUTS[label]
    source = make(tmp_path)
    args = [str(source), *(extra if "--method" in extra else ["--method", "exact", *extra])]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([*args, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_console_script_exit_status(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "attnrewrite", str(tmp_path / "absent.onnx"), "--method", "exact"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"attnrewrite: error: no such file: {tmp_path / 'absent.onnx'}"


@pytest.mark.parametrize(
    ("flags", "batch"),
    [
        (["--seq-len", "4096"], 2),
        (["--seq-len", "8192"], 1),  # long context: one row, half the report's memory
        (["--seq-len", "8192", "--method", "auto"], 2),  # auto holds out half the rows
        (["--seq-len", "8192", "--batch", "3"], 3),
    ],
)
def test_default_batch_follows_the_length_and_method(flags: list[str], batch: int) -> None:
    from attnrewrite.cli import _batch, rewrite_parser

    args = rewrite_parser().parse_args(["model.onnx", "--method", "window", *flags])
    assert _batch(args) == batch
