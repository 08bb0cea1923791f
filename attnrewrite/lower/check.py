"""Does a compiled library compute what onnxruntime computes on the same rewritten model, and
how fast is it? The question every ``--target`` build answers before the tool reports success.

The rewritten ONNX model is the reference: its own parity with the original was checked by
``attnrewrite.verify`` (``exact`` to float rounding), so the library only has to match it.
Both run the same inputs (``attnrewrite.inputs.generate_inputs`` at the build's shapes); the
worst relative difference over the outputs must stay within ``TOLERANCE`` (the issue's bar for
TVM builds; TVM's reordered float32 arithmetic measures 1e-8 to 1e-6 here). Both are timed
with the same thread count, TVM's runtime pool size (``TVM_NUM_THREADS``), median of
``repeats`` runs after a warm-up. The result is written beside the library as ``check.json``.
CUDA libraries are checked only where a GPU is present.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from attnrewrite.export import staged_directory
from attnrewrite.lower.relax_import import load
from attnrewrite.timing import cpu_session, median_ms, session_feeds
from attnrewrite.verify import Difference, difference, tolerance_for

TOLERANCE = 1e-4  # relative, float32 outputs
CHECK = "check.json"


@dataclass(frozen=True)
class ArtifactCheck:
    outputs: tuple[Difference, ...]
    tolerance: float
    tvm_ms: float
    onnxruntime_ms: float
    threads: int

    @property
    def worst(self) -> float:
        return max((d.relative for d in self.outputs), default=0.0)

    @property
    def passed(self) -> bool:
        return all(d.finite for d in self.outputs) and self.worst <= self.tolerance

    def describe(self) -> dict[str, object]:
        return {
            "reference": "onnxruntime on the rewritten model",
            "tolerance": self.tolerance,
            "max_relative_difference": self.worst,
            "passed": self.passed,
            "outputs": [d.describe() for d in self.outputs],
            "threads": self.threads,
            "tvm_ms": self.tvm_ms,
            "onnxruntime_ms": self.onnxruntime_ms,
        }

    def summary(self) -> str:
        return (
            f"matches onnxruntime on the rewritten model to {self.worst:.1e} (max relative, "
            f"tolerance {self.tolerance:.0e}); {self.tvm_ms:.1f} ms per run against "
            f"onnxruntime's {self.onnxruntime_ms:.1f} ms ({self.threads} thread"
            f"{'s' if self.threads != 1 else ''} each; TVM_NUM_THREADS sets it)"
        )


def library_tolerance(model: ir.Model) -> float:
    """``TOLERANCE``, or the rewrite's own tolerance where it is wider (float16 outputs)."""
    return max(TOLERANCE, tolerance_for(model))


def check_artifact(
    folder: Path,
    model_path: Path,
    feeds: Mapping[str, np.ndarray],
    tolerance: float = TOLERANCE,
    repeats: int = 5,
) -> ArtifactCheck:
    """Run and time the library in ``folder`` and onnxruntime on ``model_path`` (the model it
    was built from) on ``feeds``; write ``check.json`` into ``folder``. ``tolerance``:
    ``library_tolerance`` of that model."""
    import tvm

    artifact = load(folder)
    threads = int(tvm.get_global_func("runtime.NumThreads")())
    session = cpu_session(model_path, threads)
    ort_feeds = session_feeds(session, feeds)
    want = session.run(artifact.output_names, ort_feeds)
    got = artifact.run(feeds)
    outputs = tuple(
        difference(name, w, g) for name, w, g in zip(artifact.output_names, want, got, strict=True)
    )
    result = ArtifactCheck(
        outputs,
        tolerance,
        median_ms(lambda: artifact.run(feeds), repeats),
        median_ms(lambda: session.run(None, ort_feeds), repeats),
        threads,
    )
    with staged_directory(folder) as staging:
        (staging / CHECK).write_text(json.dumps(result.describe(), indent=2) + "\n")
    return result
