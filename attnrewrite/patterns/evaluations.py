"""What the finder learns by running the model: values at small lengths, masks at long ones.

Every candidate's scale factors, mask inputs and operand shapes are requested first, then
computed in one onnxruntime run per size in SIZES. A mask whose constants could encode a
window wider than those sizes is also computed at a length beyond it, from its own
ancestry alone (`at_length`, see `evaluate.Ancestry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from attnrewrite import evaluate as ev
from attnrewrite.patterns import masks

SIZES = (6, 9)  # sequence lengths at which scales and masks are evaluated
BATCHES = (2, 1)


@dataclass(frozen=True)
class LongSample:
    """Values at one long length (or why they could not be had: `reason`)."""

    length: int = 0
    values: tuple[np.ndarray, ...] = ()
    reason: str = ""


@dataclass
class Evaluations:
    """Values of main-graph tensors at each size in SIZES (None where not evaluable)."""

    model: ir.Model
    wanted: list[ir.Value] = field(default_factory=list)
    results: list[dict[int, np.ndarray]] = field(default_factory=list)
    batch: int = BATCHES[0]
    error: str = ""
    long: dict[tuple[int, ...], LongSample | None] = field(default_factory=dict)

    def can_evaluate(self, value: ir.Value) -> bool:
        if ev.constant_of(value) is not None:
            return True
        owner = value.producer().graph if value.producer() is not None else value.graph
        return owner is self.model.graph

    def want(self, value: ir.Value) -> None:
        if ev.constant_of(value) is None and self.can_evaluate(value):
            self.wanted.append(value)

    def want_mask(self, values: Sequence[ir.Value]) -> None:
        """Request `values` and what `at_length` will need: the shapes their ancestry reads."""
        for value in values:
            self.want(value)
        found = ev.ancestry(values, self.model.graph)
        for cut in found.cuts if found is not None else ():
            self.want(cut)

    def run(self) -> None:
        unique = list({id(v): v for v in self.wanted}.values())
        if not unique:
            return
        for batch in BATCHES:  # some exported graphs only run at batch 1
            try:
                runs = [ev.evaluate(self.model, unique, seq_len, batch) for seq_len in SIZES]
            except Exception as err:  # onnxruntime raises many types; all mean "not evaluable"
                self.error = str(err).splitlines()[0]
                continue
            self.results = [dict(zip(map(id, unique), r, strict=True)) for r in runs]
            self.batch = batch
            return

    def values(self, value: ir.Value) -> list[np.ndarray] | None:
        """The value at each size, or None."""
        const = ev.constant_of(value)
        if const is not None:
            return [const] * len(SIZES)
        if not self.results or id(value) not in self.results[0]:
            return None
        return [r[id(value)] for r in self.results]

    def shape_at(self, value: ir.Value, length: int) -> tuple[int, ...] | None:
        """The value's shape at `length`, extrapolated from its shapes at SIZES."""
        evaluated = self.values(value)
        if evaluated is None:
            return None
        shapes = [np.array(a.shape, dtype=np.int64) for a in evaluated]
        shape = ev.extrapolate(shapes, SIZES, length)
        return None if shape is None else tuple(int(d) for d in shape)

    def at_length(self, values: Sequence[ir.Value]) -> LongSample | None:
        """The mask `values` at a length beyond any window their constants could encode;
        None when they encode none wider than SIZES (the small sizes then tell it all)."""
        key = tuple(id(v) for v in values)
        if key not in self.long:
            self.long[key] = self._at_length(values)
        return self.long[key]

    def _at_length(self, values: Sequence[ir.Value]) -> LongSample | None:
        computed = [v for v in values if ev.constant_of(v) is None]
        found = ev.ancestry(computed, self.model.graph)
        if found is None:
            return LongSample(reason="the mask is computed where it cannot be evaluated alone")
        length = masks.probe_length(
            [*found.constants, *(c for v in values if (c := ev.constant_of(v)) is not None)],
            max(SIZES),
        )
        if length is None:
            return None
        if length > masks.MAX_PROBE:
            return LongSample(reason=f"a window it may hold needs a length of {length} to see")
        cuts = {}
        for cut in found.cuts:
            evaluated = self.values(cut)
            shape = None if evaluated is None else ev.extrapolate(evaluated, SIZES, length)
            if shape is None:
                return LongSample(reason=f"'{cut.name}' does not grow linearly with the length")
            cuts[id(cut)] = shape
        try:
            results = ev.evaluate_ancestry(self.model, found, computed, cuts, length, self.batch)
        except Exception as err:  # onnxruntime raises many types; all mean "not evaluable"
            reason = str(err).splitlines()[0]
            return LongSample(reason=f"the mask could not be run at length {length}: {reason}")
        by_id = dict(zip(map(id, computed), results, strict=True))
        return LongSample(
            length, tuple(by_id[id(v)] if id(v) in by_id else ev.constant_of(v) for v in values)
        )
