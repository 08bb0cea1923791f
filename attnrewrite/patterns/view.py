"""The onnx-ir graph as the rules see it (rules.view.GraphView): default-domain ops only,
opset differences (Unsqueeze axes as attribute or input, Transpose's default perm) settled
here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from attnrewrite.evaluate import constant_of
from attnrewrite.patterns.graph_utils import DEFAULT_DOMAINS, consumers, ints_attr, static_dim
from attnrewrite.rules.view import Dim


class OnnxView:
    """A GraphView of onnx-ir values. Scalars computed at run time count as scales: the
    finder evaluates them (patterns.evaluations)."""

    runtime_scalars = True

    def op(self, value: object) -> str | None:
        node = value.producer() if isinstance(value, ir.Value) else None
        return node.op_type if node is not None and node.domain in DEFAULT_DOMAINS else None

    def inputs(self, value: object) -> Sequence[object]:
        assert isinstance(value, ir.Value)
        node = value.producer()
        return () if node is None else tuple(node.inputs)

    def attribute(self, value: object, name: str) -> tuple[int, ...] | None:
        assert isinstance(value, ir.Value)
        node = value.producer()
        if node is None:
            return None
        attr = node.attributes.get(name)
        if attr is not None:
            return (int(attr.value),) if isinstance(attr.value, int) else ints_attr(node, name)
        if not node.inputs or node.inputs[0] is None:
            return None
        if name == "axes" and len(node.inputs) > 1 and node.inputs[1] is not None:
            axes = constant_of(node.inputs[1])  # opset 13: an input
            return None if axes is None else tuple(int(a) for a in np.ravel(axes))
        rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
        if name == "perm" and node.op_type == "Transpose" and rank is not None:
            return tuple(reversed(range(rank)))
        return None

    def constant(self, value: object) -> np.ndarray | None:
        return constant_of(value) if isinstance(value, ir.Value) else None

    def shape(self, value: object) -> tuple[Dim, ...] | None:
        if not isinstance(value, ir.Value) or value.shape is None:
            return None
        return tuple(static_dim(value, axis) for axis in range(len(value.shape)))

    def consumers(self, value: object) -> Sequence[object]:
        assert isinstance(value, ir.Value)
        return consumers(value)

    def readers(self, value: object) -> Sequence[object]:
        assert isinstance(value, ir.Value)
        return [node.outputs[0] for node in consumers(value)]

    def is_output(self, value: object) -> bool:
        return isinstance(value, ir.Value) and value.is_graph_output()

    def more_outputs_read(self, value: object) -> bool:
        node = value.producer() if isinstance(value, ir.Value) else None
        return node is not None and any(out.uses() for out in node.outputs[1:])

    def op_type(self, value: object) -> str | None:
        node = value.producer() if isinstance(value, ir.Value) else None
        return None if node is None else node.op_type

    def node_name(self, value: object) -> str:
        node = value.producer() if isinstance(value, ir.Value) else None
        return "" if node is None else str(node.name)

    def label(self, value: object) -> str | None:
        node = value.producer() if isinstance(value, ir.Value) else None
        return None if node is None else f"{node.op_type} '{node.name}'"

    def name(self, value: object) -> str:
        return str(value.name) if isinstance(value, ir.Value) else str(value)


ONNX = OnnxView()
