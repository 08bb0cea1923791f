"""Every graph of a model under the name matches give it, and each graph's nodes and values
by name: a match holds names, and a stage that edits a model looks them up here.

    "main"                                   the model's graph
    "main/Loop:loop.body"                    a control-flow body (node's op type, name, attribute)
    "function domain::name[:overload]"       a model-local function, and its bodies likewise

Names are what the matches address, so the finder first gives every node a name unique in
its graph (`name_nodes`); values are named by the ONNX format itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir


def all_graphs(model: ir.Model) -> Iterator[tuple[str, ir.Graph | ir.Function]]:
    """The main graph, every control-flow body inside it, and every model-local function."""
    yield "main", model.graph
    yield from _subgraphs(model.graph, "main")
    for function in model.functions.values():
        overload = f":{function.overload}" if function.overload else ""
        name = f"function {function.domain}::{function.name}{overload}"
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


def name_nodes(model: ir.Model) -> None:
    """Name every unnamed node, and the second of two sharing a name, uniquely in its graph
    (`op_type_N`, `name_N`): the ONNX format does not require node names, matches need them.
    Named before their bodies are listed, so a body's graph name has its node's new name."""
    for _, graph in all_graphs(model):
        taken = {node.name for node in graph if node.name}
        seen: set[str] = set()
        for node in graph:
            if not node.name or node.name in seen:
                base, number = node.name or node.op_type, 1
                while f"{base}_{number}" in taken:
                    number += 1
                node.name = f"{base}_{number}"
                taken.add(node.name)
            seen.add(node.name)


class Scope:
    """One graph's nodes and values by name: its own, and those of enclosing graphs that its
    nodes read. Indexed when made, so a rewrite that renames values later still finds the
    objects the names meant."""

    def __init__(self, graph: ir.Graph | ir.Function):
        self._nodes = {node.name: node for node in graph}
        values: list[ir.Value] = list(graph.inputs)
        if isinstance(graph, ir.Graph):
            values += graph.initializers.values()
        for node in graph:
            values += [v for v in node.inputs if v is not None]
            values += node.outputs
        self._values = {value.name: value for value in values if value.name}

    def node(self, name: str) -> ir.Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise ValueError(f"node '{name}' is not in the graph") from None

    def value(self, name: str) -> ir.Value:
        try:
            return self._values[name]
        except KeyError:
            raise ValueError(f"value '{name}' is not in the graph") from None


def scopes(model: ir.Model) -> dict[str, Scope]:
    """Every graph of the model (all_graphs), indexed by name."""
    return {name: Scope(graph) for name, graph in all_graphs(model)}
