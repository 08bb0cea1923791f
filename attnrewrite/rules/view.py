"""The graph-view interface the rules read: ops, inputs, attributes, constants and shapes.

A rule never touches onnx-ir or torch.fx: it asks a view. A value is whatever the graph
passes between ops (an `ir.Value`, an `fx.Node`, or a Python number in an FX argument); the
view names its producer's op in ONNX spelling ("Mul", "Transpose", "Reshape", ...), so one
pattern matches both graphs. The adapters normalise what the two spell differently:

    ONNX Transpose(x, perm)      | aten.transpose(x, a, b), permute(x, p), t(x)  -> Transpose, perm
    ONNX Unsqueeze(x, axes)      | aten.unsqueeze(x, d)                          -> Unsqueeze, axes
    ONNX Reshape(x, shape)       | aten.view / reshape / _unsafe_view(x, shape)  -> Reshape
    attribute or constant input  | positional or keyword argument                -> attribute()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

Dim = int | str | None  # static size, symbol, or unknown


class GraphView(Protocol):
    """Read-only questions the rules ask about a graph."""

    runtime_scalars: bool  # whether a one-element value computed at run time may be a scale

    def op(self, value: object) -> str | None:
        """The ONNX op type of the value's producer; None for a graph input, a number, or an
        op outside the view's vocabulary (another domain, an aten op it does not name)."""
        ...

    def inputs(self, value: object) -> Sequence[object]:
        """The producer's tensor operands, in ONNX order (None for an omitted optional)."""
        ...

    def attribute(self, value: object, name: str) -> tuple[int, ...] | None:
        """An integer attribute of the producer in ONNX form ("perm", "axes", "keepdims"; one
        int as a 1-tuple), defaults applied, or None when absent or not static."""
        ...

    def constant(self, value: object) -> np.ndarray | None:
        """The value's contents when known without running the graph."""
        ...

    def shape(self, value: object) -> tuple[Dim, ...] | None:
        """The value's shape when its rank is known."""
        ...

    def consumers(self, value: object) -> Sequence[object]:
        """The nodes reading `value`, each once."""
        ...

    def readers(self, value: object) -> Sequence[object]:
        """What the nodes reading `value` compute (each one's first output), each node once; the
        graph's outputs are not among them (see `is_output`). Walks down the graph use these."""
        ...

    def is_output(self, value: object) -> bool:
        """Whether the graph returns `value`."""
        ...

    def more_outputs_read(self, value: object) -> bool:
        """Whether another output of the value's producer is read (a Dropout's mask)."""
        ...

    def op_type(self, value: object) -> str | None:
        """The producer's own op name in any domain (SoftmaxGrad_13, native_dropout), None for a
        graph input: for messages and for ops outside the view's vocabulary."""
        ...

    def node_name(self, value: object) -> str:
        """The producer's name, as messages name nodes."""
        ...

    def label(self, value: object) -> str | None:
        """The producer as messages name it ("Mul 'name'"), None for a graph input."""
        ...

    def name(self, value: object) -> str:
        """The value's name in the graph."""
        ...


def is_scalar(view: GraphView, value: object) -> bool:
    """One element: a known constant, or (where the finder evaluates it) a value shaped so."""
    const = view.constant(value)
    if const is not None:
        return const.size == 1
    shape = view.shape(value)
    return view.runtime_scalars and shape is not None and all(d == 1 for d in shape)


def rank(view: GraphView, value: object) -> int | None:
    shape = view.shape(value)
    return None if shape is None else len(shape)


def agrees(shape: Sequence[Dim] | None, expected: Sequence[Dim]) -> bool:
    """Whether `shape` can be `expected`: same rank, equal wherever both sizes are static."""
    if shape is None:
        return True
    if len(shape) != len(expected):
        return False
    return all(
        a == b
        for a, b in zip(shape, expected, strict=True)
        if isinstance(a, int) and isinstance(b, int)
    )
