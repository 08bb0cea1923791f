"""The blocks a report compares, as the rewrite recorded them (rewrite.json beside the model).

The rewrite writes down per block the value that carries its output (one name in both
models), the node it wrote (for a per-head plan, the prefix of its group nodes), the method
and its parameters, and why a block kept exact attention. The report takes these as
written; of the rewritten graph it asks only the written nodes' own outputs, found by the
names the record gives (they show the block's head axis).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir

from attnrewrite.errors import AttnRewriteError
from attnrewrite.pipeline import RECORD_FILE
from attnrewrite.substitute.rewrite import group_node_name

MAX_RECORD_BYTES = 256 << 20  # a record lists every block and refusal; far below this


@dataclass(frozen=True)
class Block:
    """One rewritten attention block and the value that carries its output in both models.

    A per-head plan writes several nodes (one per head group) for one block.
    """

    name: str
    node_outputs: tuple[str, ...]  # the nodes' own outputs [B, h, S, d] (rewritten model)
    output: str  # the block output's name, present in both models
    method: str
    params: dict
    fallback: str | None  # why the block kept exact attention instead of the method


def read_record(rewritten: Path) -> dict:
    """The rewrite record beside `rewritten`; one line naming it when it is missing or is
    not a record (a model rewritten elsewhere, or moved without it, has no blocks to read)."""
    path = rewritten.parent / RECORD_FILE
    if not path.is_file():
        raise AttnRewriteError(
            f"no rewrite record beside {rewritten}: the report reads the rewritten blocks "
            f"from {path}, which attnrewrite writes beside the model it rewrites"
        )
    if path.stat().st_size > MAX_RECORD_BYTES:
        raise AttnRewriteError(f"{path} is over {MAX_RECORD_BYTES >> 20} MiB: not a rewrite record")
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise TypeError("not a JSON object")
        matches = _matches(record)
        if not all(isinstance(m, dict) for m in matches):
            raise TypeError("a match is not an object")
    except (ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
        raise AttnRewriteError(f"{path} is not a rewrite record ({err})") from None
    return record


def _matches(record: Mapping) -> list:
    """The matches of the ONNX model: rewrite.json's own, or, beside a rewritten .pt2
    program, those of its ONNX export (the record's own describe the FX graph)."""
    exported = record.get("onnx")
    found = exported["blocks"] if isinstance(exported, dict) else record["matches"]
    if not isinstance(found, list):
        raise TypeError("its matches are not a list")
    return found


def blocks_of(record: Mapping, original: ir.Model, rewritten: ir.Model) -> list[Block]:
    """The record's blocks of the main graph, in the rewritten graph's order. A block whose
    output the original does not hold has nothing to be compared with and is left out."""
    known = {out.name for node in original.graph for out in node.outputs}
    known |= {o.name for o in original.graph.outputs}
    written = {node.name: node.outputs[0].name for node in rewritten.graph if node.outputs}
    place = {node.outputs[0].name: i for i, node in enumerate(rewritten.graph) if node.outputs}
    try:
        blocks = [
            _block(match, written)
            for match in _matches(record)
            if match.get("graph") == "main" and match.get("output") in known
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise AttnRewriteError(f"{RECORD_FILE} has a match it does not describe ({err})") from None
    return sorted(blocks, key=lambda block: min(place[o] for o in block.node_outputs))


def _block(match: Mapping, written: Mapping[str, str]) -> Block:
    """`match` as a Block; its nodes' outputs from `written` (node name -> first output)."""
    per_head = "heads" in match  # one node per head group: PREFIX/heads0, PREFIX/heads1, ...
    names = (
        [group_node_name(match["node"], i) for i in range(len(match["heads"]))]
        if per_head
        else [match["node"]]
    )
    missing = [name for name in names if name not in written]
    if missing:
        raise AttnRewriteError(
            f"{RECORD_FILE} names node '{missing[0]}', which the rewritten model does not "
            "have: the record is not this model's"
        )
    return Block(
        name=match["node"],
        node_outputs=tuple(written[name] for name in names),
        output=match["output"],
        method=match["method"],
        params={} if per_head else dict(match["params"]),  # a plan's are per group
        fallback=match.get("fallback"),
    )
