"""Render a report dict (docs/report-schema.md) as Markdown, as one self-contained HTML page,
and write report.json, report.md and report.html atomically.

matplotlib is imported only when plots are drawn, through its Agg canvas (never a display),
so Markdown rendering works without it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import secrets
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

WARN_RELATIVE_L2 = 0.1
"""Blocks and outputs whose relative L2 error is above this (or not finite) are flagged."""

WARNING = "⚠️ WARNING"
NA = "n/a"

Table = tuple[list[str], list[list[str]], list[bool]]
"""Header, rows of formatted cells, and whether each row is flagged."""


# ----------------------------------------------------------------------------- formatting


def fmt_error(value: float | None) -> str:
    """An error with three significant digits: 0.0123, 1.2e-05, 0.15."""
    if value is None:
        return NA
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}"


def fmt_fraction(value: float | None) -> str:
    """A fraction in [0, 1] as a percentage: 98.44%."""
    return NA if value is None else f"{value:.2%}"


def fmt_ms(value: float | None) -> str:
    """A latency in milliseconds."""
    return NA if value is None else f"{value:.2f} ms"


def fmt_timing(median: float | None, spread: Sequence[float] | None) -> str:
    """A median latency with the fastest and slowest run: `12.30 ms (11.92–13.05)`."""
    if median is None or not spread:
        return fmt_ms(median)
    return f"{fmt_ms(median)} ({spread[0]:.2f}–{spread[1]:.2f})"


def fmt_speedup(value: float | None) -> str:
    """A speed-up factor: 1.52×."""
    return NA if value is None else f"{value:.2f}×"


def fmt_params(params: dict[str, Any] | None) -> str:
    """Parameters as `k=v, k=v` (empty when there are none)."""
    return ", ".join(f"{key}={value}" for key, value in (params or {}).items())


def fmt_method(method: dict[str, Any] | None) -> str:
    """`name (k=v, ...)`, or a note that no method is recorded."""
    if not method:
        return "none recorded"
    params = fmt_params(method.get("params"))
    return f"{method['name']} ({params})" if params else str(method["name"])


def is_flagged(value: float | None) -> bool:
    """True for an error above WARN_RELATIVE_L2 or not finite."""
    return value is not None and (not math.isfinite(value) or value > WARN_RELATIVE_L2)


# ----------------------------------------------------------------------------- content


def top1_agreement(report: dict[str, Any]) -> tuple[float | None, str | None]:
    """The lowest top-1 agreement over logits outputs, with that output's name."""
    found = [
        (o["logits"]["top1_agreement"], o["name"])
        for o in report.get("outputs", [])
        if o.get("logits") and o["logits"].get("top1_agreement") is not None
    ]
    return min(found) if found else (None, None)


def worst_head(heads: Sequence[float] | None) -> str:
    """`h3: 0.21` for the head with the largest error (nan counts as largest)."""
    if not heads:
        return NA
    index = max(range(len(heads)), key=lambda h: _sort_key(heads[h]))
    return f"h{index}: {fmt_error(heads[index])}"


def _sort_key(value: float | None) -> float:
    """Order errors with None lowest and non-finite highest."""
    if value is None:
        return -math.inf
    return math.inf if math.isnan(value) else value


def headline(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs for the report's headline."""
    summary = report.get("summary") or {}
    latency = report.get("latency") or {}
    agreement, logits_name = top1_agreement(report)
    worst_output = max(
        report.get("outputs", []), key=lambda o: _sort_key(o["relative_l2"]), default=None
    )
    verdict = report.get("verdict")
    items = [("Verdict", verdict["line"])] if verdict else []
    items += [
        ("Method", fmt_method(report.get("method"))),
        (
            "Worst output relative L2",
            fmt_error(summary.get("worst_output_relative_l2"))
            + (f" ({worst_output['name']})" if worst_output else ""),
        ),
        (
            "Top-1 agreement",
            fmt_fraction(agreement) + (f" ({logits_name})" if logits_name else ""),
        ),
        ("Speed-up", _speedup_text(latency)),
    ]
    memory = report.get("memory")
    if memory:
        items.append(("Peak memory (this report)", f"{memory['peak_rss_mb'] / 1024:.2f} GiB"))
    if summary.get("worst_block"):
        value = summary.get("worst_block_relative_l2")
        flag = f" {WARNING}" if is_flagged(value) else ""
        items.append(("Worst block", f"{summary['worst_block']} ({fmt_error(value)}){flag}"))
    return items


def _speedup_text(latency: dict[str, Any]) -> str:
    """`1.52× (12.30 ms → 8.09 ms)`, or n/a."""
    if not latency:
        return NA
    return (
        f"{fmt_speedup(latency.get('speedup'))} "
        f"({fmt_ms(latency.get('original_ms'))} → {fmt_ms(latency.get('rewritten_ms'))})"
    )


def measured_note(report: dict[str, Any]) -> str:
    """One sentence saying the errors are measured, and on what."""
    inputs = report.get("inputs") or {}
    models = report.get("models") or {}
    source = inputs.get("source", "unknown")
    if inputs.get("path"):
        source = f"{source} from {inputs['path']}"
    return (
        "All errors are measured, not estimated: the rewritten model "
        f"({models.get('rewritten', '?')}) was run against the original "
        f"({models.get('original', '?')}) in onnxruntime on the same inputs "
        f"({source}, batch {inputs.get('batch', '?')}, seq_len {inputs.get('seq_len', '?')}). "
        f"Rows marked {WARNING} have a relative L2 error above {WARN_RELATIVE_L2} "
        "(or a non-finite one)."
    )


def outputs_table(report: dict[str, Any]) -> Table:
    """One row per graph output."""
    header = ["Output", "Shape", "Relative L2", "Max abs", "Cosine", "Finite", "Top-1", "KL (nats)"]
    header += ["Perplexity (orig → rewr)", "Status"]
    rows, flags = [], []
    for out in report.get("outputs", []):
        logits = out.get("logits") or {}
        flagged = is_flagged(out["relative_l2"]) or not out.get("finite", True)
        perplexity = NA
        if logits.get("perplexity_original") is not None:
            perplexity = (
                f"{logits['perplexity_original']:.3f} → "
                f"{_fmt_optional(logits.get('perplexity_rewritten'), '{:.3f}')}"
            )
        rows.append(
            [
                out["name"],
                "×".join(str(d) for d in out.get("shape", [])),
                fmt_error(out["relative_l2"]),
                fmt_error(out.get("max_abs")),
                _fmt_optional(out.get("cosine"), "{:.6f}"),
                "yes" if out.get("finite", True) else "NO",
                fmt_fraction(logits.get("top1_agreement")),
                fmt_error(logits.get("kl_original_rewritten")),
                perplexity,
                WARNING if flagged else "ok",
            ]
        )
        flags.append(flagged)
    return header, rows, flags


def _fmt_optional(value: float | None, pattern: str) -> str:
    """Format a value, or n/a for None."""
    return NA if value is None else pattern.format(value)


def blocks_table(report: dict[str, Any]) -> Table:
    """One row per rewritten attention block."""
    header = ["#", "Name", "Method", "Fallback", "Relative L2", "Max abs", "Worst head", "Status"]
    rows, flags = [], []
    for block in report.get("blocks", []):
        flagged = is_flagged(block["relative_l2"])
        params = fmt_params(block.get("params"))
        rows.append(
            [
                str(block["index"]),
                block["name"],
                f"{block['method']} ({params})" if params else block["method"],
                block.get("fallback") or "—",
                fmt_error(block["relative_l2"]),
                fmt_error(block.get("max_abs")),
                worst_head(block.get("heads")),
                WARNING if flagged else "ok",
            ]
        )
        flags.append(flagged)
    return header, rows, flags


def latency_table(report: dict[str, Any]) -> Table:
    """Original and rewritten latency in one row: medians, with the fastest and slowest run."""
    latency = report.get("latency") or {}
    header = ["Original", "Rewritten", "Speed-up", "Repeats", "Threads"]
    if not latency:
        return header, [], []
    row = [
        fmt_timing(latency.get("original_ms"), latency.get("original_range_ms")),
        fmt_timing(latency.get("rewritten_ms"), latency.get("rewritten_range_ms")),
        fmt_speedup(latency.get("speedup")),
        str(latency.get("repeats", NA)),
        str(latency.get("threads", NA)),
    ]
    return header, [row], [False]


def latency_note(report: dict[str, Any]) -> str:
    """How the latencies were taken, so numbers in different tables can be compared."""
    latency = report.get("latency") or {}
    together = latency.get("models_timed_together")
    rounds = (
        f" All {together} models of this report (original, rewritten"
        + (", sweep points" if report.get("sweep") else "")
        + ") were timed in the same rounds, one run each per round, so their numbers compare."
        if together
        else ""
    )
    return (
        f"Wall time of one run in onnxruntime on {latency.get('threads', '?')} thread(s): the "
        f"median of {latency.get('repeats', '?')} runs after a warm-up, with the fastest and "
        f"slowest run in brackets.{rounds} The models' sessions hold the weights they share"
        " once, so onnxruntime does not prepack MatMul weights in any of them; the original's"
        " runs without onnxruntime's memory pattern (at long context it kept the attention's"
        " buffers resident beside the logits), the rewritten models' with it."
    )


def sweep_table(report: dict[str, Any]) -> Table | None:
    """One row per sweep point, or None without a sweep."""
    sweep = report.get("sweep")
    if not sweep:
        return None
    original_ms = (report.get("latency") or {}).get("original_ms")
    header = [sweep["param"], "Outputs relative L2", "Top-1", "Worst block relative L2"]
    header += ["Rewritten", "Speed-up", "Status"]
    rows, flags = [], []
    for point in sweep["points"]:
        worst = max(point.get("blocks_relative_l2") or [], key=_sort_key, default=None)
        flagged = is_flagged(point["outputs_relative_l2"]) or is_flagged(worst)
        point_ms = point.get("rewritten_ms")
        speedup = original_ms / point_ms if original_ms and point_ms else None
        same = " = the rewritten model" if point.get("same_model_as_rewritten") else ""
        rows.append(
            [
                f"{point['value']}{same}",
                fmt_error(point["outputs_relative_l2"]),
                fmt_fraction(point.get("top1_agreement")),
                fmt_error(worst),
                fmt_timing(point_ms, point.get("rewritten_range_ms")),
                fmt_speedup(speedup),
                WARNING if flagged else "ok",
            ]
        )
        flags.append(flagged)
    return header, rows, flags


def plan_table(report: dict[str, Any]) -> Table | None:
    """`--method auto`: one row per group of heads that share a candidate in a block, the
    error calibration measured beside the error this report measured on the same heads."""
    plan = report.get("plan")
    if not plan:
        return None
    measured = {b["output"]: b.get("heads") for b in report.get("blocks", [])}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for head in plan["heads"]:
        label = fmt_method({"name": head["method"], "params": head["params"]})
        label += ", fitted" if head.get("fitted") else ""
        groups.setdefault((head["block"], label), []).append(head)
    header = ["Block", "Heads", "Method", "Calibration error", "Error here", "Cost vs exact"]
    rows, flags = [], []
    for (block, label), heads in groups.items():
        here = measured.get(block)
        errors = [here[h["head"]] for h in heads if here and h["head"] < len(here)]
        worst_here = max(errors, key=_sort_key, default=None)
        flagged = is_flagged(worst_here)
        rows.append(
            [
                block,
                ", ".join(str(h["head"]) for h in heads),
                label,
                fmt_error(max(h["calibration_error"] for h in heads)),
                fmt_error(worst_here),
                f"{max(h['relative_cost'] for h in heads):.2f}x",
            ]
        )
        flags.append(flagged)
    return header, rows, flags


def plan_note(report: dict[str, Any]) -> str:
    plan = report["plan"]
    held = plan["held_out"]
    return (
        f"Per-head plan for a budget of {plan['max_error']:g}, chosen on calibration inputs at "
        f"n={plan['calibration_seq_len']} and checked on held-out rows (relative L2 "
        f"{fmt_error(held['relative_l2'])}, top-1 disagreement "
        f"{fmt_fraction(held['top1_disagreement'])}); predicted attention time "
        f"{plan['relative_cost']:.2f}x the original's at n={plan['cost_seq_len']} (each node "
        f"timed alone: {plan['predicted_ms']:.1f} against {plan['original_ms']:.1f} ms), "
        f"{fmt_fraction(plan['flops_removed'])} of its attention flops removed. The budget bounds "
        "the whole model's error (relative L2 of every output, top-1 disagreement of logits), "
        "not each head's: a head's error is diluted by the rest of its block and the model, so "
        "heads above the budget are expected. Errors are the worst head of each group: at "
        "calibration (the head alone, on exact inputs), and here (in the rewritten model, so "
        "earlier blocks' errors are included)."
    )


def calibration_table(report: dict[str, Any]) -> Table | None:
    """`--calibrate`: one row per head, its calibration error with the method's defaults and
    fitted, beside the error this report measured on it in the rewritten model."""
    calibration = report.get("calibration")
    if not calibration:
        return None
    measured = {b["output"]: b.get("heads") for b in report.get("blocks", [])}
    header = ["Block", "Head", "Default error", "Fitted error", "Error here", "Fit"]
    rows, flags = [], []
    for head in calibration["heads"]:
        here = measured.get(head["block"])
        error_here = here[head["head"]] if here and head["head"] < len(here) else None
        rows.append(
            [
                head["block"],
                str(head["head"]),
                fmt_error(head["error_default"]),
                fmt_error(head["error_fitted"]),
                fmt_error(error_here),
                "defaults kept" if head["kept_default"] else "fitted",
            ]
        )
        flags.append(is_flagged(error_here))
    return header, rows, flags


def calibration_note(report: dict[str, Any]) -> str:
    calibration = report["calibration"]
    heads = calibration["heads"]
    fitted = [h for h in heads if not h["kept_default"]]
    default = [h["error_default"] for h in heads if h["error_default"] is not None]
    error = [h["error_fitted"] for h in heads if h["error_fitted"] is not None]
    inputs = calibration["inputs"]
    return (
        f"{fmt_method(calibration['method'])} with parameters fitted per head on calibration "
        f"inputs (batch {inputs.get('batch')}, n={inputs.get('seq_len')}; "
        f"{calibration['seconds']:.0f} s): {len(fitted)} of {len(heads)} heads fitted, median "
        f"head error {fmt_error(_median(default))} with the defaults, "
        f"{fmt_error(_median(error))} fitted. A head the fit did not improve keeps the "
        "defaults. Default and fitted errors are the head alone on exact inputs (the errors "
        "the fit was judged by); the error here is the head in the rewritten model, earlier "
        "blocks' errors included."
    )


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def flagged_blocks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Blocks whose relative L2 error is flagged."""
    return [b for b in report.get("blocks", []) if is_flagged(b["relative_l2"])]


def warnings(report: dict[str, Any]) -> list[str]:
    """What the reader must not miss: flagged blocks, then the verdict's warnings."""
    found = []
    flagged = flagged_blocks(report)
    if flagged:
        names = ", ".join(
            f"#{b['index']} {b['name']} ({fmt_error(b['relative_l2'])})" for b in flagged
        )
        found.append(f"{len(flagged)} block(s) above relative L2 {WARN_RELATIVE_L2}: {names}")
    return found + list((report.get("verdict") or {}).get("warnings", []))


def environment_line(report: dict[str, Any]) -> str:
    """Tool and environment versions in one line."""
    tool = report.get("tool") or {}
    env = report.get("environment") or {}
    parts = [f"{tool.get('name', 'attnrewrite')} {tool.get('version', '?')}"]
    parts += [f"{key} {env[key]}" for key in ("python", "onnx", "onnxruntime") if key in env]
    if "platform" in env:
        parts.append(str(env["platform"]))
    if "cpu_count" in env:
        parts.append(f"{env['cpu_count']} CPUs")
    parts.append(f"schema {report.get('schema_version', '?')}")
    return " · ".join(parts)


# ----------------------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    """A GitHub-flavoured Markdown table."""
    header, rows, _ = table
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """A concise Markdown report for a pull request."""
    lines = [f"## attnrewrite report: {fmt_method(report.get('method'))}", ""]
    lines += [f"- **{label}:** {value}" for label, value in headline(report)]
    lines += ["", measured_note(report), ""]
    for warning in warnings(report):
        lines += [f"> {WARNING}: {warning}", ""]
    lines += ["### Outputs", "", _md_table(outputs_table(report)), ""]
    lines += ["### Attention blocks", ""]
    blocks = blocks_table(report)
    lines += [_md_table(blocks) if blocks[1] else "No attention block was rewritten.", ""]
    plan = plan_table(report)
    if plan is not None:
        lines += ["### Per-head plan", "", plan_note(report), "", _md_table(plan), ""]
    fit = calibration_table(report)
    if fit is not None:
        lines += ["### Calibrated heads", "", calibration_note(report), "", _md_table(fit), ""]
    lines += ["### Latency", "", latency_note(report), "", _md_table(latency_table(report)), ""]
    sweep = sweep_table(report)
    if sweep is not None:
        lines += [f"### Sweep over `{report['sweep']['param']}`", "", _md_table(sweep), ""]
    lines += [f"<sub>{environment_line(report)}</sub>", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots


def _new_figure(width: float = 7.0, height: float = 3.2) -> Any:
    """A matplotlib Figure on an Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _figure_svg(figure: Any) -> str:
    """The figure as SVG text, with no timestamp and stable ids."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "attnrewrite"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def _error_axis(axes: Any, values: Sequence[float | None]) -> None:
    """A linear axis from 0, so a small rise never looks like a large one; a log axis (said
    in the label) when positive errors span more than two decades."""
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if finite and max(finite) / min(finite) > 100:
        axes.set_yscale("log")
        axes.set_ylabel("relative L2 (log scale)")
    else:
        axes.set_ylim(bottom=0)
        axes.set_ylabel("relative L2")


def _finite(values: Sequence[float | None]) -> list[float]:
    """Values with None and non-finite replaced by nan (matplotlib leaves gaps)."""
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


def plot_block_bars(blocks: Sequence[dict[str, Any]]) -> Any:
    """Relative L2 per block as bars, flagged ones in red, with the warning threshold."""
    figure = _new_figure(width=min(12.0, max(6.0, 0.3 * len(blocks))))
    axes = figure.add_subplot()
    errors = [b["relative_l2"] for b in blocks]
    colors = ["#c0392b" if is_flagged(e) else "#2e86c1" for e in errors]
    positions = range(len(blocks))
    axes.bar(positions, _finite(errors), color=colors)
    axes.set_xticks(list(positions), [str(b["index"]) for b in blocks])
    axes.axhline(WARN_RELATIVE_L2, color="#c0392b", linestyle="--", linewidth=1, label="warning")
    _error_axis(axes, [*errors, WARN_RELATIVE_L2])
    axes.set(xlabel="block index", title="Error per attention block")
    axes.legend(loc="best", fontsize="small")
    return figure


def plot_block_line(blocks: Sequence[dict[str, Any]]) -> Any:
    """Relative L2 against the block's layer index, to show error growing with depth."""
    figure = _new_figure()
    axes = figure.add_subplot()
    ordered = sorted(blocks, key=lambda b: b["index"])
    axes.plot(
        [b["index"] for b in ordered], _finite([b["relative_l2"] for b in ordered]), marker="o"
    )
    axes.axhline(WARN_RELATIVE_L2, color="#c0392b", linestyle="--", linewidth=1)
    axes.xaxis.get_major_locator().set_params(integer=True)
    _error_axis(axes, [b["relative_l2"] for b in ordered])
    axes.set(xlabel="layer (block index)", title="Error vs depth")
    return figure


def plot_heads(blocks: Sequence[dict[str, Any]]) -> Any:
    """Per-head relative L2 as a heatmap: blocks down, heads across."""
    import numpy as np

    with_heads = [b for b in blocks if b.get("heads")]
    width = max(len(b["heads"]) for b in with_heads)
    grid = np.full((len(with_heads), width), np.nan)
    for row, block in enumerate(with_heads):
        grid[row, : len(block["heads"])] = _finite(block["heads"])
    figure = _new_figure(
        width=min(12.0, max(5.0, 0.5 * width + 2)),
        height=min(10.0, max(2.5, 0.35 * len(with_heads) + 1.2)),
    )
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis")
    axes.set_xticks(range(width), [str(h) for h in range(width)])
    axes.set_yticks(range(len(with_heads)), [str(b["index"]) for b in with_heads])
    axes.set(xlabel="head", ylabel="block index", title="Relative L2 per head")
    figure.colorbar(image, ax=axes, label="relative L2")
    return figure


def plot_calibration(heads: Sequence[dict[str, Any]]) -> Any:
    """Each head's calibration error fitted against with the defaults, on log axes: points
    below the diagonal are heads the fit improved."""
    figure = _new_figure(width=4.6, height=4.2)
    axes = figure.add_subplot()
    pairs = [
        (h["error_default"], h["error_fitted"])
        for h in heads
        if h["error_default"]
        and h["error_fitted"]
        and math.isfinite(h["error_default"])
        and math.isfinite(h["error_fitted"])
    ]
    if pairs:
        default, fitted = zip(*pairs, strict=True)
        axes.scatter(default, fitted, s=12, color="#2e86c1")
        low, high = min(*default, *fitted), max(*default, *fitted)
        axes.plot([low, high], [low, high], color="gray", linestyle="--", linewidth=1)
        axes.set_xscale("log")
        axes.set_yscale("log")
    axes.set(
        xlabel="defaults (relative L2, log scale)",
        ylabel="fitted (relative L2, log scale)",
        title="Head error on calibration inputs",
    )
    return figure


def _sweep_x(values: Sequence[Any]) -> tuple[list[float], list[str] | None]:
    """Numeric x for numeric sweep values; positions plus labels otherwise."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    return list(map(float, range(len(values)))), [str(v) for v in values]


def plot_sweep_error(sweep: dict[str, Any]) -> Any:
    """Output and worst-block error against the swept parameter."""
    figure = _new_figure()
    axes = figure.add_subplot()
    points = sweep["points"]
    x, labels = _sweep_x([p["value"] for p in points])
    outputs = [p["outputs_relative_l2"] for p in points]
    worst = [max(p.get("blocks_relative_l2") or [math.nan], key=_sort_key) for p in points]
    axes.plot(x, _finite(outputs), marker="o", label="outputs")
    axes.plot(x, _finite(worst), marker="s", linestyle=":", label="worst block")
    axes.axhline(WARN_RELATIVE_L2, color="#c0392b", linestyle="--", linewidth=1)
    if labels:
        axes.set_xticks(x, labels)
    _error_axis(axes, [*outputs, *worst])
    axes.set(xlabel=sweep["param"], title=f"Error vs {sweep['param']}")
    axes.legend(loc="best", fontsize="small")
    return figure


def plot_sweep_latency(sweep: dict[str, Any], latency: dict[str, Any] | None) -> Any:
    """Rewritten latency against the swept parameter, with the original's as a line."""
    figure = _new_figure()
    axes = figure.add_subplot()
    points = sweep["points"]
    x, labels = _sweep_x([p["value"] for p in points])
    axes.plot(x, _finite([p.get("rewritten_ms") for p in points]), marker="o", label="rewritten")
    if latency and latency.get("original_ms") is not None:
        axes.axhline(latency["original_ms"], color="gray", linestyle="--", label="original")
    if labels:
        axes.set_xticks(x, labels)
    axes.set(xlabel=sweep["param"], ylabel="ms", title=f"Latency vs {sweep['param']}")
    axes.set_ylim(0, axes.get_ylim()[1] * 1.25)
    axes.legend(loc="upper left", fontsize="small", ncols=2)
    return figure


def plot_latency(latency: dict[str, Any]) -> Any:
    """Original vs rewritten latency as two bars."""
    figure = _new_figure(width=5.0, height=2.6)
    axes = figure.add_subplot()
    values = _finite([latency.get("original_ms"), latency.get("rewritten_ms")])
    bars = axes.barh(["original", "rewritten"], values, color=["gray", "#2e86c1"])
    axes.bar_label(bars, labels=[fmt_ms(v) for v in values], padding=3, fontsize="small")
    axes.set_xlim(right=max((v for v in values if math.isfinite(v)), default=1.0) * 1.3)
    axes.invert_yaxis()
    axes.set(xlabel="ms", title=f"Latency (speed-up {fmt_speedup(latency.get('speedup'))})")
    return figure


def figures(report: dict[str, Any]) -> list[tuple[str, Callable[[], Any]]]:
    """(caption, figure factory) for each plot this report has data for."""
    blocks = report.get("blocks") or []
    sweep = report.get("sweep")
    latency = report.get("latency")
    plots: list[tuple[str, Callable[[], Any]]] = []
    if blocks:
        plots.append(("Relative L2 per attention block", lambda: plot_block_bars(blocks)))
        plots.append(("Relative L2 against layer index", lambda: plot_block_line(blocks)))
    if any(b.get("heads") for b in blocks):
        plots.append(("Relative L2 per head", lambda: plot_heads(blocks)))
    calibration = report.get("calibration")
    if calibration and calibration.get("heads"):
        plots.append(
            ("Head error, defaults vs fitted", lambda: plot_calibration(calibration["heads"]))
        )
    if sweep and sweep.get("points"):
        plots.append((f"Error against {sweep['param']}", lambda: plot_sweep_error(sweep)))
        plots.append(
            (f"Latency against {sweep['param']}", lambda: plot_sweep_latency(sweep, latency))
        )
    if latency:
        plots.append(("Latency, original vs rewritten", lambda: plot_latency(latency)))
    return plots


# ----------------------------------------------------------------------------- html

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; padding: 0 1rem;
       color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
tr.warn td { background: #fdecea; }
.warn-text { color: #a61b1b; font-weight: bold; }
.note { background: #f6f8fa; border-left: 4px solid #2e86c1; padding: 0.5rem 1rem; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(30rem, 100%), 1fr));
         gap: 1rem; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85rem; color: #555; }
footer { margin-top: 2rem; font-size: 0.8rem; color: #666; }
"""


def _esc(text: Any) -> str:
    """HTML-escape any value's text."""
    return html.escape(str(text), quote=True)


def _html_table(table: Table) -> str:
    """An HTML table; flagged rows get class="warn"."""
    header, rows, flags = table
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row, flagged in zip(rows, flags, strict=True):
        cells = "".join(f"<td>{_esc(c)}</td>" for c in row)
        body.append(f'<tr class="warn">{cells}</tr>' if flagged else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_figure(caption: str, svg: str) -> str:
    """An SVG embedded as a data: image, so ids and styles of plots never collide."""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return (
        f'<figure><img src="data:image/svg+xml;base64,{data}" alt="{_esc(caption)}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _html_plots(report: dict[str, Any]) -> str:
    """All plots, each drawn, serialised and released."""
    parts = []
    for caption, factory in figures(report):
        figure = factory()
        parts.append(_html_figure(caption, _figure_svg(figure)))
        figure.clear()
    return f'<div class="plots">{"".join(parts)}</div>' if parts else ""


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page (no scripts, no external resources) with tables and plots."""
    title = f"attnrewrite report: {fmt_method(report.get('method'))}"
    items = "".join(
        f"<li><strong>{_esc(label)}:</strong> {_esc(value)}</li>"
        for label, value in headline(report)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<ul class="headline">{items}</ul>',
        f'<p class="note">{_esc(measured_note(report))}</p>',
    ]
    for warning in warnings(report):
        parts.append(f'<p class="warn-text">{_esc(WARNING)}: {_esc(warning)}</p>')
    plots = _html_plots(report)
    if plots:
        parts += ["<h2>Plots</h2>", plots]
    parts += ["<h2>Outputs</h2>", _html_table(outputs_table(report))]
    blocks = blocks_table(report)
    parts.append("<h2>Attention blocks</h2>")
    parts.append(_html_table(blocks) if blocks[1] else "<p>No attention block was rewritten.</p>")
    plan = plan_table(report)
    if plan is not None:
        parts += ["<h2>Per-head plan</h2>", f'<p class="note">{_esc(plan_note(report))}</p>']
        parts.append(_html_table(plan))
    fit = calibration_table(report)
    if fit is not None:
        note = _esc(calibration_note(report))
        parts += ["<h2>Calibrated heads</h2>", f'<p class="note">{note}</p>']
        parts.append(_html_table(fit))
    parts += ["<h2>Latency</h2>", f'<p class="note">{_esc(latency_note(report))}</p>']
    parts.append(_html_table(latency_table(report)))
    sweep = sweep_table(report)
    if sweep is not None:
        parts += [f"<h2>Sweep over {_esc(report['sweep']['param'])}</h2>", _html_table(sweep)]
    parts += [f"<footer>{_esc(environment_line(report))}</footer>", "</body></html>", ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- files


def _write_atomic(path: Path, text: str) -> None:
    """Write text to a temporary name beside path, then rename it over path."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """Write report.json, report.md and report.html into folder; returns their paths.

    Everything is rendered before anything is written, so a rendering error leaves the
    folder as it was; each file is replaced atomically.
    """
    folder = Path(folder)
    contents = {
        "report.json": json.dumps(report, indent=2) + "\n",
        "report.md": render_markdown(report),
        "report.html": render_html(report),
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in contents.items():
        _write_atomic(folder / name, text)
        paths.append(folder / name)
    return paths
