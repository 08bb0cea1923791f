"""`--calibrate` on the trained example: every head fitted and recorded, the fitted points
written as the nodes' initializers, and the model closer to the original on text it did not
see than plain multipole."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from attnrewrite.cli import main
from attnrewrite.pipeline import MODEL_FILE, RECORD_FILE, rewrite_model
from attnrewrite.plan import calibrated as calibration
from attnrewrite.plan.calibrated import calibrated_rewrite
from attnrewrite.report.inputs import from_text
from attnrewrite.report.run import report
from attnrewrite.substitute.methods import get_method

MODEL = Path(__file__).parents[2] / "examples" / "tiny_lm" / "tiny-lm.onnx"
SOURCE = Path(json.__file__).parent  # Python source, as the model was trained on
SEQ_LEN = 256
METHOD = get_method("multipole", {"block": 16})
SCHEMA = json.loads(resources.files("attnrewrite.report").joinpath("schema.json").read_text())


def _text(name: str):
    return from_text(ir.load(str(MODEL)), SOURCE / name, "bytes", SEQ_LEN, batch=1)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("calibrated") / "out"
    calibrated_rewrite(MODEL, METHOD, out, _text("decoder.py"))
    return out


def test_every_head_is_fitted_and_recorded(calibrated) -> None:
    record = json.loads((calibrated / RECORD_FILE).read_text())["calibration"]
    assert record["method"] == {"name": "multipole", "params": METHOD.params}
    assert record["heads"] == 16 and len(record["blocks"]) == 4
    for block in record["blocks"]:
        default, fitted = np.array(block["error_default"]), np.array(block["error_fitted"])
        assert (fitted <= default).all()  # a head that would lose keeps the default
        kept = np.array(block["expansion"])[block["kept_default"]]
        assert not kept.any()
    assert record["median_error_fitted"] < 0.95 * record["median_error_default"]


def test_the_fitted_points_are_the_nodes_initializers(calibrated) -> None:
    model = onnx.load(str(calibrated / MODEL_FILE))
    record = json.loads((calibrated / RECORD_FILE).read_text())["calibration"]
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MultipoleAttention"]
    assert len(nodes) == 4
    for node, block in zip(nodes, record["blocks"], strict=True):
        assert node.overload.endswith("_fitted") and node.input[-1].endswith("/expansion")
        np.testing.assert_array_equal(initializers[node.input[-1]], block["expansion"])
    (function,) = {f.overload: f for f in model.functions}.values()
    assert list(function.input)[-1] == "expansion"


def test_closer_to_the_original_on_unseen_text_than_plain_multipole(calibrated, tmp_path) -> None:
    plain = tmp_path / "plain"
    rewrite_model(MODEL, METHOD, plain, verify=False)
    feeds = _text("encoder.py").feeds

    def logits(path: Path) -> np.ndarray:
        return ort.InferenceSession(str(path)).run(None, feeds)[0]

    original = logits(MODEL)

    def error(path: Path) -> float:
        return float(np.linalg.norm(logits(path) - original) / np.linalg.norm(original))

    assert error(calibrated / MODEL_FILE) < 0.95 * error(plain / MODEL_FILE)


def test_a_block_whose_fit_fails_keeps_the_plain_method(tmp_path, monkeypatch) -> None:
    fit = calibration.fitted_arrays

    def failing(method: str, params: dict, block) -> dict:
        if block.index == 1:
            raise RuntimeError("no luck")
        return fit(method, params, block)

    monkeypatch.setattr(calibration, "fitted_arrays", failing)
    outcome = calibrated_rewrite(MODEL, METHOD, tmp_path / "out", _text("decoder.py"), verify=False)
    record = outcome.report["calibration"]
    assert len(record["blocks"]) == 3
    (reason,) = record["refused"].values()
    assert reason == "not calibrated (RuntimeError: no luck)"
    model = onnx.load(str(tmp_path / "out" / MODEL_FILE))
    nodes = [n for n in model.graph.node if n.op_type == "MultipoleAttention"]
    assert [n.overload.endswith("_fitted") for n in nodes] == [True, False, True, True]


def test_the_report_shows_each_heads_error_with_defaults_and_fitted(calibrated, tmp_path) -> None:
    out = tmp_path / "report"
    result, _ = report(MODEL, calibrated / MODEL_FILE, out, _text("encoder.py"), repeats=1)
    jsonschema.validate(result, SCHEMA)
    record = json.loads((calibrated / RECORD_FILE).read_text())["calibration"]
    heads = result["calibration"]["heads"]
    assert len(heads) == record["heads"] == 16
    for block in record["blocks"]:
        mine = [h for h in heads if h["block"] == block["output"]]
        assert [h["head"] for h in mine] == list(range(block["heads"]))
        assert [h["error_default"] for h in mine] == block["error_default"]
        assert [h["error_fitted"] for h in mine] == block["error_fitted"]
        assert [h["head"] for h in mine if h["kept_default"]] == block["kept_default"]
    assert {h["block"] for h in heads} == {b["output"] for b in result["blocks"]}
    markdown = (out / "report.md").read_text()
    assert "### Calibrated heads" in markdown
    fitted = sum(not h["kept_default"] for h in heads)
    assert markdown.count(" | fitted |") == fitted > 0
    assert "Head error, defaults vs fitted" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("method", "option", "op_type", "fitted"),
    [
        (
            "polysketch",
            ["--block", "32"],
            "PolySketchAttention",
            ["query_gain", "key_gain", "key_shift"],
        ),
        ("convbasis", ["--bases", "8"], "ConvBasisAttention", ["center"]),
    ],
)
def test_the_command_line_calibrates(tmp_path, capsys, method, option, op_type, fitted) -> None:
    """`attnrewrite --method M --calibrate`: PolySketch's feature map or conv-basis's query
    centres fitted per head, written as each calibrated node's last initializers and recorded
    in rewrite.json (verified in onnxruntime), no head worse than its default."""
    out = tmp_path / "out"
    args = [str(MODEL), "--method", method, *option, "--calibrate"]
    text = ["--text", str(SOURCE / "decoder.py"), "--tokenizer", "bytes", "--seq-len", "128"]
    assert main([*args, *text, "-o", str(out)]) == 0
    assert "calibrated 16 heads" in capsys.readouterr().out
    record = json.loads((out / RECORD_FILE).read_text())["calibration"]
    assert record["method"]["name"] == method
    assert list(record["fitted"]) == fitted
    model = onnx.load(str(out / MODEL_FILE))
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == op_type]
    assert len(nodes) == len(record["blocks"]) == 4
    assert any(n.overload.endswith("_fitted") for n in nodes)
    for node, block in zip(nodes, record["blocks"], strict=True):
        assert (np.array(block["error_fitted"]) <= np.array(block["error_default"])).all()
        inputs = node.input[-len(fitted) :] if node.overload.endswith("_fitted") else []
        for name, array in zip(inputs, fitted, strict=True):
            assert name.endswith(f"/{array}")
            np.testing.assert_array_equal(initializers[name], block[array])
    assert record["median_error_fitted"] < record["median_error_default"]
