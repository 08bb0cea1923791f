"""Accuracy reports: schema, metrics recomputed independently, per-block errors, bad input."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import onnxruntime as ort
import pytest

from attnrewrite.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny-gpt2.onnx"
SCHEMA = json.loads(resources.files("attnrewrite.report").joinpath("schema.json").read_text())


def _rewrite(tmp_path: Path, method: str, *extra: str) -> tuple[int, Path]:
    out = tmp_path / method
    code = main([str(EXAMPLE), "--method", method, "-o", str(out), "--report", *extra])
    return code, out


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The graph as written, as the report runs it (fusions would change the rounding)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options).run(["logits"], feeds)[0]


@pytest.fixture(scope="module")
def exact_report(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("exact")
    feeds = {
        "input_ids": np.random.default_rng(3).integers(0, 97, (2, 24)).astype(np.int64),
        "attention_mask": np.ones((2, 24), np.int64),
    }
    feeds["attention_mask"][1, -3:] = 0
    np.savez(tmp / "batch.npz", **feeds)
    code, out = _rewrite(tmp, "exact", "--inputs", str(tmp / "batch.npz"), "--repeats", "2")
    assert code == 0
    return json.loads((out / "report.json").read_text()), tmp


def test_report_follows_the_schema_and_exact_blocks_are_float_rounding(exact_report) -> None:
    report, tmp = exact_report
    jsonschema.validate(report, SCHEMA)
    assert report["inputs"]["source"] == "npz" and report["inputs"]["seq_len"] == 24
    assert len(report["blocks"]) == 2
    # chunked causal attention multiplies other matrix shapes: rounding, not 0
    assert all(b["relative_l2"] <= 1e-6 and b["method"] == "exact" for b in report["blocks"])
    assert all(len(b["heads"]) == 4 for b in report["blocks"])
    assert (tmp / "exact" / "report.md").is_file() and (tmp / "exact" / "report.html").is_file()


def test_metrics_equal_an_independent_numpy_computation(exact_report) -> None:
    report, tmp = exact_report
    with np.load(tmp / "batch.npz") as data:
        feeds = {k: data[k] for k in data.files}
    x = _run(EXAMPLE, feeds).astype(np.float64)
    y = _run(tmp / "exact" / "model.onnx", feeds).astype(np.float64)
    (logits,) = report["outputs"]
    assert logits["relative_l2"] == pytest.approx(np.linalg.norm(y - x) / np.linalg.norm(x))
    assert logits["max_abs"] == pytest.approx(np.abs(y - x).max())
    keep = feeds["attention_mask"].astype(bool)
    agree = (x.argmax(-1) == y.argmax(-1))[keep].mean()
    assert logits["logits"]["top1_agreement"] == pytest.approx(agree)
    logp = (
        x
        - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - x.max(-1, keepdims=True)
    )
    ids = feeds["input_ids"]
    nll = -np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0]
    scored = keep[:, 1:] & keep[:, :-1]
    assert logits["logits"]["perplexity_original"] == pytest.approx(np.exp(nll[scored].mean()))


def test_approximate_method_reports_nonzero_block_errors_and_a_sweep(tmp_path) -> None:
    code, out = _rewrite(
        tmp_path,
        "multipole",
        "--block",
        "4",
        "--sweep",
        "block=2,4,32",
        "--repeats",
        "1",
        "--seq-len",
        "24",
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert all(b["relative_l2"] > 1e-4 for b in report["blocks"])
    points = report["sweep"]["points"]
    assert [p["value"] for p in points] == [2, 4, 32]
    assert points[-1]["outputs_relative_l2"] < 1e-5  # block >= n: exact again


def test_bad_report_inputs_are_one_line_errors(tmp_path, capsys) -> None:
    np.savez(tmp_path / "wrong.npz", input_ids=np.zeros((2, 5), np.float32))
    code, _ = _rewrite(tmp_path, "exact", "--inputs", str(tmp_path / "wrong.npz"))
    assert code == 2
    assert "input 'input_ids' is float32, the model expects int64" in capsys.readouterr().err


def test_report_refuses_a_rewritten_model_of_another_model(tmp_path, capsys) -> None:
    other = Path(__file__).parents[1] / "corpus" / "exported"
    candidates = sorted(p for p in other.glob("bert*.onnx"))
    assert candidates
    code, out = _rewrite(tmp_path, "exact")
    assert code == 0
    assert main(["report", str(candidates[0]), str(out / "model.onnx")]) == 2
    assert "does not belong to the original" in capsys.readouterr().err


def test_auto_report_carries_the_per_head_plan(tmp_path) -> None:
    code, out = _rewrite(
        tmp_path, "auto", "--max-error", "0.5", "--seq-len", "48", "--batch", "4", "--repeats", "1"
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    plan = report["plan"]
    assert plan["max_error"] == 0.5 and plan["calibration_seq_len"] == 48
    blocks = {b["output"]: b for b in report["blocks"]}
    assert {h["block"] for h in plan["heads"]} == set(blocks)
    assert len(plan["heads"]) == sum(len(b["heads"]) for b in blocks.values())
    exact_heads = [h for h in plan["heads"] if h["method"] == "exact"]
    assert all(h["calibration_error"] == 0.0 and h["relative_cost"] == 1.0 for h in exact_heads)
    for head in exact_heads:  # a head the plan keeps exact is exact in the measured model too
        assert blocks[head["block"]]["heads"][head["head"]] < 1e-5
    assert "### Per-head plan" in (out / "report.md").read_text()
    assert "<h2>Per-head plan</h2>" in (out / "report.html").read_text()
