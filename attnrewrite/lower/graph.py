"""ONNX graph rewrites that make a static-shape, constant-folded model importable into Relax.

Both keep every number: they only restructure what TVM cannot take.

- ``UnrollLoops``: TVM's ONNX frontend has no ``Loop`` converter. The conv-basis body sums
  its bases with a Loop (one segment's spectrum in memory at a time in onnxruntime); once the
  shapes are static its trip count is a constant, and the Loop is unrolled into copies of its
  body, the iteration number a constant, the loop-carried values chained. The additions keep
  their order, so the sums are the same.
- ``DropEmptyOperands``: the multipole body has no far field when the keys fit in the near
  field (Skv <= 2 ``block``: no level, zero summaries), and its far-field tensors then have a
  zero extent ([.., 0, d] summaries, [.., m, 0] logit biases) that only ever reach a Concat.
  TVM's ONNX frontend imports them, but ``relax.build`` then fails in its
  ``RewriteDataflowReshape`` pass with "IndexError: Index 4 out of bounds 4" on the
  zero-extent reshapes (one ``expand_dims`` of a [1, 1, 1, 0] tensor reproduces it in a
  three-line Relax module). Dropping zero-extent
  operands of Concat (which contribute nothing) leaves those chains dead, and they go.

Both are onnx-ir passes (in place): its values know their producers and readers.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass

from attnrewrite.lower.errors import LowerError


def _constant(value: ir.Value | None) -> np.ndarray | None:
    tensor = None if value is None else ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _scalar(graph: ir.Graph, name: str, value: np.ndarray) -> ir.Value:
    constant = ir.Value(name=name, const_value=ir.tensor(np.asarray(value), name=name))
    graph.register_initializer(constant)
    return constant


def _check_unrollable(node: ir.Node, body: ir.Graph) -> int:
    """The Loop's trip count, or a LowerError saying why it cannot be unrolled."""
    where = f"Loop '{node.name}'"
    trips = _constant(node.inputs[0])
    if trips is None:
        raise LowerError(f"{where}: its trip count is not a constant; it cannot be unrolled")
    if len(body.outputs) != 1 + len(node.inputs[2:]):
        raise LowerError(f"{where}: scan outputs are not supported by the unrolling")
    cond_in, cond_out = body.inputs[1], body.outputs[0]
    cond_node = cond_out.producer()
    fixed = cond_out is cond_in or (
        cond_node is not None and cond_node.op_type == "Identity" and cond_node.inputs[0] is cond_in
    )
    start = node.inputs[1] if len(node.inputs) > 1 else None
    go = _constant(start) if start is not None else np.array(True)
    if not fixed or not bool((go if go is not None else np.array(False)).all()):
        raise LowerError(f"{where}: a data-dependent loop condition cannot be unrolled")
    if any(
        a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for n in body
        for a in n.attributes.values()
    ):
        raise LowerError(f"{where}: nested subgraphs are not supported by the unrolling")
    return int(trips.reshape(()))


def _unroll(graph: ir.Graph, node: ir.Node) -> None:
    """Replace one Loop with a constant trip count by copies of its body, in place."""
    body = node.attributes["body"].as_graph()
    trips = _check_unrollable(node, body)
    tag = node.name or node.outputs[0].name
    true = _scalar(graph, f"{tag}__true", np.array(True))
    current: list[ir.Value | None] = list(node.inputs[2:])
    nodes: list[ir.Node] = []
    for i in range(trips):
        names: dict[ir.Value, ir.Value | None] = {
            body.inputs[0]: _scalar(graph, f"{tag}__iter{i}", np.array(i, np.int64)),
            body.inputs[1]: true,
            **dict(zip(body.inputs[2:], current, strict=True)),
        }
        for init in body.initializers.values():
            names[init] = _scalar(graph, f"{tag}__{i}__{init.name}", init.const_value.numpy())
        for j, inner in enumerate(body):
            copy = ir.Node(
                inner.domain,
                inner.op_type,
                [names.get(x, x) if x is not None else None for x in inner.inputs],
                attributes=list(inner.attributes.values()),
                num_outputs=len(inner.outputs),
                name=f"{tag}__{i}__{j}_{inner.name or inner.op_type}",
            )
            for out, new in zip(inner.outputs, copy.outputs, strict=True):
                new.name = f"{tag}__{i}__{out.name}" if out.name else ""
                names[out] = new
            nodes.append(copy)
        current = [names.get(o, o) for o in body.outputs[1:]]
    finals = [
        ir.Node("", "Identity", [final], name=f"{tag}__{out.name}")
        for final, out in zip(current, node.outputs, strict=True)
    ]
    graph.insert_before(node, nodes)
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], finals, node.outputs, [f.outputs[0] for f in finals]
    )


class UnrollLoops(ir.passes.InPlacePass):
    """Unroll every top-level Loop with a constant trip count, or a LowerError."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        loops = [n for n in model.graph if n.op_type == "Loop" and n.domain == ""]
        for loop in loops:
            _unroll(model.graph, loop)
        return ir.passes.PassResult(model, modified=bool(loops))


class DropEmptyOperands(ir.passes.InPlacePass):
    """Drop zero-extent Concat operands and what only they needed."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        changed = False
        for node in model.graph:
            if node.op_type != "Concat" or node.domain:
                continue
            kept = [x for x in node.inputs if x is None or x.shape is None or 0 not in x.shape]
            if kept and len(kept) < len(node.inputs):
                for index, value in enumerate(kept):
                    node.replace_input_with(index, value)
                node.resize_inputs(len(kept))
                changed = True
        if changed:
            RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=changed)
