"""End-to-end error of a per-head plan.

The planner tries many plans. Each is substituted into a copy of the model (the workspace's:
graph only, weights shared, blocks moved over rather than searched again) and run in
onnxruntime on fixed inputs against the model's exact outputs (from the capture run): a plan
tried twice is looked up, not run again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from attnrewrite.plan.workspace import Workspace
from attnrewrite.report.inputs import ReportInputs
from attnrewrite.report.metrics import logits_metrics, relative_l2
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import HeadGroup, substitute

Groups = Mapping[int, Sequence[HeadGroup]]


class EndToEnd:
    """The error of rewritten copies of `model` against `model` itself on `inputs`: the
    worst relative L2 over the outputs and, for logits, the top-1 disagreement."""

    def __init__(
        self,
        workspace: Workspace,
        inputs: ReportInputs,
        reference: Sequence[np.ndarray] | None = None,
    ) -> None:
        """`reference`: the model's outputs on `inputs` (by default from a run with exact
        attention, chunked: the original's numbers to float rounding, at a fraction of the
        original's time and memory at long context)."""
        self.workspace, self.inputs = workspace, inputs
        if reference is None:
            copy = workspace.copy()
            substitute(copy, workspace.matches, get_method("exact"))
            reference = workspace.run(copy, inputs.feeds)
        self.reference = reference
        self._seen: dict[tuple, dict[str, float]] = {}

    def error(self, plans: Groups) -> dict[str, float]:
        key = tuple(
            sorted(
                (block, g.method.name, repr(g.method.params), bool(g.method.fitted), g.heads)
                for block, groups in plans.items()
                for g in groups
            )
        )
        if key not in self._seen:
            copy = self.workspace.copy()
            substitute(copy, self.workspace.matches, get_method("exact"), plans)
            self._seen[key] = self._compare(self.workspace.run(copy, self.inputs.feeds))
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
