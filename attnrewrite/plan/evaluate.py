"""End-to-end error of a per-head plan, measured in memory.

The planner tries many plans. Each is substituted into a copy of the model it already loaded
and searched, and run in onnxruntime on fixed inputs against the original's outputs (run once):
no files written, no model read or searched again per plan, and a plan tried twice is looked
up, not run again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from attnrewrite.match import AttentionMatch
from attnrewrite.plan.calibrate import copy_with_matches, run
from attnrewrite.report.inputs import ReportInputs
from attnrewrite.report.metrics import logits_metrics, relative_l2
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import HeadGroup, substitute

Groups = Mapping[int, Sequence[HeadGroup]]


class EndToEnd:
    """The error of rewritten copies of `model` against `model` itself on `inputs`: the
    worst relative L2 over the outputs and, for logits, the top-1 disagreement."""

    def __init__(
        self, model: ir.Model, matches: Sequence[AttentionMatch], inputs: ReportInputs
    ) -> None:
        self.model, self.matches, self.inputs = model, matches, inputs
        self.reference = self._run(model)
        self._seen: dict[tuple, dict[str, float]] = {}

    def _run(self, model: ir.Model) -> list[np.ndarray]:
        return run(model, self.inputs.feeds)

    def error(self, plans: Groups) -> dict[str, float]:
        key = tuple(
            sorted(
                (block, g.method.name, repr(g.method.params), g.heads)
                for block, groups in plans.items()
                for g in groups
            )
        )
        if key not in self._seen:
            copy, copied = copy_with_matches(self.model, self.matches)
            substitute(copy, copied, get_method("exact"), plans)
            self._seen[key] = self._compare(self._run(copy))
        return self._seen[key]

    def _compare(self, outputs: Sequence[np.ndarray]) -> dict[str, float]:
        worst = max(
            (relative_l2(x, y) for x, y in zip(self.reference, outputs, strict=True)), default=0.0
        )
        agreement = [
            logits_metrics(x, y, self.inputs.token_ids, self.inputs.keep)["top1_agreement"]
            for x, y in zip(self.reference, outputs, strict=True)
            if self.inputs.is_logits(x)
        ]
        return {"relative_l2": worst, "top1_disagreement": 1.0 - min(agreement, default=1.0)}
