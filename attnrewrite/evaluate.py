"""Evaluate values of a model at chosen small sizes, to learn what a subgraph computes.

Scales computed at run time (Shape -> Cast -> Sqrt -> Div) and masks built from shapes or
from an attention-mask input are classified by running them, not by reading node names:
the main graph is run in onnxruntime with the wanted values as outputs, every symbolic
dimension bound to a small size (see `inputs`) and every data input filled with ones (a mask of ones
means no padding).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

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
        shape = [dimension_size(d, axis, seq_len, batch) for axis, d in enumerate(dims)]
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
    session = _session(proto)
    feeds = ones_feeds(model.graph, seq_len, batch)
    wanted = {i.name for i in session.get_inputs()}
    outputs = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    by_name = dict(zip(names, outputs, strict=True))
    return [by_name[v.name or ""] for v in values]


def unique_names(values: Iterable[ir.Value]) -> list[str]:
    return list(dict.fromkeys(v.name or "" for v in values))


@dataclass(frozen=True)
class Ancestry:
    """The main-graph nodes that compute some values, cut at Shape nodes.

    Above a cut only shapes matter, so given the cut values at a length (extrapolated from
    smaller ones, see `extrapolate`) the values can be computed there without running the
    rest of the model: a mask at n = 4098 costs a mask, not a forward pass.
    """

    nodes: tuple[ir.Node, ...]  # in graph order
    cuts: tuple[ir.Value, ...]  # Shape outputs the nodes read
    inputs: tuple[ir.Value, ...]  # graph inputs read (fed as `ones_feeds` does)
    initializers: tuple[ir.Value, ...]
    constants: tuple[np.ndarray, ...]  # every constant read, Constant nodes included


def ancestry(values: Sequence[ir.Value], graph: ir.Graph) -> Ancestry | None:
    """What computes `values` in `graph`, or None when a control-flow node, a Size or a value
    from another graph is in the way."""
    graph_inputs = {id(v) for v in graph.inputs}
    nodes: dict[int, ir.Node] = {}
    cuts, inputs, initializers, constants = {}, {}, {}, []
    seen: set[int] = set()
    stack = list(values)
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        const = constant_of(value)
        if const is not None:
            constants.append(const)
        producer = value.producer()
        if id(value) in graph_inputs:
            inputs[id(value)] = value
        elif producer is None:
            if value.const_value is None or value.graph is not graph:
                return None
            initializers[id(value)] = value
        elif producer.graph is not graph or producer.op_type == "Size":
            return None
        elif producer.op_type == "Shape" and producer.domain in ("", "ai.onnx"):
            cuts[id(value)] = value
        elif any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in producer.attributes.values()
        ):
            return None
        elif id(producer) not in nodes:
            nodes[id(producer)] = producer
            stack.extend(v for v in producer.inputs if v is not None)
    ordered = tuple(node for node in graph if id(node) in nodes)
    return Ancestry(
        ordered,
        tuple(cuts.values()),
        tuple(inputs.values()),
        tuple(initializers.values()),
        tuple(constants),
    )


def extrapolate(samples: Sequence[np.ndarray], sizes: Sequence[int], n: int) -> np.ndarray | None:
    """A shape vector at length n from its values at `sizes`: each entry is constant or
    grows linearly with the length (n, n + past, heads * n); None when it does not."""
    if len(samples) < 2 or len({s.shape for s in samples}) != 1:
        return None
    first, second = (np.asarray(s, dtype=np.int64) for s in samples[:2])
    step, rest = np.divmod(second - first, sizes[1] - sizes[0])
    if rest.any():
        return None
    result = first + step * (n - sizes[0])
    for sample, size in zip(samples[2:], sizes[2:], strict=True):
        if not np.array_equal(first + step * (size - sizes[0]), sample):
            return None
    return result.astype(samples[0].dtype)


def evaluate_ancestry(
    model: ir.Model,
    found: Ancestry,
    values: Sequence[ir.Value],
    cuts: Mapping[int, np.ndarray],
    seq_len: int,
    batch: int,
) -> list[np.ndarray]:
    """`values` at `seq_len` from their ancestry alone, the cut values given (by value id)."""
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(node) for node in found.nodes],
        "ancestry",
        [ir.serde.serialize_value(v) for v in found.inputs],
        [onnx.ValueInfoProto(name=name) for name in unique_names(values)],
        [ir.serde.serialize_tensor(v.const_value) for v in found.initializers]
        + [
            onnx.numpy_helper.from_array(np.asarray(cuts[id(cut)]), cut.name or "")
            for cut in found.cuts
        ],
    )
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    feeds = ones_feeds(model.graph, seq_len, batch)
    wanted = {v.name for v in found.inputs}
    outputs = _session(proto).run(
        unique_names(values), {k: v for k, v in feeds.items() if k in wanted}
    )
    by_name = dict(zip(unique_names(values), outputs, strict=True))
    return [by_name[v.name or ""] for v in values]


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
