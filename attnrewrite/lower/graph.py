"""ONNX graph rewrites that make a static-shape, constant-folded model importable into Relax.

Both keep every number: they only restructure what TVM cannot take.

- ``unroll_loops``: TVM's ONNX frontend has no ``Loop`` converter. The conv-basis body sums
  its bases with a Loop (one segment's spectrum in memory at a time in onnxruntime); once the
  shapes are static its trip count is a constant, and the Loop is unrolled into copies of its
  body, the iteration number a constant, the loop-carried values chained. The additions keep
  their order, so the sums are the same.
- ``drop_empty_operands``: the multipole body has no far field when the keys fit in the near
  field (Skv <= 2 ``block``: no level, zero summaries), and its far-field tensors then have a
  zero extent ([.., 0, d] summaries, [.., m, 0] logit biases) that only ever reach a Concat.
  TVM's ONNX frontend imports them, but ``relax.build`` then fails in its
  ``RewriteDataflowReshape`` pass with "IndexError: Index 4 out of bounds 4" on the
  zero-extent reshapes (one ``expand_dims`` of a [1, 1, 1, 0] tensor reproduces it in a
  three-line Relax module). Dropping zero-extent
  operands of Concat (which contribute nothing) leaves those chains dead, and they go.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from attnrewrite.lower.errors import LowerError


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and not node.domain:
            (attr,) = (a for a in node.attribute if a.name == "value")
            out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _scalar(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _unroll(node: onnx.NodeProto, constants: dict[str, np.ndarray]):
    """The nodes (and new initializers) replacing one Loop with a constant trip count."""
    where = f"Loop '{node.name}'"
    body = next(a.g for a in node.attribute if a.name == "body")
    if not node.input[0] or node.input[0] not in constants:
        raise LowerError(f"{where}: its trip count is not a constant; it cannot be unrolled")
    trips = int(constants[node.input[0]].reshape(()))
    carried = list(node.input[2:])
    if len(body.output) != 1 + len(carried):
        raise LowerError(f"{where}: scan outputs are not supported by the unrolling")
    cond_in, cond_out = body.input[1].name, body.output[0].name
    producer = {o: n for n in body.node for o in n.output}
    cond_node = producer.get(cond_out)
    fixed = cond_out == cond_in or (
        cond_node is not None and cond_node.op_type == "Identity" and cond_node.input[0] == cond_in
    )
    start = node.input[1] if len(node.input) > 1 else ""
    if not fixed or (start and not bool(constants.get(start, np.array(False)).all())):
        raise LowerError(f"{where}: a data-dependent loop condition cannot be unrolled")
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in body.node
        for a in n.attribute
    ):
        raise LowerError(f"{where}: nested subgraphs are not supported by the unrolling")

    tag = node.name or node.output[0]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    true = f"{tag}__true"
    inits.append(_scalar(true, np.array(True)))
    current = carried
    for i in range(trips):
        names = {body.input[0].name: f"{tag}__iter{i}", cond_in: true}
        inits.append(_scalar(names[body.input[0].name], np.array(i, np.int64)))
        names.update(
            {value.name: outer for value, outer in zip(body.input[2:], current, strict=True)}
        )
        for init in body.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = names[init.name] = f"{tag}__{i}__{init.name}"
            inits.append(copy)
        for j, inner in enumerate(body.node):
            copy = onnx.NodeProto()
            copy.CopyFrom(inner)
            copy.name = f"{tag}__{i}__{j}_{inner.name or inner.op_type}"
            del copy.input[:]
            copy.input.extend(names.get(x, x) for x in inner.input)
            del copy.output[:]
            for out in inner.output:
                names[out] = f"{tag}__{i}__{out}" if out else ""
                copy.output.append(names[out])
            nodes.append(copy)
        current = [names.get(o.name, o.name) for o in body.output[1:]]
    for final, out in zip(current, node.output, strict=True):
        nodes.append(onnx.helper.make_node("Identity", [final], [out], name=f"{tag}__{out}"))
    return nodes, inits


def unroll_loops(model: onnx.ModelProto) -> bool:
    """Unroll every top-level Loop of ``model`` in place; True if there was one."""
    graph = model.graph
    if not any(n.op_type == "Loop" and not n.domain for n in graph.node):
        return False
    constants = _constants(graph)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Loop" and not node.domain:
            new_nodes, inits = _unroll(node, constants)
            nodes.extend(new_nodes)
            graph.initializer.extend(inits)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return True


def _prune(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nothing reads, then unread initializers."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o and o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def drop_empty_operands(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without zero-extent Concat operands and what only they needed."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    shapes: dict[str, list[int | None]] = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in [*graph.value_info, *graph.input, *graph.output]
        if v.type.tensor_type.HasField("shape")
    }
    shapes.update({i.name: list(i.dims) for i in graph.initializer})
    changed = False
    for node in graph.node:
        if node.op_type != "Concat" or node.domain:
            continue
        kept = [x for x in node.input if 0 not in shapes.get(x, [None])]
        if kept and len(kept) < len(node.input):
            del node.input[:]
            node.input.extend(kept)
            changed = True
    if not changed:
        return model
    _prune(graph)
    del graph.value_info[:]
    return inferred
