"""A softmax attention found by structure, in either graph: the record both finders produce,
and the variant tags naming its form.

Both finders walk the same way (rules.scores up to Q.K^T, rules.probs down to P.V,
rules.operands for q, k, v) and name what they walked through here, once. What is left to
settle (the scale's value, the mask) each settles its own way: the ONNX finder by running
the model at a few lengths (patterns.finder), the FX finder from constants and the example
inputs (torch.find, torch.rewrite).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from attnrewrite.rules.operands import Factor, Layout, Operands
from attnrewrite.rules.probs import ProbChain
from attnrewrite.rules.scores import RESHAPES
from attnrewrite.rules.variants import Variant
from attnrewrite.rules.view import GraphView, rank

ValueT = TypeVar("ValueT")
NodeT = TypeVar("NodeT")


@dataclass(frozen=True, kw_only=True)
class Candidate(Generic[ValueT, NodeT]):
    """A structural match, in its graph's values and nodes: what the rewrite feeds the new
    block (q, k, v), what the block replaces (`output`, `nodes`) and how it was written.
    Each finder's candidate adds what it still has to settle."""

    anchor: NodeT  # the softmax (the Div of one written out, a fused op)
    q: ValueT
    k: ValueT  # laid out as `k_layout` says (bhds: K stored transposed)
    v: ValueT
    k_layout: Layout
    output: ValueT  # the value the block takes over
    nodes: tuple[NodeT, ...]  # the nodes it covers
    variant: tuple[str, ...]
    kv_repeat: bool  # k, v are the sources of a grouped-query repeat per query head
    float32_softmax: bool


def structure_variant(
    view: GraphView,
    *,
    decomposed: bool,
    qk: object,
    scores: Sequence[object],
    probs: ProbChain,
    operands: Operands,
    upstream: Sequence[Factor],
    float32: bool,
) -> tuple[str, ...]:
    """The tags of a matmul -> steps -> softmax -> steps -> matmul block: the softmax's form,
    K's, and each optional part found on the way (`scores`: the values the steps between
    Q.K^T and the softmax compute; `float32`: the softmax runs in float32)."""
    tagged = {
        Variant.KV_REPEAT: operands.kv_repeat,
        Variant.SCALE_ON_Q: bool(operands.q_factors),
        Variant.SCALE_UPSTREAM_Q: bool(upstream),
        Variant.SCALE_ON_K: bool(operands.key.factors),
        Variant.FLOAT32_SOFTMAX: float32,
        Variant.NAN_GUARD: probs.nan_guard,
        Variant.DROPOUT: any(view.op(value) == "Dropout" for value in probs.values),
        Variant.BATCHED_3D: rank(view, qk) == 3,
        Variant.SCORES_RESHAPED: any(
            view.op(value) in RESHAPES for value in (*scores, *probs.values)
        ),
        Variant.SOFTCAP: any(view.op(value) == "Tanh" for value in scores),
    }
    form = Variant.SOFTMAX_DECOMPOSED if decomposed else Variant.SOFTMAX
    return (form, operands.key.tag, *(tag for tag, found in tagged.items() if found))
