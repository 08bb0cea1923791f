"""Build the report dict (docs/report-schema.md) from an original and a rewritten model.

Both models run in onnxruntime on the same inputs with every rewritten block's output exposed
as an extra graph output (the rewrite keeps each block output's name), so per-block errors
come from the models themselves, not from a re-implementation. Which blocks there are, and
their methods, come from the rewrite's own record (report/blocks.py).
"""

from __future__ import annotations

import functools
import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from attnrewrite import __version__
from attnrewrite.errors import AttnRewriteError
from attnrewrite.loading import deserialize
from attnrewrite.memory import peak_rss_mb, release_freed
from attnrewrite.repair import merge_constants
from attnrewrite.report import metrics
from attnrewrite.report.blocks import Block, blocks_of, read_record
from attnrewrite.report.inputs import ReportInputs, graph_inputs
from attnrewrite.substitute.body import DOMAIN
from attnrewrite.timing import (
    cpu_session,
    interleaved_ms,
    median_ms,
    session_feeds,
    shared_weight_sessions,
)
from attnrewrite.verify import run_with_outputs

SCHEMA_VERSION = 1


def graph_only(path: Path) -> ir.Model:
    """The model without its weights' bytes: what the comparison reads of its structure.

    The weights' bytes are cleared in the parsed protobuf, which is copied before onnx-ir
    reads it (what onnx-ir refuses repaired as on load): the parsed model's memory
    (protobuf's arena, with the file's bytes) stays whole while any part of it lives, fields
    cleared or not (SmolLM2: 0.5 GiB a model, held through both runs)."""
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        tensor.ClearField("raw_data")
    structure = onnx.ModelProto()
    structure.CopyFrom(proto)
    del proto
    return deserialize(merge_constants(structure, str(path)), str(path))


def check_same_signature(original: ir.Model, rewritten: ir.Model) -> None:
    """The rewritten model must take the original's inputs and give its outputs."""
    ins = [(v.name, v.dtype) for v in graph_inputs(original)]
    got = [(v.name, v.dtype) for v in graph_inputs(rewritten)]
    outs = [o.name for o in original.graph.outputs]
    if sorted(ins) != sorted(got) or outs != [o.name for o in rewritten.graph.outputs]:
        raise AttnRewriteError(
            "the rewritten model does not belong to the original: inputs "
            f"{sorted(n for n, _ in got)} / outputs {[o.name for o in rewritten.graph.outputs]}"
            f" differ from {sorted(n for n, _ in ins)} / {outs}"
        )
    if not any(node.domain == DOMAIN for node in rewritten.graph):
        raise AttnRewriteError("the rewritten model has no attnrewrite node in its main graph")


def latency_ms(path: Path, feeds: Mapping[str, np.ndarray], repeats: int, threads: int) -> float:
    """Median wall time of one run in onnxruntime, after a warm-up run."""
    session = cpu_session(path, threads)
    feeds = session_feeds(session, feeds)
    return median_ms(lambda: session.run(None, feeds), repeats)


def latencies(
    paths: Sequence[Path], feeds: Mapping[str, np.ndarray], repeats: int, threads: int
) -> list[dict[str, object]]:
    """Per model its median and its fastest and slowest run (ms), every model timed in the
    same rounds (timing.interleaved_ms); a path given twice is one model, timed once. The
    sessions hold the weights the models share once (timing.shared_weight_sessions), and the
    C heap is trimmed before every run, outside its timing (memory.release_freed).

    The first path is the original: its session runs without onnxruntime's memory pattern,
    the rewritten models' with it. From its second run a session with the pattern takes one
    block for all of a run's planned tensors and holds it through the run, so the original's
    whole-score attention and its logits, written beside the block at the end, were resident
    together: SmolLM2 at n = 8192 timing peaked at 7.6 GiB with the pattern, 6.2 without. The
    original also ran faster without it (2048: 2.66 s against 3.05; 8192: 5-13%), so the
    speed-ups shown are not inflated by the pattern's absence; the rewrites keep it (exact
    attention in causal chunks ran 2x slower without it at 2048)."""
    unique = list(dict.fromkeys(paths))
    patterns = [index > 0 for index in range(len(unique))]
    timed = shared_weight_sessions(unique, threads, memory_pattern=patterns)
    runs = [functools.partial(s.run, None, session_feeds(s, feeds)) for s in timed.sessions]
    stats = {
        path: {"median_ms": float(np.median(times)), "range_ms": [min(times), max(times)]}
        for path, times in zip(
            unique, interleaved_ms(runs, repeats, settle=release_freed), strict=True
        )
    }
    return [stats[path] for path in paths]


def compare_models(
    original: Path, rewritten: Path, inputs: ReportInputs
) -> tuple[list[dict], list[dict], list[Block]]:
    """(outputs, blocks) metrics of the rewritten model against the original; the blocks are
    those its rewrite record (rewrite.json beside it) lists."""
    record = read_record(rewritten)
    original_graph, rewritten_graph = graph_only(original), graph_only(rewritten)
    check_same_signature(original_graph, rewritten_graph)
    blocks = blocks_of(record, original_graph, rewritten_graph)
    extra = [b.output for b in blocks]
    try:  # one model in memory at a time, read by the run and freed after it
        release_freed()  # what the rewrite freed: the original's run is the report's peak
        reference = run_with_outputs(original, inputs.feeds, extra)
        release_freed()
        candidate = run_with_outputs(
            rewritten, inputs.feeds, [*extra, *(o for b in blocks for o in b.node_outputs)]
        )
    except Exception as err:  # onnxruntime raises several types, all meaning "cannot run"
        raise AttnRewriteError(
            f"the models do not run on these inputs: {str(err).splitlines()[0]}"
        ) from None
    outputs = []
    for name in (out.name or "" for out in original_graph.graph.outputs):
        x, y = reference[name], candidate[name]
        row = metrics.tensor_metrics(name, x, y)
        row["logits"] = (
            metrics.logits_metrics(x, y, inputs.token_ids, inputs.keep)
            if inputs.is_logits(x)
            else None
        )
        outputs.append(row)
    block_rows = []
    for index, block in enumerate(blocks):
        x, y = reference[block.output], candidate[block.output]
        heads = sum(
            candidate[o].shape[-3] if candidate[o].ndim == 4 else 0 for o in block.node_outputs
        )
        block_rows.append(
            {
                "index": index,
                "name": block.name,
                "output": block.output,
                "method": block.method,
                "params": block.params,
                "fallback": block.fallback,
                "relative_l2": metrics.relative_l2(x, y),
                "max_abs": float(np.max(np.abs(np.asarray(y, np.float64) - x))) if x.size else 0.0,
                "heads": metrics.per_head(x, y, heads or None),
            }
        )
    return outputs, block_rows, blocks


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count() or 1,
    }


def build_report(
    original: Path,
    rewritten: Path,
    inputs: ReportInputs,
    method: Mapping | None = None,
    repeats: int = 5,
    threads: int = 0,
    sweep: Mapping | None = None,
    plan: Mapping | None = None,
    calibration: Mapping | None = None,
    sweep_models: Sequence[Path] = (),
) -> dict:
    """The whole report; `plan` is `--method auto`'s per-head plan (report.run.plan_of),
    `calibration` `--calibrate`'s per-head fit (report.run.calibration_of),
    `sweep_models` the model of each sweep point, timed in the same rounds as the original
    and the rewritten one."""
    outputs, blocks, _ = compare_models(original, rewritten, inputs)
    release_freed()
    timed_paths = [original, rewritten, *sweep_models]
    timed = latencies(timed_paths, inputs.feeds, repeats, threads)
    (before, after), points = timed[:2], timed[2:]
    original_ms, rewritten_ms = before["median_ms"], after["median_ms"]
    if sweep is not None:
        sweep = {
            **sweep,
            "points": [
                {**p, "rewritten_ms": t["median_ms"], "rewritten_range_ms": t["range_ms"]}
                for p, t in zip(sweep["points"], points, strict=True)
            ],
        }
    worst = max(blocks, key=lambda b: b["relative_l2"], default=None)
    return _strict_json(
        {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "attnrewrite", "version": __version__},
            "environment": environment(),
            "models": {"original": str(original), "rewritten": str(rewritten)},
            "inputs": inputs.describe(),
            "method": dict(method) if method is not None else _method_of(blocks),
            "outputs": outputs,
            "blocks": blocks,
            "latency": {
                "original_ms": original_ms,
                "rewritten_ms": rewritten_ms,
                "speedup": original_ms / rewritten_ms if rewritten_ms > 0 else None,
                "repeats": repeats,
                "threads": threads or (os.cpu_count() or 1),
                "original_range_ms": before["range_ms"],
                "rewritten_range_ms": after["range_ms"],
                "models_timed_together": len(dict.fromkeys(timed_paths)),
            },
            "memory": {"peak_rss_mb": peak_rss_mb()},
            "sweep": dict(sweep) if sweep is not None else None,
            "plan": dict(plan) if plan is not None else None,
            "calibration": dict(calibration) if calibration is not None else None,
            "summary": {
                "worst_output_relative_l2": max((o["relative_l2"] for o in outputs), default=0.0),
                "worst_block": worst["name"] if worst else None,
                "worst_block_relative_l2": worst["relative_l2"] if worst else None,
            },
        }
    )


def _strict_json(value: object) -> object:
    """NaN and inf become null: report.json stays strict JSON (the schema says so)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    return value


def _method_of(blocks: Sequence[dict]) -> dict | None:
    """The method of a model rewritten with one method (approximate blocks win over exact)."""
    chosen = [b for b in blocks if b["method"] != "exact"] or list(blocks)
    return {"name": chosen[0]["method"], "params": chosen[0]["params"]} if chosen else None


def sweep_point(original: Path, rewritten: Path, inputs: ReportInputs, value: object) -> dict:
    """The accuracy of one sweep point; build_report adds its timing."""
    outputs, blocks, _ = compare_models(original, rewritten, inputs)
    logits = [o["logits"] for o in outputs if o["logits"] is not None]
    return {
        "value": value,
        "outputs_relative_l2": max((o["relative_l2"] for o in outputs), default=0.0),
        "top1_agreement": logits[0]["top1_agreement"] if logits else None,
        "blocks_relative_l2": [b["relative_l2"] for b in blocks],
    }
