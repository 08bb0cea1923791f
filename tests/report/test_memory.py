"""What the report holds while it runs models: model structure without the weights' bytes."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny-gpt2.onnx"


GRAPH_ONLY = """
import ctypes, gc, sys
from attnrewrite.report.build import graph_only

def resident_mib():
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS")) >> 10

start = resident_mib()
structure = graph_only(sys.argv[1])
print(resident_mib() - start, len(structure.graph.initializer))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="reads /proc, trims glibc's heap")
def test_graph_only_keeps_no_weight_bytes_alive(tmp_path) -> None:
    """The structure the report keeps through both runs does not hold the parsed file."""
    weight = numpy_helper.from_array(np.ones((4096, 4096), np.float32), "w")  # 64 MiB
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])],
        [weight],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    del weight, graph
    run = [sys.executable, "-c", GRAPH_ONLY, str(tmp_path / "model.onnx")]
    done = subprocess.run(run, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kept_mib, initializers = map(int, done.stdout.split())
    assert initializers == 1 and kept_mib < 16
