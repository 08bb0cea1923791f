"""The fuzz suite in the test run: a quick seeded sample by default, 5,000 cases when slow.

Each run is a fresh interpreter (`python -m tests.fuzz`): its cases are forked children,
and a process that has already run torch code (as this one has, after other tests) must not
fork.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.cases import families

ROOT = Path(__file__).parents[2]


def _fuzz(tmp_path: Path, cases: int, seed: int, limit_s: int) -> dict:
    summary = tmp_path / "fuzz.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz", "--cases", str(cases), "--seed", str(seed),
         "--json", str(summary)],
        cwd=ROOT, capture_output=True, text=True, timeout=limit_s, check=False,
    )  # fmt: skip
    assert summary.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(summary.read_text())
    assert done.returncode == 0 and not result["failures"], "\n".join(result["failures"])
    return result


def _totals(result: dict) -> dict[str, int]:
    totals: dict[str, int] = {}
    for counts in result["families"].values():
        for verdict, n in counts.items():
            totals[verdict] = totals.get(verdict, 0) + n
    return totals


def test_quick_sample_has_no_crash_hang_or_integrity_failure(tmp_path: Path) -> None:
    result = _fuzz(tmp_path, cases=40, seed=0, limit_s=300)
    assert set(result["families"]) == set(families())
    totals = _totals(result)
    assert totals.get("crash", 0) == totals.get("hang", 0) == totals.get("integrity", 0) == 0
    assert totals["ok"] > 0 and totals["error"] > 0  # both successes and refusals were run


@pytest.mark.slow
def test_five_thousand_cases_have_no_crash_hang_or_integrity_failure(tmp_path: Path) -> None:
    result = _fuzz(tmp_path, cases=5000, seed=0, limit_s=4 * 3600)
    totals = _totals(result)
    assert totals["ok"] + totals["error"] >= 5000
    assert totals.get("crash", 0) == totals.get("hang", 0) == totals.get("integrity", 0) == 0
