"""Small graph queries the pattern rules share."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

DEFAULT_DOMAINS = ("", "ai.onnx")


def is_op(node: ir.Node | None, *op_types: str, domain: str = "") -> bool:
    if node is None or node.op_type not in op_types:
        return False
    return node.domain in DEFAULT_DOMAINS if domain == "" else node.domain == domain


def consumers(value: ir.Value) -> list[ir.Node]:
    return list(dict.fromkeys(use.node for use in value.uses()))


def int_attr(node: ir.Node, name: str, default: int | None = None) -> int | None:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.value)


def float_attr(node: ir.Node, name: str, default: float | None = None) -> float | None:
    attr = node.attributes.get(name)
    return default if attr is None else float(attr.value)


def ints_attr(node: ir.Node, name: str) -> tuple[int, ...] | None:
    attr = node.attributes.get(name)
    return None if attr is None else tuple(int(x) for x in attr.value)


def rank_of(value: ir.Value) -> int | None:
    return None if value.shape is None else len(value.shape)


def static_dim(value: ir.Value, axis: int) -> int | str | None:
    """A dimension of `value`: an int when static, its symbol when named, else None."""
    if value.shape is None or not -len(value.shape) <= axis < len(value.shape):
        return None
    dim = value.shape[axis]
    if isinstance(dim, int):
        return dim
    return str(dim.value) if dim.value is not None else None


def numpy_dtype(value: ir.Value) -> np.dtype:
    return np.dtype(value.dtype.numpy()) if value.dtype is not None else np.dtype(np.float32)


def element_type(q: ir.Value, v: ir.Value) -> ir.DataType:
    """The attention's element type: q's, else v's, else float."""
    return q.dtype or v.dtype or ir.DataType.FLOAT


def one_query_row(bias: ir.Value) -> bool:
    """Whether the bias's query axis is statically 1 ([B, 1, 1, Skv]): it only weighs keys."""
    return bias.shape is not None and len(bias.shape) >= 2 and bias.shape[-2] == 1
