"""The verdict: gates checked on the report's measurements, its last line, exit status 3, and
the warning for an approximation the report never exercised."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from attnrewrite.cli import main
from attnrewrite.report.verdict import Gates, judge

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny-gpt2.onnx"
SCHEMA = json.loads(resources.files("attnrewrite.report").joinpath("schema.json").read_text())
FAST = ["--repeats", "1", "--seq-len", "24"]


def _rewrite(tmp_path: Path, *args: str) -> tuple[int, dict, list[str]]:
    code = main([str(EXAMPLE), *args, "-o", str(tmp_path / "out"), "--report", *FAST])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    return code, report


def _last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_a_failed_error_gate_exits_3_after_writing_everything(tmp_path, capsys) -> None:
    code, report = _rewrite(
        tmp_path, "--method", "multipole", "--block", "2", "--max-error", "1e-6"
    )
    assert code == 3
    jsonschema.validate(report, SCHEMA)
    error = report["summary"]["worst_output_relative_l2"]
    assert error > 1e-4  # multipole at block 2 is far from exact at n = 24
    [gate] = report["verdict"]["gates"]
    assert gate == {
        "gate": "max_error",
        "metric": "worst_output_relative_l2",
        "op": "<=",
        "limit": 1e-6,
        "value": error,
        "passed": False,
    }
    assert report["verdict"]["passed"] is False
    line = _last_line(capsys)
    assert line.startswith(f"verdict: NOT within budget: worst output rel L2 {error:.1e} > 1.0e-06")
    assert line == f"verdict: {report['verdict']['line']}"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model.onnx",
        "report.html",
        "report.json",
        "report.md",
        "rewrite.json",
    ]
    assert "NOT within budget" in (tmp_path / "out" / "report.md").read_text()


def test_passed_gates_exit_0_and_say_within_budget(tmp_path, capsys) -> None:
    code, report = _rewrite(
        tmp_path, "--method", "exact", "--max-error", "1e-5", "--min-top1", "100%"
    )
    assert code == 0
    assert report["verdict"]["passed"] is True
    assert [g["gate"] for g in report["verdict"]["gates"]] == ["max_error", "min_top1"]
    assert report["verdict"]["gates"][1]["value"] == 1.0
    assert (
        _last_line(capsys).startswith("verdict: within budget: worst output rel L2 ")
        and "top-1 100.0% >= 100.0%" in report["verdict"]["line"]
    )


def test_the_report_command_checks_the_same_gates(tmp_path, capsys) -> None:
    rewrite = [str(EXAMPLE), "--method", "multipole", "--block", "2", "-o", str(tmp_path / "m")]
    assert main(rewrite) == 0
    rewritten = str(tmp_path / "m" / "model.onnx")
    assert main(["report", str(EXAMPLE), rewritten, "--max-error", "1e-6", *FAST]) == 3
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    error = report["summary"]["worst_output_relative_l2"]
    assert _last_line(capsys).startswith(
        f"verdict: NOT within budget: worst output rel L2 {error:.1e}"
    )
    assert main(["report", str(EXAMPLE), rewritten, "--max-error", "0.5", *FAST]) == 0
    assert _last_line(capsys).startswith("verdict: within budget")


def test_an_approximation_exact_at_the_report_length_is_flagged(tmp_path, capsys) -> None:
    _, report = _rewrite(tmp_path, "--method", "multipole", "--block", "16")
    [warning] = [w for w in report["verdict"]["warnings"] if "never exercised" in w]
    assert warning.startswith("multipole (block=16, coarse=1, levels=0, sinks=4) is exact for")
    assert "n=24" in warning
    assert report["summary"]["worst_output_relative_l2"] < 1e-5  # exact indeed
    assert f"warning: {warning}" in capsys.readouterr().out


def test_an_exercised_approximation_is_not_flagged(tmp_path) -> None:
    _, report = _rewrite(tmp_path, "--method", "multipole", "--block", "4")
    assert not [w for w in report["verdict"]["warnings"] if "never exercised" in w]


def _measured(error: float, top1: float | None, speedup: float) -> dict:
    logits = None if top1 is None else {"top1_agreement": top1}
    return {
        "summary": {"worst_output_relative_l2": error},
        "outputs": [{"name": "logits", "relative_l2": error, "logits": logits}],
        "latency": {"original_ms": 137.0, "rewritten_ms": 137.0 / speedup, "speedup": speedup},
        "inputs": {"seq_len": 512},
        "blocks": [{"method": "convbasis", "params": {"bases": 16}}],
    }


def test_the_line_names_each_failed_gate_and_the_slowdown() -> None:
    verdict = judge(_measured(0.278, 0.256, 137 / 1512), Gates(max_error=0.5, min_top1=0.99))
    assert verdict["line"] == "NOT within budget: top-1 25.6% < 99.0%; 11x slower than the original"
    assert [g["passed"] for g in verdict["gates"]] == [True, False]
    assert verdict["faster"] is False and verdict["warnings"] == []


def test_the_speed_gate() -> None:
    slow = judge(_measured(0.01, 0.99, 0.8), Gates(min_speedup=1.0))
    assert slow["line"] == "NOT within budget: 1.25x slower than the original (required: faster)"
    fast = judge(_measured(0.01, 0.99, 1.6), Gates(min_speedup=1.5, max_error=0.05))
    assert fast["passed"] is True
    assert fast["line"] == (
        "within budget: worst output rel L2 1.0e-02 <= 5.0e-02; "
        "1.6x faster than the original (required: 1.5x faster)"
    )


def test_without_gates_the_verdict_passes_but_warns() -> None:
    verdict = judge(_measured(0.278, 0.256, 137 / 1512), Gates())
    assert verdict["passed"] is True and verdict["gates"] == []
    assert verdict["warnings"] == [
        "worst output relative L2 2.8e-01 is above 0.1",
        "the rewritten model is 11x slower than the original",
    ]
    assert verdict["line"].startswith("no gate set (--max-error, --min-top1, --require-speedup)")


def test_close_values_are_shown_with_the_digits_that_tell_them_apart() -> None:
    verdict = judge(_measured(0.001, 0.99996, 2.0), Gates(min_top1=0.99999))
    assert verdict["line"].startswith("NOT within budget: top-1 99.996% < 99.999%")


def test_a_gate_on_a_missing_measurement_fails_and_says_why() -> None:
    verdict = judge(_measured(0.001, None, 2.0), Gates(min_top1=0.9))
    assert verdict["passed"] is False and verdict["gates"][0]["value"] is None
    assert "top-1 not measured (no logits output)" in verdict["line"]
    report = _measured(0.001, 0.5, 2.0)
    report["summary"]["worst_output_relative_l2"] = None  # NaN outputs, written as null
    verdict = judge(report, Gates(max_error=0.1))
    assert verdict["line"].startswith("NOT within budget: outputs not finite;")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "exact", "--max-error", "0.1"], "add --report"),
        (["--method", "exact", "--report", "--min-top1", "150%"], "at most 1 (or 100%)"),
        (["--method", "exact", "--report", "--max-error", "-1"], "must be a positive number"),
        (["--method", "magic"], "or auto (per head, within --max-error)"),
    ],
)
def test_bad_gates_are_one_line_errors(tmp_path, capsys, args, message) -> None:
    assert main([str(EXAMPLE), *args, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_auto_reports_are_titled_auto_and_the_budget_is_a_gate(tmp_path, capsys) -> None:
    code, report = _rewrite(tmp_path, "--method", "auto", "--max-error", "0.5", "--batch", "4")
    assert code == 0
    assert report["method"] == {"name": "auto", "params": {"max_error": 0.5}}
    assert report["verdict"]["gates"][0]["gate"] == "max_error"
    assert report["verdict"]["gates"][0]["limit"] == 0.5
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("## attnrewrite report: auto (max_error=0.5)")
    assert "not each head's" in md  # what the budget bounds
