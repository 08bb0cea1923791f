"""Evaluate values of a model at chosen small sizes, to learn what a subgraph computes.

Scales computed at run time (Shape -> Cast -> Sqrt -> Div) and masks built from shapes or
from an attention-mask input are classified by running them, not by reading node names:
the main graph is run in onnxruntime with the wanted values as outputs, every symbolic
dimension bound to a small size and every data input filled with ones (a mask of ones
means no padding).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

SHAPE_OPS = frozenset({"Shape", "Size"})


def is_shape_only(value: ir.Value, graph: ir.Graph) -> bool:
    """True when `value` depends on graph inputs only through their shapes."""
    return not data_inputs(value, graph)


def data_inputs(value: ir.Value, graph: ir.Graph) -> set[str]:
    """Names of the graph inputs whose contents (not just shapes) `value` depends on."""
    found: set[str] = set()
    seen: set[int] = set()
    stack = [value]
    graph_inputs = {id(v) for v in graph.inputs}
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if id(current) in graph_inputs:
            found.add(current.name or "")
            continue
        producer = current.producer()
        if producer is None:
            if current.const_value is None and current.graph is not graph:
                found.add(current.name or "<outer scope>")
            continue
        if producer.op_type in SHAPE_OPS and producer.domain in ("", "ai.onnx"):
            continue
        stack.extend(v for v in producer.inputs if v is not None)
        for attr in producer.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                found.add("<subgraph>")
    return found


def constant_of(value: ir.Value) -> np.ndarray | None:
    """The value's contents when it is an initializer or a Constant output, else None."""
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def bind_dim(dim: object, sizes: Mapping[str, int], default: int) -> int:
    if isinstance(dim, int):
        return dim
    name = str(dim) if dim is not None else ""
    if name in sizes:
        return sizes[name]
    if name and re.fullmatch(r"[\w\s+\-*()]+", name):
        expr = re.sub(r"[A-Za-z_]\w*", lambda m: str(sizes.get(m.group(0), default)), name)
        try:
            return int(eval(expr, {"__builtins__": {}}))  # arithmetic on integers only
        except (SyntaxError, NameError, ZeroDivisionError):
            return default
    return default


def ones_feeds(graph: ir.Graph, sizes: Mapping[str, int], default: int) -> dict[str, np.ndarray]:
    """Inputs of ones at the given sizes: token id 1, mask 'keep', unit floats."""
    feeds = {}
    for value in graph.inputs:
        if value.is_initializer():
            continue
        shape = [] if value.shape is None else [bind_dim(d, sizes, default) for d in value.shape]
        dtype = value.dtype.numpy() if value.dtype is not None else np.float32
        feeds[value.name or ""] = np.ones(shape, dtype=dtype)
    return feeds


def evaluate(
    model: ir.Model,
    values: Sequence[ir.Value],
    sizes: Mapping[str, int],
    default: int = 5,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Run the main graph and return `values` (all of the main graph) at the given sizes."""
    if not values:
        return []
    proto = ir.serde.serialize_model(model)
    names = unique_names(values)
    del proto.graph.output[:]
    for name in names:
        proto.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    run_feeds = dict(feeds) if feeds is not None else ones_feeds(model.graph, sizes, default)
    wanted = {i.name for i in session.get_inputs()}
    outputs = session.run(names, {k: v for k, v in run_feeds.items() if k in wanted})
    by_name = dict(zip(names, outputs, strict=True))
    return [by_name[v.name or ""] for v in values]


def unique_names(values: Iterable[ir.Value]) -> list[str]:
    return list(dict.fromkeys(v.name or "" for v in values))
