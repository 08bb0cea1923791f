"""`--calibrate`: a method's per-head arrays fitted to the model's heads, then the rewrite.

    calibration inputs -> every block's q, k, v, mask and exact output   (calibrate.capture)
    each block's heads fitted on its operands                           (fit.fitted_arrays)
    each head's error as its node runs, default and fitted              (measure.Bench.errors)
    the model written with one calibrated node per block, the fitted arrays its initializers

A head whose fitted error on the calibration inputs is not below its default error keeps the
default (zeros), so calibration never makes a head worse on the inputs it saw; a block
where no head gains keeps the plain node. Blocks the method cannot take stay exact, as without
--calibrate; blocks calibration does not capture (inside functions, rank 3) or whose fit fails
get the plain method, with the reason in the record. rewrite.json's "calibration" records
every fitted block: its fitted array, and each head's relative L2 error, default and fitted,
on the calibration inputs (the numbers a report should show per head beside the end-to-end
ones).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from attnrewrite.budget import check_bytes
from attnrewrite.errors import AttnRewriteError
from attnrewrite.loading import default_opset, load_model
from attnrewrite.match import AttentionMatch
from attnrewrite.patterns import find_attention
from attnrewrite.pipeline import VERIFY_SEQ_LEN, RewriteOutcome, no_attention, rewrite_model
from attnrewrite.plan.calibrate import BlockOperands, capture, plannable
from attnrewrite.plan.candidates import Candidate
from attnrewrite.plan.fit import OBJECTIVES, fitted_arrays
from attnrewrite.plan.measure import Bench
from attnrewrite.plan.workspace import Workspace
from attnrewrite.progress import steps
from attnrewrite.report.inputs import ReportInputs
from attnrewrite.substitute.methods import ResolvedMethod
from attnrewrite.substitute.rewrite import HeadGroup


def calibrated_rewrite(
    path: Path,
    method: ResolvedMethod,
    out_dir: Path,
    calibration: ReportInputs,
    verify: bool = True,
    verify_seq_len: int = VERIFY_SEQ_LEN,
) -> RewriteOutcome:
    """Fit `method` to every block of the model at `path` on `calibration`, write the
    rewritten model and its record into `out_dir`."""
    if not method.method.fitted:
        raise AttnRewriteError(f"--calibrate: {method.name} has no parameters to fit")
    model = load_model(path, min_opset=method.min_opset)
    found = find_attention(model)
    if not found.matches:
        raise no_attention(path, found)
    _check_capture_size(found.matches, calibration)
    started = time.perf_counter()
    with Workspace(model, found.matches) as workspace:
        del model
        captured = capture(workspace, calibration.feeds).blocks
        bench = Bench(default_opset(workspace.base))
        fitted, plans, refused = [], {}, {}
        with steps("fitting heads", len(captured)) as advance:
            for block in captured:
                output = workspace.matches[block.index].output
                why = method.limit(block.signature)
                try:
                    if why is None:
                        record, group = _fit_block(bench, method, block, output)
                        fitted.append(record)
                        if group is not None:
                            plans[block.index] = [group]
                except Exception as err:  # torch and onnxruntime raise many types
                    why = f"not calibrated ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
                if why is not None:
                    refused[output] = why  # the plain method, or exact where it cannot run
                advance(f"block {block.index}")
    seconds = time.perf_counter() - started
    record = _record(method, calibration, fitted, refused, found.matches, seconds)
    outcome = rewrite_model(
        path,
        method,
        out_dir,
        verify,
        verify_seq_len,
        plans=plans,
        extra={"calibration": record},
        min_opset=method.min_opset,
    )
    return RewriteOutcome(outcome.out_dir, outcome.report, outcome.summary + _line(record))


def _fit_block(
    bench: Bench, method: ResolvedMethod, block: BlockOperands, output: str
) -> tuple[dict[str, object], HeadGroup | None]:
    """The block's fitted record and its calibrated node (None: no head gains, plain node)."""
    started = time.perf_counter()
    arrays = fitted_arrays(method.name, method.params, block)
    seconds = time.perf_counter() - started
    candidate = Candidate(method.name, method.params)
    default = bench.errors(candidate, block)
    error = bench.errors(candidate, block, arrays)
    worse = ~(error < default)  # NaN included: such a head keeps the default (zeros)
    for array in arrays.values():
        array[worse] = 0.0
    error = np.where(worse, default, error)
    record = {
        "output": output,
        "heads": block.heads,
        "error_default": default.tolist(),
        "error_fitted": error.tolist(),
        "kept_default": np.flatnonzero(worse).tolist(),
        "fit_seconds": seconds,
        **{name: array.tolist() for name, array in arrays.items()},
    }
    if worse.all():
        return record, None
    calibrated = method.with_fitted(arrays)
    return record, HeadGroup(calibrated, tuple(range(block.heads)))


def _record(
    method: ResolvedMethod,
    calibration: ReportInputs,
    fitted: list[dict[str, object]],
    refused: dict[str, str],
    matches: list[AttentionMatch],
    seconds: float,
) -> dict[str, object]:
    default = np.concatenate([b["error_default"] for b in fitted]) if fitted else np.zeros(0)
    error = np.concatenate([b["error_fitted"] for b in fitted]) if fitted else np.zeros(0)
    return {
        "method": {"name": method.name, "params": method.params},
        "fitted": {f.name: f.help for f in method.method.fitted},
        "fitted_input": "the last inputs of each calibrated node: float32 [heads, head dim] "
        "initializers '<node>/<name>'; a row of zeros is the method without calibration",
        "objective": OBJECTIVES[method.name],
        "calibration": calibration.describe(),
        "seconds": seconds,  # capture, fits and error measurements
        "fit_seconds": sum(b["fit_seconds"] for b in fitted),
        "heads": int(default.size),
        "median_error_default": float(np.median(default)) if default.size else None,
        "median_error_fitted": float(np.median(error)) if error.size else None,
        "blocks": fitted,
        "refused": refused,
        "not_captured": [m.output for m in matches if not plannable(m)],
    }


def _line(record: dict[str, object]) -> str:
    if not record["heads"]:
        return "\ncalibration fitted no head (see rewrite.json: calibration)"
    return (
        f"\ncalibrated {record['heads']} heads in {record['seconds']:.0f} s: median head error "
        f"{record['median_error_default']:.3g} (default) -> {record['median_error_fitted']:.3g} "
        "(fitted) on the calibration inputs"
    )


def _check_capture_size(matches: list[AttentionMatch], inputs: ReportInputs) -> None:
    """Calibration holds every block's q, k, v and outputs at once (float32), and a mask of
    the scores' size: refuse a length or batch that would not fit in memory."""
    shape = inputs.describe()
    batch, n = int(shape["batch"]), int(shape["seq_len"])
    per_block = [4 * (m.q_heads or 1) * (m.head_dim or 64) for m in matches if plannable(m)]
    nbytes = 4 * batch * n * (sum(per_block) + n)
    check_bytes(f"calibrating at batch {batch} x {n} tokens", nbytes)
