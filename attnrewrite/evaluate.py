"""Evaluate values of a model at chosen small sizes, to learn what a subgraph computes.

Scales computed at run time (Shape -> Cast -> Sqrt -> Div) and masks built from shapes or
from an attention-mask input are classified by running them, not by reading node names:
the main graph is run in onnxruntime with the wanted values as outputs, every symbolic
dimension bound to a small size (see `inputs`) and every data input filled with ones (a mask of ones
means no padding).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from attnrewrite.inputs import dimension_size

SHAPE_OPS = frozenset({"Shape", "Size"})


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


def ones_feeds(graph: ir.Graph, seq_len: int, batch: int) -> dict[str, np.ndarray]:
    """Inputs of ones: token id 1, mask 'keep', unit floats; sizes as `inputs` chooses them."""
    feeds = {}
    for value in graph.inputs:
        if value.is_initializer():
            continue
        dims = [] if value.shape is None else list(value.shape)
        shape = [
            dimension_size(d if isinstance(d, int) else d.value, axis, seq_len, batch)
            for axis, d in enumerate(dims)
        ]
        dtype = value.dtype.numpy() if value.dtype is not None else np.float32
        feeds[value.name or ""] = np.ones(shape, dtype=dtype)
    return feeds


def evaluate(
    model: ir.Model, values: Sequence[ir.Value], seq_len: int, batch: int
) -> list[np.ndarray]:
    """Run the main graph on inputs of ones and return `values` (all of the main graph)."""
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
    feeds = ones_feeds(model.graph, seq_len, batch)
    wanted = {i.name for i in session.get_inputs()}
    outputs = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    by_name = dict(zip(names, outputs, strict=True))
    return [by_name[v.name or ""] for v in values]


def unique_names(values: Iterable[ir.Value]) -> list[str]:
    return list(dict.fromkeys(v.name or "" for v in values))
