"""A rewritten model built for llvm through Relax matches onnxruntime on the same model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("tvm")

from attnrewrite.lower import build, load
from attnrewrite.lower.errors import LowerError
from tests.conftest import find_and_rewrite

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny-gpt2.onnx"


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory) -> Path:
    _, _, proto = find_and_rewrite(onnx.load(EXAMPLE))
    assert {n.op_type for n in proto.graph.node} >= {"ExactAttention"}
    path = tmp_path_factory.mktemp("rewritten") / "model.onnx"
    onnx.save(proto, path)
    return path


@pytest.fixture(scope="module")
def artifact(rewritten, tmp_path_factory) -> Path:
    return build(rewritten, "llvm", tmp_path_factory.mktemp("art"), dims={"batch": 2, "seq": 11})


def feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((2, 11), np.int64)
    mask[1, :4] = 0
    return {"input_ids": rng.integers(0, 90, (2, 11)), "attention_mask": mask}


def test_llvm_build_matches_onnxruntime(rewritten, artifact):
    inputs = feeds()
    got = load(artifact).run(inputs)
    want = ort.InferenceSession(str(rewritten), providers=["CPUExecutionProvider"]).run(
        None, inputs
    )
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


def test_artifact_loads_with_tvm_runtime_alone(artifact, tmp_path):
    inputs = feeds()
    np.savez(tmp_path / "in.npz", **inputs)
    script = f"""
import json, numpy as np, tvm
lib = tvm.runtime.load_module({str(artifact / "model.so")!r})
vm = tvm.runtime.vm.VirtualMachine(lib, tvm.cpu())
meta = json.load(open({str(artifact / "lower.json")!r}))
data = np.load({str(tmp_path / "in.npz")!r})
out = vm["main"](*[tvm.runtime.tensor(data[i["name"]]) for i in meta["inputs"]])
np.save({str(tmp_path / "out.npy")!r}, out.numpy())
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    got = np.load(tmp_path / "out.npy")
    assert np.allclose(got, load(artifact).run(inputs)[0], rtol=0, atol=0)
    meta = json.loads((artifact / "lower.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask"]


def test_symbolic_dims_must_be_given(rewritten, tmp_path):
    with pytest.raises(LowerError, match="batch"):
        build(rewritten, "llvm", tmp_path, dims={"seq": 11})


def test_command_line_compiles_and_attnrewrite_load_runs(tmp_path, capfd) -> None:
    """`attnrewrite MODEL --method exact --target llvm` then `attnrewrite.load(out).run`;
    TVM's own warnings (written by its C++ code to stderr) are not shown."""
    import attnrewrite
    from attnrewrite.cli import main

    out = tmp_path / "out"
    args = [str(EXAMPLE), "--method", "exact", "-o", str(out), "--target", "llvm"]
    assert main([*args, "--seq-len", "11", "--batch", "2"]) == 0
    assert capfd.readouterr().err == ""
    inputs = feeds()
    got = attnrewrite.load(out).run(inputs)[0]
    want = ort.InferenceSession(str(out / "model.onnx")).run(None, inputs)[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_verbose_shows_what_tvm_writes_to_stderr(tmp_path, capfd) -> None:
    from attnrewrite.cli import main

    args = [str(EXAMPLE), "--method", "exact", "-o", str(tmp_path / "out"), "--target", "llvm"]
    assert main([*args, "--seq-len", "11", "--batch", "2", "--no-verify", "--verbose"]) == 0
    assert "Warning: Detected pow(x, y)" in capfd.readouterr().err  # the compiler's C++ log
