"""Below the P.V MatMul: the context merged back to [B, S, H*d] as written for a com.microsoft
op. The walk from the Softmax down to P.V is the shared one (rules.probs)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnrewrite.evaluate import constant_of
from attnrewrite.patterns.graph_utils import consumers, ints_attr, is_op


def merged_heads(pv: ir.Node) -> tuple[ir.Node, ir.Node] | None:
    """(Transpose, Reshape) when the context is only merged back to [B, S, H*d] as written
    for a com.microsoft op: Reshape(Transpose(p @ v, [0, 2, 1, 3]), [0, 0, -1])."""
    (transpose, *others) = consumers(pv.outputs[0]) or [None]
    if others or not is_op(transpose, "Transpose") or ints_attr(transpose, "perm") != (0, 2, 1, 3):
        return None
    (reshape, *others) = consumers(transpose.outputs[0]) or [None]
    if others or not is_op(reshape, "Reshape") or reshape.inputs[0] is not transpose.outputs[0]:
        return None
    target = constant_of(reshape.inputs[1])
    if target is None or list(np.ravel(target)) != [0, 0, -1]:
        return None
    return transpose, reshape
