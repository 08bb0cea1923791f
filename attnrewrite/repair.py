"""Repairs for models onnxruntime runs but the ONNX standard (and onnx-ir) refuses.

Files made by others break rules onnxruntime forgives. What has one reading is repaired
and noted in the model's metadata (REPAIRED, later in rewrite.json); what has none is one
clear line:

    a com.microsoft node, no com.microsoft opset import   -> import com.microsoft v1 (its only)
    Constant nodes writing one name, with equal values    -> one Constant
    Constant nodes writing one name, with unequal values  -> refused (onnxruntime takes the last)
    nodes out of topological order                        -> sorted (stable)
    a cycle, a name written by two other nodes            -> refused
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

import onnx
import onnx_ir as ir

from attnrewrite.errors import AttnRewriteError
from attnrewrite.protograph import graphs

MS_DOMAIN = "com.microsoft"
REPAIRED = "attnrewrite.repaired"  # model metadata key: what was repaired on load, "; "-joined

Rule = Callable[[onnx.ModelProto, str], list[str]]  # repairs in place, returns notes


def repair(proto: onnx.ModelProto, label: str = "model") -> onnx.ModelProto:
    """`proto` itself when it needs nothing, else a repaired copy noting what was done."""
    if not any(needed(proto) for needed, _ in RULES):
        return proto
    repaired = onnx.ModelProto()
    repaired.CopyFrom(proto)
    notes = [note for needed, fix in RULES if needed(repaired) for note in fix(repaired, label)]
    entry = repaired.metadata_props.add()
    entry.key, entry.value = REPAIRED, "; ".join(notes)
    return repaired


def deserialize(proto: onnx.ModelProto, label: str = "model") -> ir.Model:
    """onnx-ir's model, or one line saying why it cannot read what is left."""
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as err:  # onnx-ir wraps what it meets in several types
        cause = err.__cause__ or err
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise AttnRewriteError(f"{label} is not a valid ONNX graph: {reason}") from None


def repairs(model: ir.Model) -> list[str]:
    """What `repair` did to the model, for the report."""
    text = model.metadata_props.get(REPAIRED, "")
    return text.split("; ") if text else []


def _nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in graphs(proto.graph):
        yield from graph.node
    for function in proto.functions:
        yield from function.node


def _missing_contrib_import(proto: onnx.ModelProto) -> bool:
    imported = {o.domain for o in proto.opset_import}
    return MS_DOMAIN not in imported and any(n.domain == MS_DOMAIN for n in _nodes(proto))


def _import_contrib(proto: onnx.ModelProto, label: str) -> list[str]:
    proto.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return [f"added the {MS_DOMAIN} opset import its nodes need (version 1, its only one)"]


def _written_twice(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    writers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.output:
            if name:
                writers.setdefault(name, []).append(node)
    return {name: nodes for name, nodes in writers.items() if len(nodes) > 1}


def _has_duplicates(proto: onnx.ModelProto) -> bool:
    return any(_written_twice(graph) for graph in graphs(proto.graph))


def _merge_constants(proto: onnx.ModelProto, label: str) -> list[str]:
    notes = []
    for graph in graphs(proto.graph):
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
    return notes


def _unsorted(proto: onnx.ModelProto) -> bool:
    return any(_order(graph) is not None for graph in graphs(proto.graph))


def _sort(proto: onnx.ModelProto, label: str) -> list[str]:
    notes = []
    for graph in graphs(proto.graph):
        order = _order(graph)
        if order is None:
            continue
        if len(order) < len(graph.node):
            raise AttnRewriteError(f"{label}: graph '{graph.name}' has a cycle")
        nodes = [graph.node[i] for i in order]
        del graph.node[:]
        graph.node.extend(nodes)
        notes.append(f"sorted the nodes of graph '{graph.name}' topologically")
    return notes


def _order(graph: onnx.GraphProto) -> list[int] | None:
    """A stable topological order of the nodes (fewer than all on a cycle), or None when
    they are in order already. Names no node here writes (inputs, initializers, outer
    scope) are available from the start."""
    written = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    needs = [
        {written[name] for name in _reads(node) if name in written and written[name] != i}
        for i, node in enumerate(graph.node)
    ]
    if all(all(j < i for j in deps) for i, deps in enumerate(needs)):
        return None
    waiting = [len(deps) for deps in needs]
    users: dict[int, list[int]] = {}
    for i, deps in enumerate(needs):
        for j in deps:
            users.setdefault(j, []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)  # smallest index first: the original order wherever it is valid
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for user in users.get(i, ()):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    return order


def _reads(node: onnx.NodeProto) -> set[str]:
    """Names the node reads, those its subgraphs read from the outer scope included."""
    names = {name for name in node.input if name}
    for attr in node.attribute:
        for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            inner = {o for n in body.node for o in n.output} | {i.name for i in body.input}
            inner |= {t.name for t in body.initializer}
            names |= {name for n in body.node for name in _reads(n) if name not in inner}
    return names


RULES: tuple[tuple[Callable[[onnx.ModelProto], bool], Rule], ...] = (
    (_missing_contrib_import, _import_contrib),
    (_has_duplicates, _merge_constants),
    (_unsorted, _sort),
)
