"""Repairs for models onnxruntime runs but the ONNX standard (and onnx-ir) refuses.

Files made by others break rules onnxruntime forgives. What has one reading is repaired
and noted in the model's metadata (REPAIRED, later in rewrite.json); what has none is one
clear line:

    Constant nodes writing one name, with equal values    -> one Constant
    Constant nodes writing one name, with unequal values  -> refused (onnxruntime takes the last)
    a name written by two other nodes                     -> refused
    a com.microsoft node, no com.microsoft opset import   -> import com.microsoft v1 (its only)
    nodes out of topological order                        -> sorted (stable)
    a cycle                                               -> refused

onnx-ir refuses a name written twice, so `merge_constants` works on the protobuf before it is
deserialized; the other repairs are onnx-ir passes (REPAIRS) on the deserialized model.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import onnx_ir as ir

from attnrewrite.errors import AttnRewriteError
from attnrewrite.graphs import all_graphs

MS_DOMAIN = "com.microsoft"
REPAIRED = "attnrewrite.repaired"  # model metadata key: what was repaired on load, "; "-joined


def repairs(model: ir.Model) -> list[str]:
    """What the repairs did to the model, for the report."""
    text = model.metadata_props.get(REPAIRED, "")
    return text.split("; ") if text else []


def _note(model: ir.Model, notes: list[str]) -> None:
    model.metadata_props[REPAIRED] = "; ".join([*repairs(model), *notes])


def merge_constants(proto: onnx.ModelProto, label: str = "model") -> onnx.ModelProto:
    """`proto` itself when no name has two writers, else a copy with identical Constants
    writing one name merged into one (noted in its metadata)."""
    if not any(_written_twice(graph) for graph in _graphs(proto.graph)):
        return proto
    merged = onnx.ModelProto()
    merged.CopyFrom(proto)
    notes = []
    for graph in _graphs(merged.graph):
        for name, writers in _written_twice(graph).items():
            kinds = {n.op_type for n in writers}
            if kinds != {"Constant"}:
                raise AttnRewriteError(
                    f"{label}: '{name}' is written by {len(writers)} nodes "
                    f"({', '.join(sorted(kinds))}); an ONNX name has one writer"
                )
            values = {tuple(a.SerializeToString() for a in n.attribute) for n in writers}
            if len(values) > 1:
                raise AttnRewriteError(
                    f"{label}: {len(writers)} Constant nodes write '{name}' with different "
                    "values (onnxruntime uses the last for every reader); rename them"
                )
            for extra in writers[1:]:
                graph.node.remove(extra)
            notes.append(f"merged {len(writers)} identical Constant nodes writing '{name}'")
    entry = merged.metadata_props.add()
    entry.key, entry.value = REPAIRED, "; ".join(notes)
    return merged


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph`, then every subgraph its nodes hold, depth first: the protobuf's own walk, as
    this repair runs before onnx-ir can read the model."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                yield from _graphs(sub)


def _written_twice(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    writers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.output:
            if name:
                writers.setdefault(name, []).append(node)
    return {name: nodes for name, nodes in writers.items() if len(nodes) > 1}


class ImportContribOpset(ir.passes.InPlacePass):
    """Import com.microsoft (version 1, its only one) where its nodes are used without it."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if MS_DOMAIN in model.opset_imports or all(
            node.domain != MS_DOMAIN for _, graph in all_graphs(model) for node in graph
        ):
            return ir.passes.PassResult(model, modified=False)
        model.opset_imports[MS_DOMAIN] = 1
        _note(
            model,
            [f"added the {MS_DOMAIN} opset import its nodes need (version 1, its only one)"],
        )
        return ir.passes.PassResult(model, modified=True)


class SortNodes(ir.passes.InPlacePass):
    """Sort every graph topologically (onnx-ir's stable sort keeps an order that is valid)."""

    def __init__(self, label: str = "model") -> None:
        super().__init__()
        self.label = label

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = {graph: list(graph) for graph in model.graphs()}
        try:
            model.graph.sort()
        except ValueError:
            cyclic = next((g for g in model.graphs() if not _in_order(g)), model.graph)
            raise AttnRewriteError(f"{self.label}: graph '{cyclic.name}' has a cycle") from None
        notes = [
            f"sorted the nodes of graph '{graph.name}' topologically"
            for graph, nodes in before.items()
            if list(graph) != nodes
        ]
        if notes:
            _note(model, notes)
        return ir.passes.PassResult(model, modified=bool(notes))


def _in_order(graph: ir.Graph) -> bool:
    """Whether every node of `graph` comes after the nodes of `graph` it reads."""
    seen: set[ir.Node] = set()
    for node in graph:
        producers = (value.producer() for value in node.inputs if value is not None)
        if any(p is not None and p.graph is graph and p not in seen for p in producers):
            return False
        seen.add(node)
    return True


def repair(model: ir.Model, label: str = "model") -> ir.Model:
    """The model with what onnx-ir reads but the standard refuses repaired, in place."""
    passes = ir.passes.PassManager([ImportContribOpset(), SortNodes(label)])
    try:
        return passes(model).model
    except ir.passes.PassError as err:  # the manager wraps what a pass raises, by step
        cause: BaseException | None = err
        while isinstance(cause, ir.passes.PassError):
            cause = cause.__cause__
        if isinstance(cause, AttnRewriteError):
            raise cause from None
        raise
