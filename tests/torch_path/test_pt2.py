"""The .pt2 route behind `attnrewrite model.pt2 --method M`: a saved ExportedProgram in,
a rewritten program, the ONNX file with attnrewrite nodes and rewrite.json out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from attnrewrite.cli import main
from attnrewrite.errors import AttnRewriteError
from attnrewrite.torch.pt2 import rewrite_pt2
from tests.torch_path.models import HandAttention


def test_saved_program_rewritten_with_multipole(tmp_path: Path) -> None:
    pytest.importorskip("attnrewrite.substitute.multipole", reason="no multipole ONNX body yet")
    torch.manual_seed(0)
    model = HandAttention(dim=8, heads=2, mask="tril").eval()
    x = torch.randn(2, 9, 8)
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "in.pt2"))
    report, summary = rewrite_pt2(tmp_path / "in.pt2", "multipole", {"block": 2}, tmp_path / "out")
    assert "rewrote 1 attention blocks with multipole" in summary
    saved = json.loads((tmp_path / "out" / "rewrite.json").read_text())
    assert saved["matches"][0]["mask"] == "causal" and saved["matches"][0]["method"] == "multipole"
    assert report["onnx"]["blocks"][0]["method"] == "multipole"

    program = torch.export.load(str(tmp_path / "out" / "model.pt2"))
    expect = program.module()(x).detach().numpy()
    assert not np.allclose(expect, model(x).detach().numpy(), atol=1e-4)  # approximate
    proto = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [n.op_type for n in proto.graph.node if n.domain == "attnrewrite"] == [
        "MultipoleAttention"
    ]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), options)
    [out] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, expect, atol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.onnx.export's own deprecations
def test_the_onnx_file_of_a_program_is_reported_from_its_record(tmp_path: Path) -> None:
    """`attnrewrite report` on OUTDIR/model.onnx reads rewrite.json's "onnx" part (the other
    matches describe the FX graph), against an ONNX export of the original program."""
    torch.manual_seed(0)
    model = HandAttention(dim=8, heads=2, mask="tril").eval()
    x = torch.randn(2, 9, 8)
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "in.pt2"))
    rewrite_pt2(tmp_path / "in.pt2", "multipole", {"block": 2}, tmp_path / "out")
    names = {"input_names": ["args_0"], "dynamo": True}  # the rewritten file's input name
    torch.onnx.export(model, (x,), str(tmp_path / "original.onnx"), **names)
    argv = [tmp_path / "original.onnx", tmp_path / "out" / "model.onnx", "--seq-len", "9"]
    assert main(["report", *map(str, argv), "--repeats", "1", "-o", str(tmp_path / "r")]) == 0
    [block] = json.loads((tmp_path / "r" / "report.json").read_text())["blocks"]
    assert block["method"] == "multipole" and block["params"]["block"] == 2
    assert block["name"].endswith("/MultipoleAttention") and len(block["heads"]) == 2
    assert block["relative_l2"] > 1e-3  # an approximation, measured


def test_not_a_program(tmp_path: Path) -> None:
    (tmp_path / "bad.pt2").write_bytes(b"not a zip")
    with pytest.raises(AttnRewriteError, match="not a readable ExportedProgram"):
        rewrite_pt2(tmp_path / "bad.pt2", "exact", {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line_takes_a_pt2(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = HandAttention(dim=8, heads=2, mask="tril").eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 9, 8),)), str(tmp_path / "m.pt2"))
    assert main(["inspect", str(tmp_path / "m.pt2")]) == 0
    assert '"mask": "causal"' in capsys.readouterr().out
    out = tmp_path / "out"
    assert main([str(tmp_path / "m.pt2"), "--method", "exact", "-o", str(out)]) == 0
    assert {"model.pt2", "model.onnx", "rewrite.json"} <= {p.name for p in out.iterdir()}
    assert main([str(tmp_path / "m.pt2"), "--method", "exact", "--report"]) == 2
