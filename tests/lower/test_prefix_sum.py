"""The CPU cumulative sum (``cumsum.prefix_sum``, what llvm builds legalize Relax cumsum to)
against numpy float64: inclusive and exclusive, any axis, trailing dims that do and do not
fill a vector, a wider accumulator dtype; and an ONNX CumSum model built for llvm against
onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("tvm")

from tvm import te

from attnrewrite.lower import build, load
from attnrewrite.lower.cumsum import prefix_sum
from attnrewrite.lower.relax_import import legalize, prepare, to_relax
from attnrewrite.lower.targets import make_target
from tests.conftest import run as run_onnx
from tests.lower.prim import prim_func, run

CASES = [  # shape, axis, exclusive
    ((2, 8, 16, 5, 64), 2, True),  # PolySketch's block states: vectors of 16
    ((3, 7, 5), 1, False),  # 5 trailing: one lane
    ((4, 9), 1, True),  # the last axis
    ((6, 5, 48), 0, True),
    ((6, 5, 48), -1, False),
]


@pytest.mark.parametrize("case", CASES)
def test_prefix_sum_matches_numpy(case):
    shape, axis, exclusive = case
    x = te.placeholder(shape, "float32", name="x")
    xs = np.random.default_rng(0).standard_normal(shape).astype("float32")
    got = run(prim_func([x, prefix_sum(x, axis, exclusive)]), [xs], shape, "float32")
    want = np.cumsum(xs.astype(np.float64), axis=axis) - (xs if exclusive else 0)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_prefix_sum_accumulates_in_the_requested_dtype():
    x = te.placeholder((3, 40), "float32", name="x")
    xs = np.random.default_rng(1).standard_normal((3, 40)).astype("float32")
    got = run(prim_func([x, prefix_sum(x, 1, False, "float64")]), [xs], (3, 40), "float64")
    assert np.abs(got - np.cumsum(xs.astype(np.float64), axis=1)).max() < 1e-12


def test_onnx_cumsum_built_for_llvm_matches_onnxruntime(tmp_path):
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=1, reverse=0)
    graph = helper.make_graph(
        [node],
        "cumsum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 12, 33])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 12, 33])],
        [helper.make_tensor("axis", TensorProto.INT64, [], [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "cumsum.onnx")
    dims: dict[str, int] = {}
    legal = legalize(to_relax(prepare(tmp_path / "cumsum.onnx", dims)), make_target("llvm"))
    assert "prefix_sum" in {gvar.name_hint for gvar in legal.functions}
    xs = {"x": np.random.default_rng(2).standard_normal((2, 8, 12, 33)).astype("float32")}
    got = load(build(tmp_path / "cumsum.onnx", "llvm", tmp_path / "tvm")).run(xs)[0]
    want = run_onnx(model, xs)[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
