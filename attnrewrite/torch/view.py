"""An FX graph (torch.export, aten ops) as the rules see it (rules.view.GraphView).

aten spellings are named by their ONNX op (`OPS`), their arguments put in ONNX order and
form: transpose(x, a, b), permute(x, p) and t(x) are Transpose with a perm; unsqueeze(x, d)
is Unsqueeze with axes (d,). Slices that keep the whole axis (what dynamic tracing leaves of
`kv[:, :, None]`) are looked through. Only constants count as scales: the FX finder does not
evaluate the graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import fx

from attnrewrite.rules.view import Dim

aten = torch.ops.aten

OPS: dict[object, str] = {
    aten.mul.Tensor: "Mul",
    aten.mul.Scalar: "Mul",
    aten.div.Tensor: "Div",
    aten.div.Scalar: "Div",
    aten.transpose.int: "Transpose",
    aten.permute.default: "Transpose",
    aten.t.default: "Transpose",
    aten.reshape.default: "Reshape",
    aten.view.default: "Reshape",
    aten._unsafe_view.default: "Reshape",
    aten.expand.default: "Expand",
    aten.unsqueeze.default: "Unsqueeze",
    aten.repeat_interleave.self_int: "RepeatInterleave",
    aten.matmul.default: "MatMul",
    aten.bmm.default: "MatMul",
    aten.add.Tensor: "Add",  # with alpha 1 only (see FxView.op)
    aten.sub.Tensor: "Sub",
    aten.where.self: "Where",
    aten.where.ScalarOther: "Where",
    aten.masked_fill.Scalar: "Where",  # masked_fill(s, m, c) = Where(m, c, s)
    aten.to.dtype: "Cast",
    aten.to.dtype_layout: "Cast",
    aten._to_copy.default: "Cast",
    aten.type_as.default: "Cast",
    aten.clone.default: "Identity",
    aten.contiguous.default: "Identity",
    aten.alias.default: "Identity",
    aten.dropout.default: "Dropout",  # (x, p, train): identity unless training
    aten.exp.default: "Exp",
    aten.tanh.default: "Tanh",
    aten.sum.dim_IntList: "ReduceSum",
    aten.amax.default: "ReduceMax",
}
REDUCTIONS = {aten.sum.dim_IntList, aten.amax.default}  # (x, dim, keepdim=False)
BINARY = {"Mul", "Div", "MatMul", "Add", "Sub"}  # ops whose first two arguments are operands
IGNORED_USERS = {aten._assert_tensor_metadata.default}
CONST_SCALAR_OPS = {aten.full.default, aten.scalar_tensor.default}
PASS_SCALAR = {  # ops that keep a constant scalar what it is
    *(op for op, name in OPS.items() if name in ("Cast", "Identity")),
    aten.lift_fresh_copy.default,
    aten.detach.default,
}


class FxView:
    """A GraphView of FX nodes (and the Python numbers in their arguments)."""

    runtime_scalars = False

    def op(self, value: object) -> str | None:
        if not isinstance(value, fx.Node) or value.op != "call_function":
            return None
        if value.kwargs.get("alpha", 1) != 1:  # add(a, b, alpha=2) is no Add(a, b)
            return None
        return OPS.get(value.target)

    def inputs(self, value: object) -> Sequence[object]:
        assert isinstance(value, fx.Node)
        if value.target is aten.masked_fill.Scalar:
            scores, mask, fill = value.args[:3]
            return (mask, fill, scores)
        op = self.op(value)
        count = 3 if op == "Where" else 2 if op in BINARY else 1
        return tuple(_whole_slices_skipped(a) for a in value.args[:count])

    def attribute(self, value: object, name: str) -> tuple[int, ...] | None:
        assert isinstance(value, fx.Node)
        target, args = value.target, value.args
        rank = len(self.shape(value) or ())
        if name == "perm" and target is aten.permute.default:
            return tuple(int(p) % rank for p in args[1])
        if name == "perm" and target is aten.transpose.int and rank:
            perm = list(range(rank))
            a, b = int(args[1]) % rank, int(args[2]) % rank
            perm[a], perm[b] = b, a
            return tuple(perm)
        if name == "perm" and target is aten.t.default and rank == 2:
            return (1, 0)
        if name == "axes" and target is aten.unsqueeze.default:
            return (int(args[1]),)
        if target in REDUCTIONS and name in ("axes", "keepdims"):
            found = bound(value)["dim" if name == "axes" else "keepdim"]
            return tuple(int(d) for d in found or ()) if name == "axes" else (int(bool(found)),)
        if target is aten.repeat_interleave.self_int and name in ("repeats", "dim"):
            found = bound(value).get(name)
            return None if not isinstance(found, int) else (found,)
        return None

    def constant(self, value: object) -> np.ndarray | None:
        number = const_scalar(value)
        return None if number is None else np.asarray(number)

    def shape(self, value: object) -> tuple[Dim, ...] | None:
        val = value.meta.get("val") if isinstance(value, fx.Node) else None
        if not isinstance(val, torch.Tensor):
            return None
        return tuple(d if isinstance(d, int) else str(d) for d in val.shape)

    def consumers(self, value: object) -> Sequence[object]:
        assert isinstance(value, fx.Node)
        return [u for u in value.users if u.target not in IGNORED_USERS]

    def readers(self, value: object) -> Sequence[object]:
        return [u for u in self.consumers(value) if isinstance(u, fx.Node) and u.op != "output"]

    def is_output(self, value: object) -> bool:
        return isinstance(value, fx.Node) and any(u.op == "output" for u in value.users)

    def more_outputs_read(self, value: object) -> bool:
        return False  # a node is one value: tuple outputs are read through getitem nodes

    def op_type(self, value: object) -> str | None:
        if not isinstance(value, fx.Node) or value.op != "call_function":
            return None
        return op_name(value)

    def node_name(self, value: object) -> str:
        return self.name(value)

    def label(self, value: object) -> str | None:
        op = self.op_type(value)
        return None if op is None else f"{op} '{self.name(value)}'"

    def name(self, value: object) -> str:
        return value.name if isinstance(value, fx.Node) else repr(value)


FX = FxView()


def op_name(node: fx.Node) -> str:
    return str(getattr(node.target, "__name__", node.target)).removesuffix(".default")


def bound(node: fx.Node) -> dict[str, object]:
    """The op's arguments by schema name, defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]
    out: dict[str, object] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def const_scalar(x: object) -> float | None:
    """The value of a constant scalar operand (number, full([], c), a 1-element constant)."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int | float):
        return float(x)
    if not isinstance(x, fx.Node):
        return None
    if x.target in CONST_SCALAR_OPS:
        size = x.args[0]
        value = x.args[1] if x.target is aten.full.default else x.args[0]
        if x.target is aten.full.default and math.prod(size) != 1:
            return None
        return float(value) if isinstance(value, int | float) else None
    if x.target in PASS_SCALAR:
        return const_scalar(x.args[0])
    if x.target is aten.sqrt.default:
        c = const_scalar(x.args[0])
        return math.sqrt(c) if c is not None and c >= 0 else None
    if x.op == "get_attr":
        owner = x.graph.owning_module
        value = getattr(owner, str(x.target), None) if owner is not None else None
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad:
            return float(value.reshape(()).item())
    return None


def _whole_slices_skipped(x: object) -> object:
    """Through slices that keep the whole axis: `kv[:, :, None]` traced with dynamic shapes
    leaves them between the unsqueeze and the expand (static tracing drops them)."""
    while (
        isinstance(x, fx.Node)
        and x.target is aten.slice.Tensor
        and isinstance(x.args[0], fx.Node)
        and FX.shape(x) is not None
        and FX.shape(x) == FX.shape(x.args[0])
    ):
        x = x.args[0]
    return x
