"""Small graph queries the pattern rules share."""

from __future__ import annotations

from collections.abc import Iterator

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


def all_graphs(model: ir.Model) -> Iterator[tuple[str, ir.Graph | ir.Function]]:
    """The main graph, every control-flow body inside it, and every model-local function."""
    yield "main", model.graph
    yield from _subgraphs(model.graph, "main")
    for function in model.functions.values():
        name = f"function {function.domain}::{function.name}"
        yield name, function
        yield from _subgraphs(function, name)


def _subgraphs(graph: ir.Graph | ir.Function, path: str) -> Iterator[tuple[str, ir.Graph]]:
    for node in graph:
        for attr in node.attributes.values():
            bodies = []
            if attr.type == ir.AttributeType.GRAPH:
                bodies = [(attr.name, attr.value)]
            elif attr.type == ir.AttributeType.GRAPHS:
                bodies = [(f"{attr.name}[{i}]", g) for i, g in enumerate(attr.value)]
            for label, body in bodies:
                sub_path = f"{path}/{node.op_type}:{node.name}.{label}"
                yield sub_path, body
                yield from _subgraphs(body, sub_path)


def numpy_dtype(value: ir.Value) -> np.dtype:
    return np.dtype(value.dtype.numpy()) if value.dtype is not None else np.dtype(np.float32)
