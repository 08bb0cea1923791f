"""Capture every block's canonical q, k, v and mask on calibration inputs.

The model is exact-rewritten in memory: each attnrewrite node's inputs are then exactly the
canonical operands ([B, H, S, d] after the layout adapters, scale and mask as matched), so
exposing them as graph outputs and running onnxruntime captures what every candidate method
will be fed, without re-implementing any part of the model. The same run gives the model's
outputs (exact attention, chunked: the original's numbers) and each block's exact output, the
references the planner measures candidates and plans against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from attnrewrite.match import AttentionMatch
from attnrewrite.plan.workspace import Workspace
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import substitute
from attnrewrite.substitute.signature import Signature


@dataclass(frozen=True)
class BlockOperands:
    """One block's operands on the calibration batch, how it attends, and its exact output."""

    index: int  # position in the finder's matches
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None
    exact: np.ndarray  # the block's exact attention output [B, Hq, Sq, dv]
    signature: Signature
    scale: float
    window: int | None
    softcap: float | None = None  # the block's logit soft-cap (its nodes read it)

    @property
    def heads(self) -> int:
        return self.q.shape[1]

    @property
    def is_causal(self) -> bool:
        return self.signature.causal


@dataclass(frozen=True)
class Capture:
    blocks: list[BlockOperands]
    outputs: list[np.ndarray]  # the model's outputs with exact attention


def plannable(match: AttentionMatch) -> bool:
    """Main-graph rank-4 blocks can be split per head; others keep the method given."""
    return match.graph_name == "main" and match.rank == 4


def capture(workspace: Workspace, feeds: Mapping[str, np.ndarray]) -> Capture:
    """Operands and exact outputs of every plannable block, and the model's outputs."""
    copy, matches = workspace.copy(), workspace.matches
    wanted = [i for i, m in enumerate(matches) if plannable(m)]
    result = substitute(copy, [matches[i] for i in wanted], get_method("exact"))
    nodes = {node.name: node for node in copy.graph}
    groups: list[tuple[int, list[str]]] = []
    extra = []
    for rewritten in result.rewritten:  # a block whose rewrite failed is not planned
        index = matches.index(rewritten.match)
        node = nodes[rewritten.node]
        groups.append((index, [v.name for v in (*node.inputs, node.outputs[0]) if v]))
        extra += [v for v in (*node.inputs, node.outputs[0]) if v is not None]
    outputs = [o.name for o in copy.graph.outputs]
    for value in dict.fromkeys(extra):
        if not value.is_graph_output():
            copy.graph.outputs.append(value)
    names = list(dict.fromkeys([*outputs, *(v.name for v in extra)]))
    arrays = dict(zip(names, workspace.run(copy, feeds, names), strict=True))
    blocks = []
    for index, group in groups:
        match = matches[index]
        *operands, exact = (arrays[name] for name in group)
        q, k, v, *mask = operands
        blocks.append(
            BlockOperands(
                index=index,
                q=q,
                k=k,
                v=v,
                mask=mask[0] if mask else None,
                exact=exact,
                signature=Signature.of(match),
                scale=float(match.scale),
                window=match.window,
                softcap=match.softcap,
            )
        )
    return Capture(blocks, [arrays[name] for name in outputs])
