"""Run the original and the rewritten model in onnxruntime and compare, end to end and per block.

Each rewritten block's output keeps its original value name, so both models can expose it
as an extra graph output and the first block that disagrees is named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import onnx_ir as ir
import onnxruntime as ort

FP32_TOLERANCE = 1e-5  # relative: float rounding of a reordered fp32 computation
FP16_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Difference:
    name: str
    max_abs: float
    relative: float
    finite: bool

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "max_abs": self.max_abs,
            "relative": self.relative,
            "finite": self.finite,
        }


def difference(name: str, reference: np.ndarray, candidate: np.ndarray) -> Difference:
    """Max abs error, relative to the reference's largest magnitude. Entries where the
    reference is NaN (e.g. a fully masked row) are not compared; NaN in the candidate where
    the reference is a number is an infinite error."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(candidate, dtype=np.float64)
    delta = np.where(np.isnan(ref), 0.0, np.abs(ref - got))
    delta = np.where(np.isnan(delta), np.inf, delta)
    max_abs = float(np.max(delta)) if delta.size else 0.0
    scale = float(np.max(np.abs(np.where(np.isnan(ref), 0.0, ref)))) if ref.size else 0.0
    relative = max_abs / scale if scale > 0 else max_abs
    finite = bool(np.isfinite(got[~np.isnan(ref)]).all())
    return Difference(name, max_abs, relative, finite)


def tolerance_for(model: ir.Model) -> float:
    half = {ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
    types = {v.dtype for v in model.graph.outputs}
    return FP16_TOLERANCE if types & half else FP32_TOLERANCE


def run_with_outputs(
    path: Path, feeds: Mapping[str, np.ndarray], extra: Sequence[str]
) -> dict[str, np.ndarray]:
    """All graph outputs plus the named intermediate values of the model file (external data
    in memory: models under 2 GB). Read as protobuf: onnxruntime takes the serialized bytes,
    and the file's own are the cheapest to give it."""
    model = onnx.load(str(path))
    if model.functions:  # onnxruntime's own inlining grows faster than the graph: 1,000
        model = onnx.inliner.inline_local_functions(model)  # blocks take 106 s, this 2 s
    names = [o.name for o in model.graph.output]
    added = [name for name in dict.fromkeys(extra) if name not in names]
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in added)
    try:
        serialized = model.SerializeToString()
    finally:
        del model.graph.output[len(model.graph.output) - len(added) :]
    del model  # the weights live on in onnxruntime's copy only
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # the graphs as written: a comparison needs no fusions, and onnxruntime's optimizer grows
    # faster than the graph (1,000 rewritten blocks: minutes per model)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False  # one run: give every buffer back when it is freed
    session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    del serialized
    wanted = {i.name for i in session.get_inputs()}
    names += added
    outputs = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, outputs, strict=True))


@dataclass(frozen=True)
class Parity:
    outputs: tuple[Difference, ...]
    blocks: tuple[Difference, ...]
    tolerance: float
    seq_len: int  # the query length the blocks ran at: a fixed-length model keeps its own
    requested_seq_len: int

    @property
    def worst(self) -> float:
        return max((d.relative for d in self.outputs), default=0.0)

    def first_failing_block(self) -> Difference | None:
        return next((b for b in self.blocks if b.relative > self.tolerance), None)

    def describe(self) -> dict[str, object]:
        return {
            "seq_len": self.seq_len,
            "requested_seq_len": self.requested_seq_len,
            "tolerance": self.tolerance,
            "max_relative_error": self.worst,
            "outputs": [d.describe() for d in self.outputs],
            "blocks": [d.describe() for d in self.blocks],
        }


def compare(
    original: Path,
    rewritten: Path,
    signature: ir.Model,
    feeds: Mapping[str, np.ndarray],
    blocks: Sequence[str],
    seq_len: int,
) -> Parity:
    """The two model files on `feeds`; `signature` is either model (both take the same
    inputs and give the same outputs)."""
    reference = run_with_outputs(original, feeds, blocks)
    candidate = run_with_outputs(rewritten, feeds, blocks)
    graph_outputs = [o.name or "" for o in signature.graph.outputs]
    outputs = tuple(difference(n, reference[n], candidate[n]) for n in graph_outputs)
    block_diffs = tuple(difference(n, reference[n], candidate[n]) for n in blocks)
    tolerance = tolerance_for(signature)
    ran_at = {reference[n].shape[-2] for n in blocks if np.ndim(reference[n]) >= 2}
    return Parity(outputs, block_diffs, tolerance, max(ran_at, default=seq_len), seq_len)
