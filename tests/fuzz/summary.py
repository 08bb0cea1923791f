"""Counts of fuzz outcomes per family: ok / clean error / crash / hang, and integrity."""

from __future__ import annotations

from collections import Counter, defaultdict

from tests.fuzz.runner import Outcome

VERDICTS = ("ok", "error", "crash", "hang")


class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.failures: list[Outcome] = []

    @staticmethod
    def passed(outcome: Outcome) -> bool:
        return outcome.verdict in ("ok", "error") and not outcome.problems

    def add(self, outcome: Outcome) -> None:
        counts = self.counts[outcome.case.family]
        counts[outcome.verdict] += 1
        counts["integrity"] += bool(outcome.problems)
        if not self.passed(outcome):
            self.failures.append(outcome)

    def clean(self) -> bool:
        return not self.failures

    def total(self) -> Counter:
        return sum(self.counts.values(), Counter())

    def table(self) -> str:
        head = f"{'family':10} {'cases':>6} " + " ".join(f"{v:>6}" for v in VERDICTS)
        rows = [head + f" {'integrity':>9}"]
        for family, counts in [*sorted(self.counts.items()), ("total", self.total())]:
            cases = sum(counts[v] for v in VERDICTS)
            cells = " ".join(f"{counts[v]:>6}" for v in VERDICTS)
            rows.append(f"{family:10} {cases:>6} {cells} {counts['integrity']:>9}")
        return "\n".join(rows)

    def describe(self) -> dict:
        return {
            "families": {f: dict(c) for f, c in self.counts.items()},
            "failures": [o.line() for o in self.failures],
        }
