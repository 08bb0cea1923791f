"""Walk down from a softmax's output to the MatMul with the values, in either graph.

    p -> [Cast | Identity | Dropout | Where(IsNaN(p), 0, p) | reshape]* -> MatMul(., v)

Dropout is the identity at inference (the FX finder refuses one in training mode); the
guard is dynamo's for fully masked rows. Reshapes must undo those of the scores: the ONNX
finder checks the probabilities reach .V in the scores' shape; the FX finder does not follow
them (`through`). Anything else reading the probabilities is refused, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attnrewrite.rules.pattern import Pat, Rule, RuleSet
from attnrewrite.rules.scores import RESHAPES
from attnrewrite.rules.view import GraphView

PASS_THROUGH = frozenset({"Cast", "Identity", "Dropout"}) | RESHAPES
MAX_STEPS = 8


@dataclass(frozen=True)
class ProbChain:
    """The P.V MatMul's output, the values between the softmax and it (data-flow order), and
    whether a NaN guard is among them."""

    pv: object
    values: tuple[object, ...]
    nan_guard: bool


Guard = tuple[object, object]  # the IsNaN and the Where


def _guard(
    view: GraphView, guarded: object, isnan: object, fill: object, p: object
) -> Guard | None:
    # Where(IsNaN(p), 0, p) -> p   (when the Where alone reads the IsNaN)
    return (isnan, guarded) if len(view.readers(isnan)) == 1 else None


P = Pat.var("p")
NAN_GUARD = RuleSet(
    [  # Where(IsNaN(p), 0, p) -> p
        Rule(
            Pat("Where", Pat("IsNaN", P, name="isnan"), Pat.var("fill"), P, name="guarded"), _guard
        )
    ]
)


def walk_probs(
    view: GraphView, probs: object, through: frozenset[str] = PASS_THROUGH
) -> ProbChain | str:
    """The path from the softmax output `probs` to `p @ v` through the ops in `through`, or the
    reason there is none."""
    current = probs
    values: list[object] = []
    nan_guard = False
    for _ in range(MAX_STEPS):
        readers = view.readers(current)
        guard = _nan_guard(view, current, readers)
        if guard is not None:
            values.extend(guard)
            nan_guard = True
            current = guard[-1]
            continue
        if current is probs and view.is_output(current) and not readers:
            return "softmax output is a model output and feeds no MatMul: not attention"
        gradients = [op for op in map(view.op_type, readers) if op and _is_gradient(op)]
        if gradients:
            return (
                f"a training graph: {gradients[0]} reads the attention probabilities "
                "(only inference graphs are rewritten)"
            )
        if view.is_output(current) or len(readers) != 1:
            others = ", ".join(f"'{view.node_name(r)}'" for r in readers) or "none"
            where = "a graph output" if view.is_output(current) else f"nodes {others}"
            return f"attention probabilities '{view.name(current)}' have another consumer ({where})"
        (reader,) = readers
        if view.op(reader) == "MatMul":
            if view.inputs(reader)[0] is not current:
                return f"softmax output is the right operand of MatMul '{view.node_name(reader)}'"
            return ProbChain(reader, tuple(values), nan_guard)
        if view.op(reader) not in through or view.inputs(reader)[0] is not current:
            return (
                f"softmax output goes to {view.label(reader)}, not to a MatMul with values: "
                "not attention"
            )
        if view.op(reader) == "Dropout" and view.more_outputs_read(reader):
            return f"dropout mask of '{view.node_name(reader)}' is used elsewhere"
        values.append(reader)
        current = reader
    return "no MatMul with values within reach of the Softmax output"


def _is_gradient(op_type: str) -> bool:
    """A training graph's gradient op: SoftmaxGrad, SoftmaxGrad_13, DropoutGrad, ..."""
    return op_type.split("_")[0].endswith("Grad")


def _nan_guard(view: GraphView, value: object, readers: Sequence[object]) -> Guard | None:
    """(IsNaN, Where) when the only readers of `value` compute Where(IsNaN(value), 0, value);
    an IsNaN among the readers reads `value`, so the rule's p is `value`."""
    if len(readers) != 2 or view.is_output(value):
        return None
    where = next((r for r in readers if view.op(r) == "Where"), None)
    found = NAN_GUARD.apply(view, where)
    return found if found is not None and any(r is found[0] for r in readers) else None
