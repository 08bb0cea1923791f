"""Files onnxruntime runs but onnx-ir refuses: repaired where one reading exists (and said
so in rewrite.json), one line and exit 2 where none does."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from attnrewrite.cli import main
from tests.corpus.handbuilt import all_cases

CASES = {case.name: case for case in all_cases()}


@pytest.mark.parametrize(
    ("name", "note"),
    [
        ("repair_unsorted_nodes", "sorted the nodes"),
        ("repair_contrib_import", "added the com.microsoft opset import"),
        ("repair_duplicate_constants", "merged 2 identical Constant nodes writing 'scale'"),
    ],
)
def test_repairs_are_reported(tmp_path, capsys, name: str, note: str) -> None:
    source = tmp_path / f"{name}.onnx"
    onnx.save(CASES[name].model, str(source))
    assert main([str(source), "--method", "exact", "-o", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "rewrite.json").read_text())
    assert any(note in line for line in report["repaired_on_load"])
    assert report["verification"]["passed"]
    assert "input repaired on load" in capsys.readouterr().out


def _constants_differ(model: onnx.ModelProto) -> None:
    model.graph.node[0].attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(2.0, np.float32)))


def _two_writers(model: onnx.ModelProto) -> None:
    model.graph.node.append(helper.make_node("Relu", ["x"], ["scale"]))


def _cycle(model: onnx.ModelProto) -> None:
    first = next(n for n in model.graph.node if n.op_type == "MatMul")
    last = next(n for n in reversed(model.graph.node) if n.op_type == "MatMul")
    first.input[0] = last.output[0]


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_constants_differ, "write 'scale' with different values"),
        (_two_writers, "'scale' is written by 3 nodes (Constant, Relu)"),
        (_cycle, "has a cycle"),
    ],
)
def test_what_has_no_reading_is_one_line(tmp_path, capsys, damage, says: str) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(CASES["repair_duplicate_constants"].model)
    damage(model)
    source = tmp_path / "broken.onnx"
    onnx.save(model, str(source))
    assert main([str(source), "--method", "exact", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
