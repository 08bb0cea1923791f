"""The report's blocks come from the rewrite's record: a per-head plan's groups found by the
node names it gives, and one line (exit 2) where there is no record or it is another model's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx_ir as ir
import pytest

from attnrewrite.cli import main
from attnrewrite.pipeline import rewrite_model
from attnrewrite.report.build import compare_models
from attnrewrite.report.inputs import generated
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import HeadGroup

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny-gpt2.onnx"


def test_a_per_head_plan_is_one_block_with_its_groups_measured_per_head(tmp_path) -> None:
    window, exact = get_method("window", {"width": 2, "sinks": 0}), get_method("exact")
    plans = {1: [HeadGroup(window, (0, 2)), HeadGroup(exact, (1, 3))]}
    out = tmp_path / "plan"
    rewrite_model(EXAMPLE, exact, out, verify=False, plans=plans)
    [first, second] = json.loads((out / "rewrite.json").read_text())["matches"]
    assert [g["heads"] for g in second["heads"]] == [[0, 2], [1, 3]]
    inputs = generated(ir.load(str(EXAMPLE)), seq_len=24, batch=2)
    _, rows, blocks = compare_models(EXAMPLE, out / "model.onnx", inputs)
    assert [row["output"] for row in rows] == [first["output"], second["output"]]
    assert [(row["method"], row["params"]) for row in rows] == [
        ("exact", first["params"]),
        ("per-head plan", {}),  # each group's method and parameters are in rewrite.json
    ]
    assert rows[1]["name"] == second["node"] and len(blocks[1].node_outputs) == 2
    heads = rows[1]["heads"]
    assert len(heads) == 4  # in the block's head order, the Gather after the Concat undone
    assert heads[1] < 1e-6 and heads[3] < 1e-6  # the exact group
    assert heads[0] > 1e-3 and heads[2] > 1e-3  # a two-key window
    assert rows[0]["relative_l2"] < 1e-6


def test_a_report_without_the_rewrite_record_is_one_line(tmp_path, capsys) -> None:
    assert main([str(EXAMPLE), "--method", "exact", "--no-verify", "-o", str(tmp_path / "o")]) == 0
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "o" / "model.onnx", alone / "model.onnx")
    capsys.readouterr()
    assert main(["report", str(EXAMPLE), str(alone / "model.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"no rewrite record beside {alone / 'model.onnx'}" in err
    assert str(alone / "rewrite.json") in err
    assert sorted(p.name for p in alone.iterdir()) == ["model.onnx"]  # nothing written


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ("{", "is not a rewrite record"),
        ("[]", "is not a rewrite record (not a JSON object)"),
        ('{"matches": 3}', "is not a rewrite record (its matches are not a list)"),
        ('{"matches": [{"graph": "main", "output": "%s"}]}', "has a match it does not describe"),
    ],
)
def test_a_damaged_record_is_one_line(tmp_path, capsys, record: str, says: str) -> None:
    out = tmp_path / "o"
    assert main([str(EXAMPLE), "--method", "exact", "--no-verify", "-o", str(out)]) == 0
    output = json.loads((out / "rewrite.json").read_text())["matches"][0]["output"]
    (out / "rewrite.json").write_text(record.replace("%s", output))
    capsys.readouterr()
    assert main(["report", str(EXAMPLE), str(out / "model.onnx"), "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err


def test_the_record_of_another_rewrite_is_refused(tmp_path, capsys) -> None:
    for method in ("exact", "window"):
        argv = [str(EXAMPLE), "--method", method, "--no-verify", "-o", str(tmp_path / method)]
        assert main(argv) == 0
    shutil.copy(tmp_path / "window" / "rewrite.json", tmp_path / "exact" / "rewrite.json")
    capsys.readouterr()
    assert main(["report", str(EXAMPLE), str(tmp_path / "exact" / "model.onnx")]) == 2
    err = capsys.readouterr().err
    assert "WindowAttention', which the rewritten model does not have" in err
