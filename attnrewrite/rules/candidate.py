"""A softmax attention found by structure, in either graph: the variant tags naming its form.

Both finders walk the same way (rules.scores up to Q.K^T, rules.probs down to P.V,
rules.operands for q, k, v) and name what they walked through here, once.
"""

from __future__ import annotations

from collections.abc import Sequence

from attnrewrite.rules.operands import Factor, Operands
from attnrewrite.rules.probs import ProbChain
from attnrewrite.rules.scores import RESHAPES
from attnrewrite.rules.variants import Variant
from attnrewrite.rules.view import GraphView, rank


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
    }
    form = Variant.SOFTMAX_DECOMPOSED if decomposed else Variant.SOFTMAX
    return (form, operands.key.tag, *(tag for tag, found in tagged.items() if found))
