"""Latencies that compare within one report (the same rounds for every model, median and
spread, one number per model), and error axes that start at zero or say they are log."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from attnrewrite.cli import main
from attnrewrite.report import render
from attnrewrite.timing import interleaved_ms

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny-gpt2.onnx"
SCHEMA = json.loads(resources.files("attnrewrite.report").joinpath("schema.json").read_text())


def test_interleaved_timing_runs_every_model_once_per_round() -> None:
    calls: list[str] = []
    runs = [lambda: calls.append("a"), lambda: calls.append("b"), lambda: calls.append("c")]
    times = interleaved_ms(runs, repeats=3)
    assert calls == ["a", "b", "c"] * 4  # one warm-up round, then three timed rounds
    assert [len(t) for t in times] == [3, 3, 3] and all(x >= 0 for t in times for x in t)


def test_interleaved_timing_settles_before_every_call_outside_its_time() -> None:
    calls: list[str] = []
    runs = [lambda: calls.append("a"), lambda: calls.append("b")]
    times = interleaved_ms(runs, repeats=2, settle=lambda: (calls.append("-"), time.sleep(0.05)))
    assert calls == ["-", "a", "-", "b"] * 3
    assert all(x < 40 for t in times for x in t)  # the settling's 50 ms are not timed


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("sweep") / "out"
    args = [str(EXAMPLE), "--method", "multipole", "--block", "4", "-o", str(out), "--report"]
    assert main([*args, "--sweep", "block=2,4", "--seq-len", "24", "--repeats", "3"]) == 0
    return json.loads((out / "report.json").read_text()), out


def test_the_sweep_point_of_the_rewritten_model_shows_its_time(sweep_report) -> None:
    report, _ = sweep_report
    jsonschema.validate(report, SCHEMA)
    latency = report["latency"]
    other, same = report["sweep"]["points"]
    assert (other["value"], same["value"]) == (2, 4)
    assert same["same_model_as_rewritten"] and not other["same_model_as_rewritten"]
    assert same["rewritten_ms"] == latency["rewritten_ms"]  # one model, one number
    assert same["rewritten_range_ms"] == latency["rewritten_range_ms"]
    assert same["outputs_relative_l2"] == report["summary"]["worst_output_relative_l2"]
    assert latency["models_timed_together"] == 3  # original, block 4 (= rewritten), block 2


def test_latencies_carry_their_spread_and_how_they_were_taken(sweep_report) -> None:
    report, out = sweep_report
    latency = report["latency"]
    for name in ("original", "rewritten"):
        low, high = latency[f"{name}_range_ms"]
        assert low <= latency[f"{name}_ms"] <= high
    md = (out / "report.md").read_text()
    assert "median of 3 runs after a warm-up, with the fastest and slowest run" in md
    assert "timed in the same rounds" in md
    low, high = latency["rewritten_range_ms"]
    row = next(line for line in md.splitlines() if line.startswith("| 4 = the rewritten model"))
    assert f"{latency['rewritten_ms']:.2f} ms ({low:.2f}–{high:.2f})" in row


def _blocks(errors: list[float]) -> list[dict]:
    return [{"index": i, "relative_l2": e} for i, e in enumerate(errors)]


def test_error_against_depth_starts_at_zero() -> None:
    figure = render.plot_block_line(_blocks([0.078, 0.085, 0.093, 0.1]))
    axes = figure.axes[0]
    assert axes.get_yscale() == "linear" and axes.get_ylim()[0] == 0
    assert axes.get_ylabel() == "relative L2"


def test_errors_spanning_decades_get_a_labelled_log_axis() -> None:
    for figure in (
        render.plot_block_line(_blocks([1e-6, 1e-3, 0.2])),
        render.plot_block_bars(_blocks([1e-6, 1e-3, 0.2])),
    ):
        axes = figure.axes[0]
        assert axes.get_yscale() == "log" and axes.get_ylabel() == "relative L2 (log scale)"
