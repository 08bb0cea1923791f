"""What the report holds while it runs models: one capture session at a time, model structure
without the weights' bytes, metrics in chunks of rows equal to the whole-array ones, and the
process's peak memory printed wherever the report says anything."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from attnrewrite.cli import main
from attnrewrite.report import metrics

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny-gpt2.onnx"


def test_capture_sessions_are_gone_before_the_next_one_is_made(tmp_path, monkeypatch) -> None:
    """The original's session is freed before the rewritten one is made, and both before
    the timing sessions: at long context each run needs the memory the other held."""
    live: weakref.WeakSet = weakref.WeakSet()
    alive_at_creation: list[int] = []

    class Counted(ort.InferenceSession):
        def __init__(self, *args, **kwargs) -> None:
            alive_at_creation.append(len(live))
            super().__init__(*args, **kwargs)
            live.add(self)

    out = tmp_path / "out"
    assert main([str(EXAMPLE), "--method", "exact", "-o", str(out), "--no-verify"]) == 0
    monkeypatch.setattr(ort, "InferenceSession", Counted)
    args = ["report", str(EXAMPLE), str(out / "model.onnx"), "--seq-len", "16"]
    assert main([*args, "--repeats", "1"]) == 0
    # two captures, each alone; then the two timed models side by side (timed in rounds)
    assert alive_at_creation == [0, 0, 0, 1]


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
print(resident_mib() - start, len(structure.graph.initializers))
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


def test_metrics_over_chunks_of_rows_equal_the_whole_array_ones(monkeypatch) -> None:
    """Rows split unevenly over chunks (5 rows each) give the numbers of one chunk."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 23, 17)).astype(np.float32)
    y = (x + 0.3 * rng.normal(size=x.shape)).astype(np.float32)
    ids = rng.integers(0, 17, (2, 23))
    keep = np.ones((2, 23), np.int64)
    keep[1, -4:] = 0
    blocks = rng.normal(size=(2, 3, 23, 8)), rng.normal(size=(2, 3, 23, 8))

    def everything() -> dict[str, float | bool | None]:
        tensor = metrics.tensor_metrics("logits", x, y)
        numbers = {k: v for k, v in tensor.items() if k not in ("name", "shape")}
        numbers |= metrics.logits_metrics(x, y, ids, keep)
        heads = metrics.per_head(*blocks, 3) or []
        return numbers | {f"head {h}": value for h, value in enumerate(heads)}

    monkeypatch.setattr(metrics, "ROWS", 1 << 20)
    whole = everything()
    monkeypatch.setattr(metrics, "ROWS", 5)
    assert everything() == pytest.approx(whole, rel=1e-12, abs=1e-15)
    assert len(whole) == 11 and whole["perplexity_original"] is not None


def test_peak_memory_is_in_the_line_and_every_report_file(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args = [str(EXAMPLE), "--method", "exact", "-o", str(out), "--report", "--repeats", "1"]
    assert main([*args, "--seq-len", "16"]) == 0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = json.loads((out / "report.json").read_text())["memory"]["peak_rss_mb"]
    assert before <= peak <= after  # this process's peak, at the time of the report
    gib = peak / 1024
    assert f"peak memory {gib:.1f} GiB" in capsys.readouterr().out
    line = f"Peak memory (this report):** {gib:.2f} GiB"
    assert line in (out / "report.md").read_text()
    assert line.replace("**", "</strong>") in (out / "report.html").read_text()
