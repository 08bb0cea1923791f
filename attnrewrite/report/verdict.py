"""The verdict: is the rewritten model within the user's budget, and is it faster?

A report measures; the verdict compares those measurements with the gates the user set
(`--max-error`, `--min-top1`, `--require-speedup`) and says in one line what a user or a CI
job needs to know, e.g. "NOT within budget: top-1 25.6% < 99.0%; 11x slower than the
original". The command exits 3 when a gate fails. Without gates the line still says how far
and how fast, and warns where the result is clearly not a win. It also warns when the report
ran at a length where every approximate block is exact by construction (a multipole block
covering the whole sequence): the numbers then say nothing about the approximation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from attnrewrite import methods as references
from attnrewrite.report.render import WARN_RELATIVE_L2, fmt_params, top1_agreement

EXIT_GATE_FAILED = 3


@dataclass(frozen=True)
class Gates:
    """What the user accepts. ``max_error``: the worst output's relative L2; ``min_top1``: the
    lowest top-1 agreement of a logits output (a fraction); ``min_speedup``: original time /
    rewritten time."""

    max_error: float | None = None
    min_top1: float | None = None
    min_speedup: float | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.max_error, self.min_top1, self.min_speedup))


def judge(report: Mapping[str, Any], gates: Gates) -> dict[str, Any]:
    """The report's `verdict` object (docs/report-schema.md)."""
    error = report["summary"]["worst_output_relative_l2"]
    top1, _ = top1_agreement(dict(report))
    speedup = report["latency"].get("speedup")
    checks = []
    if gates.max_error is not None:
        checks.append(_gate("max_error", "worst_output_relative_l2", error, gates.max_error, "<="))
    if gates.min_top1 is not None:
        checks.append(_gate("min_top1", "top1_agreement", top1, gates.min_top1, ">="))
    if gates.min_speedup is not None:
        checks.append(_gate("min_speedup", "speedup", speedup, gates.min_speedup, ">="))
    warnings = list(_never_exercised(report))
    if not gates.any():
        if error is None or error > WARN_RELATIVE_L2:
            warnings.append(f"worst output relative L2 {_error(error)} is above {WARN_RELATIVE_L2}")
        if speedup is not None and speedup < 1:
            warnings.append(f"the rewritten model is {_speed(speedup)}")
    passed = all(c["passed"] for c in checks)
    return {
        "passed": passed,
        "gates": checks,
        "faster": None if speedup is None else speedup > 1,
        "warnings": warnings,
        "line": _line(passed, checks, error, top1, speedup),
    }


def _gate(name: str, metric: str, value: float | None, limit: float, op: str) -> dict[str, Any]:
    ok = value is not None and math.isfinite(value)
    if ok:
        ok = value <= limit if op == "<=" else value >= limit
    return {"gate": name, "metric": metric, "op": op, "limit": limit, "value": value, "passed": ok}


def _line(
    passed: bool,
    checks: list[dict[str, Any]],
    error: float | None,
    top1: float | None,
    speedup: float | None,
) -> str:
    """One line: the gates (only the failed ones when any failed), then the speed."""
    speed = _speed(speedup)
    if not checks:
        measured = f"worst output rel L2 {_error(error)}"
        if top1 is not None:
            measured += f", top-1 {top1:.1%}"
        gate_flags = "--max-error, --min-top1, --require-speedup"
        return f"no gate set ({gate_flags}): {measured}; {speed}"
    for check in checks:
        if check["metric"] == "speedup":
            required = "faster" if check["limit"] == 1 else f"{check['limit']:g}x faster"
            speed += f" (required: {required})"
    shown = [c for c in checks if c["metric"] != "speedup" and (passed or not c["passed"])]
    gates = ", ".join(_describe(c) for c in shown)
    head = "within budget" if passed else "NOT within budget"
    return f"{head}: {gates}; {speed}" if gates else f"{head}: {speed}"


def _describe(check: Mapping[str, Any]) -> str:
    """`top-1 25.6% < 99.0%`: the measured value against the limit, with the outcome's sign."""
    value, limit, op = check["value"], check["limit"], check["op"]
    top1 = check["metric"] == "top1_agreement"
    if value is None:
        return "top-1 not measured (no logits output)" if top1 else "outputs not finite"
    label = "top-1" if top1 else "worst output rel L2"
    text, bound = _apart(value, limit, "%" if top1 else "e")
    shown = op if check["passed"] else {"<=": ">", ">=": "<"}[op]
    return f"{label} {text} {shown} {bound}"


def _apart(value: float, limit: float, kind: str) -> tuple[str, str]:
    """Both numbers with one decimal, or as many as it takes for unequal ones to look unequal."""
    for digits in range(1, 7):
        texts = (f"{value:.{digits}{kind}}", f"{limit:.{digits}{kind}}")
        if value == limit or texts[0] != texts[1]:
            break
    return texts


def _speed(speedup: float | None) -> str:
    if speedup is None or not math.isfinite(speedup) or speedup <= 0:
        return "speed not measured"
    if speedup >= 1:
        return f"{_factor(speedup)} faster than the original"
    return f"{_factor(1 / speedup)} slower than the original"


def _factor(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}x" if value >= 10 else f"{value:.3g}x"


def _error(value: float | None) -> str:
    return "n/a (not finite)" if value is None else f"{value:.1e}"


def _never_exercised(report: Mapping[str, Any]) -> Iterator[str]:
    """A warning per approximate method and setting that is exact at the report's length."""
    n = report["inputs"].get("seq_len")
    if not isinstance(n, int):
        return
    settings = [(b["method"], b.get("params") or {}) for b in report["blocks"]]
    settings += [(h["method"], h["params"]) for h in (report.get("plan") or {}).get("heads", [])]
    seen = set()
    for name, params in settings:
        key = (name, tuple(sorted(params.items())))
        if name == "exact" or name not in references.METHODS or key in seen:
            continue
        seen.add(key)
        method = references.get(name)
        known = {p.name: p.default for p in method.params}
        limit = method.exact_up_to({**known, **params})
        if limit is not None and n <= limit:
            label = f"{name} ({fmt_params(params)})" if params else name
            yield (
                f"{label} is exact for sequences up to {limit:g} and the report ran at n={n}: "
                "it never exercised the approximation; measure at your target length "
                "(--seq-len, --inputs)"
            )
