"""Rules that recover canonical q, k, v from the operands of the two attention MatMuls.

Both finders call these through their graph view (see `view`), so each spelling is
recognised once, in ONNX and FX graphs alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from attnrewrite.rules.pattern import Pat, Rule, RuleSet
from attnrewrite.rules.variants import Variant
from attnrewrite.rules.view import GraphView, agrees, is_scalar, rank

X, C = Pat.var("x"), Pat.var("c")


class Layout(StrEnum):
    """How an operand value is laid out; the rewrite inserts the adapter to [..., H, S, d]."""

    BHSD = "bhsd"  # [..., heads, seq, dim]: canonical, used as is
    BHDS = "bhds"  # [..., heads, dim, seq]: K stored transposed
    BSHD = "bshd"  # [batch, seq, heads, dim]
    BS_HD = "bs(hd)"  # [batch, seq, heads * dim]: heads merged into the hidden axis


# --- scale ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Factor:
    """A scalar multiplying the scores: `value`, or its reciprocal when `divide`; `product`
    is the value the scaling computed."""

    value: object
    divide: bool
    product: object


def _divided(view: GraphView, out: object, x: object, c: object) -> tuple[object, Factor] | None:
    return (x, Factor(c, True, out)) if is_scalar(view, c) else None


def _times(view: GraphView, out: object, x: object, c: object) -> tuple[object, Factor] | None:
    return (x, Factor(c, False, out)) if is_scalar(view, c) else None


def _times_left(view: GraphView, out: object, x: object, c: object) -> tuple[object, Factor] | None:
    return (c, Factor(x, False, out)) if is_scalar(view, x) else None


SCALE = RuleSet(
    [
        Rule(Pat("Div", X, C, name="out"), _divided),  # x / c -> x, factor 1/c
        Rule(Pat("Mul", X, C, name="out"), _times),  # x * c -> x, factor c
        Rule(Pat("Mul", X, C, name="out"), _times_left),  # c * x -> x, factor c
    ]
)


def strip_scale(view: GraphView, value: object) -> tuple[object, list[Factor]]:
    """Peel scalar Mul/Div off `value`: q * c, c * q, q / c -> q and the factors, outermost
    first. The products are not removed from the graph while something else reads them."""
    factors: list[Factor] = []
    while (found := SCALE.apply(view, value)) is not None:
        value, factor = found
        factors.append(factor)
    return value, factors


def upstream_scale(view: GraphView, value: object) -> list[Factor]:
    """Scalars applied before layout-only ops, q = Transpose(Reshape(x * c)) (OPT): already
    in q, so reported, not moved."""
    current = value
    for _ in range(3):
        if view.op(current) not in ("Reshape", "Transpose"):
            return []
        current = view.inputs(current)[0]
        _, factors = strip_scale(view, current)
        if factors:
            return factors
    return []


# --- K^T ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """Canonical K from the right operand of Q.K^T: the value, its layout, the scale found on
    the way, a variant tag, and the values between it and the operand (outermost first)."""

    value: object
    layout: Layout
    factors: tuple[Factor, ...]
    tag: str
    through: tuple[object, ...]


Transposed = tuple[object, tuple[int, ...], tuple[object, ...]]  # source, perm, values passed


def _transposed(view: GraphView, kt: object, x: object) -> Transposed | None:
    # Transpose(x, perm) -> x, perm
    perm = view.attribute(kt, "perm")
    return None if perm is None else (x, perm, (kt,))


def _twice_transposed(view: GraphView, kt: object, inner: object, x: object) -> Transposed | None:
    # Transpose(Transpose(x, p), q) -> x, p[q]   (when the outer alone swaps something else)
    outer, first = view.attribute(kt, "perm"), view.attribute(inner, "perm")
    if outer is None or first is None or len(first) != len(outer) or _swaps_last_two(outer):
        return None
    return x, tuple(first[p] for p in outer), (kt, inner)


TRANSPOSE = RuleSet(
    [
        # Transpose(Transpose(x, p), q) -> x, p[q]
        Rule(Pat("Transpose", Pat("Transpose", X, name="inner"), name="kt"), _twice_transposed),
        Rule(Pat("Transpose", X, name="kt"), _transposed),  # Transpose(x, perm) -> x, perm
    ]
)


def _swaps_last_two(perm: tuple[int, ...]) -> bool:
    n = len(perm)
    return perm == (*range(n - 2), n - 1, n - 2)


def _merged_heads_transposed(
    view: GraphView, kt: object, middle: object, inner: object, k: object
) -> tuple[object, tuple[object, ...]] | None:
    # Reshape(Transpose(Reshape(k, [B*H, S, d]), [0, 2, 1]), [B, H, d, S]) -> k
    if view.attribute(middle, "perm") != (0, 2, 1) or rank(view, k) != 4 or rank(view, kt) != 4:
        return None
    k_shape, kt_shape = view.shape(k), view.shape(kt)
    assert k_shape is not None and kt_shape is not None
    expected = [k_shape[i] for i in (0, 1, 3, 2)]
    return (k, (kt, middle, inner)) if None not in expected and expected == list(kt_shape) else None


MERGED_HEADS = RuleSet(
    [
        Rule(  # Reshape(Transpose(Reshape(k, 3-D), [0, 2, 1]), 4-D) -> k
            Pat(
                "Reshape",
                Pat("Transpose", Pat("Reshape", Pat.var("k"), name="inner"), name="middle"),
                name="kt",
            ),
            _merged_heads_transposed,
        )
    ]
)


ALL_LAYOUTS = (Layout.BHSD, Layout.BHDS, Layout.BSHD)


def key_operand(view: GraphView, operand: object, layouts: tuple[Layout, ...] = ALL_LAYOUTS) -> Key:
    """K from the right operand of Q.K^T:

    Transpose(k, perm=[.., -1, -2])                     -> k, bhsd
    Transpose(x, perm=[0, 2, 3, 1])                     -> x, bshd
    Transpose(Transpose(x)) composing to one of those   -> x
    Reshape(Transpose(Reshape(k, 3-D)), 4-D)            -> k, bhsd (shapes agree)
    anything else (K stored transposed)                 -> k^T, bhds
    with scalar Mul/Div on k or on k^T                  -> factors

    A layout the caller cannot take (not in `layouts`) is read as K stored transposed.
    """
    key = _key(view, operand)
    if key.layout in layouts:
        return key
    kt, factors = strip_scale(view, operand)
    through = tuple(f.product for f in factors)
    return Key(kt, Layout.BHDS, tuple(factors), Variant.K_STORED_TRANSPOSED, through)


def _key(view: GraphView, operand: object) -> Key:
    kt, factors = strip_scale(view, operand)
    through = tuple(f.product for f in factors)
    found = TRANSPOSE.apply(view, kt)
    if found is not None:
        source, perm, passed = found
        as_key = (*perm[:-2], perm[-1], perm[-2])  # K = transpose(source, as_key)
        if as_key == tuple(range(len(perm))):
            key, more = strip_scale(view, source)
            seen = (*through, *passed, *(f.product for f in more))
            return Key(key, Layout.BHSD, (*factors, *more), Variant.K_TRANSPOSE, seen)
        if as_key == (0, 2, 1, 3):
            seen = (*through, *passed)
            return Key(source, Layout.BSHD, tuple(factors), Variant.K_TRANSPOSE_BSHD, seen)
    merged = MERGED_HEADS.apply(view, kt)
    if merged is not None:
        (source, passed), tag = merged, Variant.K_RESHAPE_TRANSPOSE_RESHAPE
        key, more = strip_scale(view, source)
        seen = (*through, *passed, *(f.product for f in more))
        return Key(key, Layout.BHSD, (*factors, *more), tag, seen)
    return Key(kt, Layout.BHDS, tuple(factors), Variant.K_STORED_TRANSPOSED, through)


# --- grouped-query K, V ---------------------------------------------------------------------


@dataclass(frozen=True)
class Repeat:
    """K or V repeated per query head: the un-repeated `source` and the group (None when the
    shapes do not show it)."""

    source: object
    group: int | None


def _repeat_kv(
    view: GraphView, out: object, expand: object, unsqueeze: object, x: object
) -> Repeat | None:
    # Reshape(Expand(Unsqueeze(x, 2), [B, Hkv, g, S, d]), [B, Hkv*g, S, d]) -> x, g
    if view.attribute(unsqueeze, "axes") not in ((2,), (-3,)) or rank(view, x) not in (4, None):
        return None
    expanded = view.shape(expand)
    if expanded is None:
        return Repeat(x, None)
    if len(expanded) != 5:
        return None
    b, hkv, g, s, d = expanded
    heads = hkv * g if isinstance(hkv, int) and isinstance(g, int) else None
    if not agrees(view.shape(out), (b, heads, s, d)) or not agrees(view.shape(x), (b, hkv, s, d)):
        return None
    return Repeat(x, g if isinstance(g, int) else None)


def _repeat_interleave(view: GraphView, out: object, x: object) -> Repeat | None:
    # RepeatInterleave(x, g, dim=1) -> x, g     (torch's repeat_interleave; no ONNX op)
    dim, repeats = view.attribute(out, "dim"), view.attribute(out, "repeats")
    rank_out = rank(view, out)
    if dim is None or repeats is None or rank_out is None or dim[0] % rank_out != 1:
        return None
    return Repeat(x, repeats[0])


REPEAT_KV = RuleSet(
    [
        Rule(  # Reshape(Expand(Unsqueeze(x, 2))) -> x   (transformers' repeat_kv)
            Pat(
                "Reshape",
                Pat("Expand", Pat("Unsqueeze", X, name="unsqueeze"), name="expand"),
                name="out",
            ),
            _repeat_kv,
        ),
        Rule(Pat("RepeatInterleave", X, name="out"), _repeat_interleave),  # -> x
    ]
)


def ungroup_kv(view: GraphView, k: object, v: object) -> tuple[object, object] | None:
    """The un-repeated K and V when both are repeated per query head by one group (> 1 where
    the shapes show it), else None."""
    rk, rv = REPEAT_KV.apply(view, k), REPEAT_KV.apply(view, v)
    if rk is None or rv is None:
        return None
    groups = {g for g in (rk.group, rv.group) if g is not None}
    if len(groups) > 1 or groups & {1}:
        return None
    return rk.source, rv.source


def constant_scalar(view: GraphView, value: object) -> float | None:
    """A factor's number when it is known without running the graph."""
    const = view.constant(value)
    return None if const is None or const.size != 1 else float(np.ravel(const)[0])


# --- all three ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operands:
    """q, k, v of softmax(q @ kt) @ v, recovered from the two MatMuls' operands: q with its
    scale factors, K (layout, factors, what lies between), v, and whether k and v were
    repeated per query head (then `key.value` and `v` are the un-repeated ones)."""

    q: object
    q_factors: tuple[Factor, ...]
    key: Key
    v: object
    kv_repeat: bool


def attention_operands(
    view: GraphView, q: object, kt: object, v: object, layouts: tuple[Layout, ...] = ALL_LAYOUTS
) -> Operands:
    """The rules above on `q @ kt` and `p @ v`: scale off q, K from kt, and K, V un-repeated
    when both are a grouped-query repeat of [..., heads, seq, dim] tensors."""
    q_value, q_factors = strip_scale(view, q)
    key = key_operand(view, kt, layouts)
    ungrouped = ungroup_kv(view, key.value, v) if key.layout == Layout.BHSD else None
    if ungrouped is not None:
        key = replace(key, value=ungrouped[0])
        v = ungrouped[1]
    return Operands(q_value, tuple(q_factors), key, v, ungrouped is not None)
