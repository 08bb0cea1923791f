"""Capture every block's canonical q, k, v and mask on calibration inputs.

The model is exact-rewritten in memory: each attnrewrite node's inputs are then exactly the
canonical operands ([B, H, S, d] after the layout adapters, scale and mask as matched), so
exposing them as graph outputs and running onnxruntime captures what every candidate method
will be fed, without re-implementing any part of the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from attnrewrite.errors import AttnRewriteError
from attnrewrite.match import AttentionMatch
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import substitute
from attnrewrite.substitute.signature import Signature


@dataclass(frozen=True)
class BlockOperands:
    """One block's operands on the calibration batch, and how it attends."""

    index: int  # position in the finder's matches
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None
    scale: float
    is_causal: bool
    window: int | None
    keywise: bool


def copy_with_matches(
    model: ir.Model, matches: Sequence[AttentionMatch]
) -> tuple[ir.Model, list[AttentionMatch]]:
    """A deep copy of `model` and its attention blocks, in the order of `matches` (matches
    point into their own graph, so a copy must be searched again; the finder is
    deterministic)."""
    copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    copied = list(find_attention(copy).matches)
    if [m.anchor for m in copied] != [m.anchor for m in matches]:
        raise ValueError("a copy of the model shows different attention blocks")
    return copy, copied


def run(
    model: ir.Model, feeds: Mapping[str, np.ndarray], names: Sequence[str] | None = None
) -> list[np.ndarray]:
    """Run an in-memory model in onnxruntime (CPU) on the feeds it takes; a model that does
    not run on these inputs is one clear error, not an onnxruntime traceback."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        runner = ort.InferenceSession(
            ir.serde.serialize_model(model).SerializeToString(), options, ["CPUExecutionProvider"]
        )
        known = {i.name for i in runner.get_inputs()}
        return runner.run(names, {k: v for k, v in feeds.items() if k in known})
    except Exception as err:  # onnxruntime raises several types, all meaning "cannot run"
        raise AttnRewriteError(
            f"the model does not run on the calibration inputs: {str(err).splitlines()[0]}"
        ) from None


def capture(
    model: ir.Model, matches: Sequence[AttentionMatch], feeds: Mapping[str, np.ndarray]
) -> list[BlockOperands]:
    """Operands of every rank-4 main-graph block (others cannot be split per head)."""
    copy, copied = copy_with_matches(model, matches)
    result = substitute(copy, copied, get_method("exact"))
    values = {v.name: v for v in copy.graph.inputs}
    values |= {v.name: v for node in copy.graph for v in node.outputs}
    nodes = {node.name: node for node in copy.graph}
    wanted: list[tuple[int, list[str]]] = []
    for rewritten in result.rewritten:
        if rewritten.match.graph_name == "main" and rewritten.match.rank == 4:
            inputs = nodes[rewritten.node].inputs
            wanted.append((copied.index(rewritten.match), [v.name for v in inputs if v]))
    names = sorted({name for _, group in wanted for name in group})
    for name in names:
        if values[name] not in copy.graph.outputs:
            copy.graph.outputs.append(values[name])
    arrays = run(copy, feeds, names)
    by_name = dict(zip(names, arrays, strict=True))
    blocks = []
    for index, group in wanted:
        match = matches[index]
        q, k, v, *mask = (by_name[name] for name in group)
        blocks.append(
            BlockOperands(
                index=index,
                q=q,
                k=k,
                v=v,
                mask=mask[0] if mask else None,
                scale=float(match.scale),
                is_causal=match.mask.is_causal,
                window=match.window,
                keywise=Signature.of(match).keywise,
            )
        )
    return blocks
