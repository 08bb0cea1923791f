"""Tiny graphs for the rule tests: an ONNX graph from a few nodes, an FX graph from a torch
function, each giving its values by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx import helper

from attnrewrite.loading import prepare_model


def onnx_values(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, Sequence[int]],
    constants: dict[str, np.ndarray] | None = None,
    output: str = "out",
) -> dict[str, ir.Value]:
    """Every value of a float32 graph (shapes inferred), by name."""
    graph = helper.make_graph(
        list(nodes),
        "rule",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(a, n) for n, a in (constants or {}).items()],
    )
    model = prepare_model(helper.make_model(graph))
    found = {v.name: v for v in model.graph.inputs}
    found |= {v.name: v for v in model.graph.initializers.values()}
    found |= {v.name: v for node in model.graph for v in node.outputs}
    return found


def fx_output(function: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.fx.Node:
    """The node computing `function(*args)` in its torch.export (aten) graph."""

    class Wrapped(torch.nn.Module):
        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            return function(*xs)

    graph = torch.export.export(Wrapped(), args).module().graph
    (result,) = next(n for n in graph.nodes if n.op == "output").args[0]
    return result


def fx_input(node: torch.fx.Node, index: int) -> torch.fx.Node:
    """The `index`-th placeholder of the graph holding `node`."""
    return [n for n in node.graph.nodes if n.op == "placeholder"][index]
