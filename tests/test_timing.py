"""Timed sessions that share weights run each model as its own session would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from attnrewrite.timing import SHARED_MIN_BYTES, cpu_session, shared_weight_sessions

SIDE = int(np.sqrt(SHARED_MIN_BYTES // 4)) + 1  # a float32 [SIDE, SIDE] weight is shared


def _matmul_model(path: Path, weight: np.ndarray) -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, SIDE])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("same", [True, False], ids=["same weight", "same name, other weight"])
def test_each_session_computes_with_its_own_models_weights(tmp_path: Path, same: bool) -> None:
    rng = np.random.default_rng(0)
    first = rng.standard_normal((SIDE, SIDE), dtype=np.float32)
    second = first if same else rng.standard_normal((SIDE, SIDE), dtype=np.float32)
    paths = [_matmul_model(tmp_path / "a.onnx", first), _matmul_model(tmp_path / "b.onnx", second)]
    x = {"x": rng.standard_normal((2, SIDE), dtype=np.float32)}
    shared = shared_weight_sessions(paths, threads=1)
    for path, session in zip(paths, shared.sessions, strict=True):
        alone = cpu_session(path, threads=1).run(None, x)[0]
        np.testing.assert_allclose(session.run(None, x)[0], alone, rtol=1e-5, atol=1e-4)
    first, second = (s.run(None, x)[0] for s in shared.sessions)
    assert same == np.allclose(first, second)


def test_memory_pattern_is_chosen_per_session_and_changes_no_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((SIDE, SIDE), dtype=np.float32)
    paths = [_matmul_model(tmp_path / f"{name}.onnx", weight) for name in "ab"]
    x = {"x": rng.standard_normal((2, SIDE), dtype=np.float32)}
    shared = shared_weight_sessions(paths, threads=1, memory_pattern=[False, True])
    assert [s.get_session_options().enable_mem_pattern for s in shared.sessions] == [False, True]
    first, second = (s.run(None, x)[0] for s in shared.sessions)
    np.testing.assert_array_equal(first, second)
