"""Rules that recover canonical q, k, v from the operands of the two attention MatMuls.

q side:  Mul(q, c) | Div(q, c)                         -> q, factor c | 1/c
k side:  Transpose(k, perm=[..,-1,-2])                 -> k            (bhsd)
         Transpose(x, perm=[0,2,3,1])                  -> x            (bshd)
         Transpose(Transpose(x)) composing to the above -> x
         Reshape(Transpose(Reshape(k, 3-D)), 4-D)      -> k            (shapes agree)
         anything else (K stored transposed)           -> k^T          (bhds)
         scalar Mul/Div on k or on k^T                  -> factor
k, v:    Reshape(Expand(Unsqueeze(x, 2)))  (repeat_kv)   -> x, kv heads of x
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from attnrewrite.evaluate import constant_of
from attnrewrite.match import Layout, Operand
from attnrewrite.patterns.graph_utils import (
    ints_attr,
    is_scalar_shaped,
    producer_op,
    rank_of,
    static_dim,
)


@dataclass(frozen=True)
class Factor:
    """A scalar multiplying the scores: `value`, or its reciprocal when `divide`."""

    value: ir.Value
    divide: bool
    node: ir.Node


def is_scalar(value: ir.Value) -> bool:
    if is_scalar_shaped(value):
        return True
    const = constant_of(value)
    return const is not None and const.size == 1


def strip_scale(value: ir.Value) -> tuple[ir.Value, list[Factor]]:
    """Peel scalar Mul/Div nodes off `value`: q * c, c * q, q / c."""
    factors: list[Factor] = []
    while True:
        node = producer_op(value, "Mul", "Div")
        if node is None or node.inputs[0] is None or node.inputs[1] is None:
            return value, factors
        a, b = node.inputs[0], node.inputs[1]
        if node.op_type == "Div" and is_scalar(b):
            factors.append(Factor(b, True, node))
            value = a
        elif node.op_type == "Mul" and is_scalar(b):
            factors.append(Factor(b, False, node))
            value = a
        elif node.op_type == "Mul" and is_scalar(a):
            factors.append(Factor(a, False, node))
            value = b
        else:
            return value, factors


def upstream_scale(value: ir.Value) -> list[Factor]:
    """Scalars applied before layout-only ops, q = Transpose(Reshape(x * c)) (OPT): already in
    q, so reported, not moved."""
    current = value
    for _ in range(3):
        node = producer_op(current, "Reshape", "Transpose")
        if node is None:
            return []
        current = node.inputs[0]
        _, factors = strip_scale(current)
        if factors:
            return factors
    return []


def key_operand(kt: ir.Value) -> tuple[Operand, list[Factor], str]:
    """Canonical K from the right operand of Q.K^T, with scale factors and a variant tag."""
    kt, factors = strip_scale(kt)
    source, perm = _transpose_source(kt)
    if source is not None and perm is not None:
        rank = len(perm)
        as_key = (*perm[:-2], perm[-1], perm[-2])  # K = transpose(source, as_key)
        if as_key == tuple(range(rank)):
            key, more = strip_scale(source)
            return Operand(key, Layout.BHSD), factors + more, "k:transpose"
        if rank == 4 and as_key == (0, 2, 1, 3):
            return Operand(source, Layout.BSHD), factors, "k:transpose-bshd"
    merged = _reshape_transpose_reshape(kt)
    if merged is not None:
        key, more = strip_scale(merged)
        return Operand(key, Layout.BHSD), factors + more, "k:reshape-transpose-reshape"
    return Operand(kt, Layout.BHDS), factors, "k:stored-transposed"


def _transpose_source(kt: ir.Value) -> tuple[ir.Value | None, tuple[int, ...] | None]:
    """(x, perm) with kt = transpose(x, perm), composing consecutive Transposes."""
    node = producer_op(kt, "Transpose")
    if node is None:
        return None, None
    perm = ints_attr(node, "perm")
    rank = rank_of(node.inputs[0]) if perm is None else len(perm)
    if rank is None:
        return None, None
    perm = perm if perm is not None else tuple(reversed(range(rank)))
    source = node.inputs[0]
    swaps_last_two = perm == (*range(rank - 2), rank - 1, rank - 2)
    inner = producer_op(source, "Transpose")
    inner_perm = ints_attr(inner, "perm") if inner is not None else None
    if not swaps_last_two and inner is not None and inner_perm and len(inner_perm) == rank:
        perm = tuple(inner_perm[p] for p in perm)
        source = inner.inputs[0]
    return source, perm


def _reshape_transpose_reshape(kt: ir.Value) -> ir.Value | None:
    """k when kt = Reshape(Transpose(Reshape(k, [-1, S, d]), [0, 2, 1]), [B, H, d, S])."""
    outer = producer_op(kt, "Reshape")
    middle = producer_op(outer.inputs[0], "Transpose") if outer is not None else None
    inner = producer_op(middle.inputs[0], "Reshape") if middle is not None else None
    if inner is None or middle is None or ints_attr(middle, "perm") != (0, 2, 1):
        return None
    key = inner.inputs[0]
    if rank_of(key) != 4 or rank_of(kt) != 4:
        return None
    expected = [static_dim(key, i) for i in (0, 1, 3, 2)]
    actual = [static_dim(kt, i) for i in range(4)]
    if None in expected or expected != actual:
        return None
    return key


def ungroup_kv(value: ir.Value) -> tuple[ir.Value, str] | None:
    """x when value = Reshape(Expand(Unsqueeze(x, 2), [B, Hkv, g, S, d]), [B, Hkv*g, S, d])."""
    reshape = producer_op(value, "Reshape")
    expand = producer_op(reshape.inputs[0], "Expand") if reshape is not None else None
    unsqueeze = producer_op(expand.inputs[0], "Unsqueeze") if expand is not None else None
    if unsqueeze is None:
        return None
    source = unsqueeze.inputs[0]
    axes_value = unsqueeze.inputs[1] if len(unsqueeze.inputs) > 1 else None
    axes = constant_of(axes_value) if axes_value is not None else None
    axes_tuple = (
        tuple(int(a) for a in np.ravel(axes)) if axes is not None else ints_attr(unsqueeze, "axes")
    )
    if axes_tuple not in ((2,), (-3,)) or rank_of(source) not in (4, None):
        return None
    return source, "kv:repeat"
