"""The report stage: choose inputs, compare the two models, sweep a parameter, write files."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from attnrewrite.defaults import REPORT_BATCH, REPORT_SEQ_LEN
from attnrewrite.errors import AttnRewriteError
from attnrewrite.loading import load_model
from attnrewrite.memory import unmap_large_buffers
from attnrewrite.pipeline import rewrite_model
from attnrewrite.progress import steps
from attnrewrite.report.blocks import read_record
from attnrewrite.report.build import build_report, sweep_point
from attnrewrite.report.inputs import ReportInputs, from_npz, from_text, generated
from attnrewrite.report.render import write_report
from attnrewrite.report.verdict import Gates, judge
from attnrewrite.substitute.methods import get_method

MAX_SWEEP = 16  # values of --sweep: each is a rewrite and a report run


@dataclass(frozen=True)
class InputChoice:
    """What the user asked the report to run on."""

    npz: Path | None = None
    text: Path | None = None
    tokenizer: str | None = None
    seq_len: int = REPORT_SEQ_LEN
    batch: int = REPORT_BATCH

    def load(self, model_path: Path) -> ReportInputs:
        model = load_model(model_path)  # one clear line for a missing or corrupt file
        if self.npz is not None:
            return from_npz(model, self.npz)
        if self.text is not None:
            if self.tokenizer is None:
                raise AttnRewriteError("--text needs --tokenizer (tokenizer.json, or 'bytes')")
            return from_text(model, self.text, self.tokenizer, self.seq_len, self.batch)
        return generated(model, self.seq_len, self.batch)


@dataclass(frozen=True)
class Sweep:
    """`--sweep k=4,16,64`: one parameter of the method, several values."""

    param: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, aliases: dict[str, str]) -> Sweep:
        name, sep, values = text.partition("=")
        items = tuple(v.strip() for v in values.split(",") if v.strip())
        if not sep or not name.strip() or not items:
            raise AttnRewriteError(f"--sweep expects NAME=V1,V2,...; got '{text}'")
        if len(items) > MAX_SWEEP:
            raise AttnRewriteError(f"--sweep takes at most {MAX_SWEEP} values, got {len(items)}")
        name = name.strip().lstrip("-").replace("-", "_")
        return cls(aliases.get(name, name), items)


def plan_of(record: dict) -> dict | None:
    """`--method auto`'s plan: per head its candidate, calibration error and predicted cost."""
    auto = record.get("auto")
    if not auto:
        return None
    return {
        "max_error": auto["max_error"],
        "calibration_seq_len": auto["calibration_seq_len"],
        "cost_seq_len": auto["cost_seq_len"],
        "relative_cost": auto["relative_cost"],
        "predicted_ms": auto["predicted_ms"],
        "original_ms": auto["original_ms"],
        "flops_removed": auto["flops_removed"],
        "held_out": auto["held_out"],
        "heads": [
            {
                "block": h["output"],
                "head": h["head"],
                "method": h["method"],
                "params": h["params"],
                "fitted": "fitted" in h,
                "calibration_error": h["error"],
                "cost_ms": h["cost_ms"],
                "flops": h["flops"],
                "relative_cost": h["relative_cost"],
            }
            for h in auto["heads"]
        ],
    }


def calibration_of(record: dict) -> dict | None:
    """`--calibrate`'s fit: per head its error on the calibration inputs with the method's
    default parameters and with the fitted ones (the error the fit was judged by)."""
    fit = record.get("calibration")
    if not fit:
        return None
    heads = []
    for block in fit["blocks"]:
        kept = set(block["kept_default"])
        pairs = zip(block["error_default"], block["error_fitted"], strict=True)
        heads += [
            {
                "block": block["output"],
                "head": head,
                "error_default": default,
                "error_fitted": fitted,
                "kept_default": head in kept,
            }
            for head, (default, fitted) in enumerate(pairs)
        ]
    return {
        "method": fit["method"],
        "inputs": fit["calibration"],
        "seconds": fit["seconds"],
        "heads": heads,
    }


def report(
    original: Path,
    rewritten: Path,
    out_dir: Path,
    inputs: ReportInputs,
    method: dict | None = None,
    sweep: Sweep | None = None,
    repeats: int = 5,
    gates: Gates | None = None,
) -> tuple[dict, list[Path]]:
    """Compare, optionally sweep, judge against `gates`, and write report.json/.md/.html into
    `out_dir`. The sweep's models live until every model has been timed, in the same rounds."""
    if sweep is not None and method is None:
        raise AttnRewriteError("--sweep needs the method the model was rewritten with")
    record = read_record(rewritten)  # before any sweep: one line when there is none
    unmap_large_buffers()  # long-context runs keep only what is live (attnrewrite.memory)
    with tempfile.TemporaryDirectory() as tmp:
        sweep_part, sweep_models = None, []
        if sweep is not None and method is not None:
            points, sweep_models = _sweep_points(
                original, rewritten, inputs, method, sweep, Path(tmp)
            )
            sweep_part = {"param": sweep.param, "points": points}
        result = build_report(
            original,
            rewritten,
            inputs,
            method=method,
            plan=plan_of(record),
            calibration=calibration_of(record),
            repeats=repeats,
            sweep=sweep_part,
            sweep_models=sweep_models,
        )
    if rewritten.parent == out_dir:  # beside the report: named so, wherever the folder moves
        result["models"]["rewritten"] = rewritten.name
    result["verdict"] = judge(result, gates or Gates())
    return result, write_report(result, out_dir)


def _sweep_points(
    original: Path,
    rewritten: Path,
    inputs: ReportInputs,
    method: dict,
    sweep: Sweep,
    folder: Path,
) -> tuple[list[dict], list[Path]]:
    """Each point's accuracy and model; the point with the rewritten model's own parameters
    is that model, not a second copy timed apart."""
    points, models = [], []
    with steps(f"sweeping {sweep.param}", len(sweep.values)) as advance:
        for index, value in enumerate(sweep.values):
            params = {**method.get("params", {}), sweep.param: value}
            chosen = get_method(method["name"], params)
            model = folder / str(index) / "model.onnx"
            if chosen.params == method.get("params"):
                model = rewritten
            else:
                rewrite_model(original, chosen, model.parent, verify=False)
            point = sweep_point(original, model, inputs, value)
            point["value"] = chosen.params[sweep.param]
            point["same_model_as_rewritten"] = model == rewritten
            points.append(point)
            models.append(model)
            advance(f"{sweep.param}={value}")
    return points, models
