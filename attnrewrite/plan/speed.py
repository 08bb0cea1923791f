"""Whole-model time of a plan against exact attention everywhere, measured before it is kept.

Node costs predict a plan's attention time; the whole model adds what they miss: the copies
that split a block into head groups, the buffers onnxruntime's arena reuses across nodes, the
fusions around the nodes. Planned at 2048 on SmolLM2, plans predicted 1.2x faster than exact
attention in causal chunks ran 0.93x of it in onnxruntime's default session. So the planner
times the rewritten model and the all-exact one (chunked, the plan's fallback: the original's
numbers to float rounding) in the same rounds, in sessions as onnxruntime runs a model by
default (its memory arena on), on inputs of the target length, and keeps a plan only if it is
measured faster by more than timing noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from attnrewrite.evaluate import ones_feeds
from attnrewrite.plan.workspace import Workspace
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import HeadGroup, substitute
from attnrewrite.timing import interleaved_ms, session_feeds

ROUNDS = 3  # interleaved timed runs of each model, after a warm-up run each
MIN_SPEEDUP = 1.03  # below this over exact attention a plan is not worth its error


@dataclass(frozen=True)
class Measured:
    """Median whole-model times (ms) of a plan and of exact attention everywhere."""

    plan_ms: float
    exact_ms: float
    seq_len: int
    rounds: int

    @property
    def speedup(self) -> float:
        """How much faster the plan ran than exact attention everywhere."""
        return self.exact_ms / self.plan_ms

    @property
    def faster(self) -> bool:
        return self.speedup >= MIN_SPEEDUP

    @staticmethod
    def fast_enough(described: Mapping[str, object]) -> bool:
        """`faster`, of a plan as `describe` recorded it."""
        return float(described["speedup_vs_exact"]) >= MIN_SPEEDUP

    def describe(self) -> dict[str, object]:
        return {
            "plan_ms": self.plan_ms,
            "exact_ms": self.exact_ms,
            "speedup_vs_exact": self.speedup,
            "seq_len": self.seq_len,
            "rounds": self.rounds,
        }


class SpeedCheck:
    """Times rewritten copies of the workspace's model against its all-exact copy (built
    once) at `seq_len`, batch 1."""

    def __init__(self, workspace: Workspace, seq_len: int, rounds: int = ROUNDS) -> None:
        self.workspace, self.seq_len, self.rounds = workspace, seq_len, rounds
        self.feeds = ones_feeds(workspace.base.graph, seq_len, batch=1)
        self._exact: ort.InferenceSession | None = None

    def measure(self, plans: Mapping[int, Sequence[HeadGroup]]) -> Measured:
        planned = self._session(plans)
        exact = self._exact_session()
        feeds = [session_feeds(s, self.feeds) for s in (planned, exact)]
        runs = [
            lambda s=planned, f=feeds[0]: s.run(None, f),
            lambda s=exact, f=feeds[1]: s.run(None, f),
        ]
        plan_times, exact_times = interleaved_ms(runs, self.rounds)
        return Measured(
            float(np.median(plan_times)), float(np.median(exact_times)), self.seq_len, self.rounds
        )

    def _exact_session(self) -> ort.InferenceSession:
        if self._exact is None:
            self._exact = self._session({})
        return self._exact

    def _session(self, plans: Mapping[int, Sequence[HeadGroup]]) -> ort.InferenceSession:
        copy = self.workspace.copy()
        substitute(copy, self.workspace.matches, get_method("exact"), plans)
        return self.workspace.session(copy, arena=True)
