"""Classify what an attention mask computes, from its values at small sizes.

The bias is obtained by replaying the score steps on a zero score (see `scores`); its
values at two sizes decide the kind: all zero -> none; very negative exactly above the
bottom-right-aligned diagonal -> causal; also below a band -> sliding window; anything
else -> a bias tensor. A bias that depends on a data input (an attention mask) is padding
on top of whatever it computes when that input is all ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from attnrewrite.match import MaskKind, ScoreStep

VERY_NEGATIVE = -1e4  # a score at or below this is masked (exp underflows to 0 in fp32)


def replay_on_zero(
    steps: Sequence[ScoreStep], side: Callable[[int, int], np.ndarray], dtype: np.dtype
) -> np.ndarray:
    """Apply the steps to a zero score; `side(i, j)` is input j of step i."""
    result = np.zeros((), dtype=dtype)
    for i, step in enumerate(steps):
        node, at = step.node, step.score_input
        args = [result if j == at else side(i, j) for j in range(len(node.inputs))]
        result = _apply(node.op_type, node, args)
    return np.asarray(result)


def _apply(op: str, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if op == "Add":
            return args[0] + args[1]
        if op == "Sub":
            return args[0] - args[1]
        if op == "Mul":
            return args[0] * args[1]
        if op == "Div":
            return args[0] / args[1]
        if op == "Where":
            return np.where(args[0].astype(bool), args[1], args[2])
        if op == "Cast":
            return args[0].astype(ir.DataType(int(node.attributes["to"].value)).numpy())
        if op == "Identity":
            return args[0]
    raise ValueError(f"cannot replay {op}")


def classify(bias: np.ndarray, q_len: int, kv_len: int) -> tuple[MaskKind, int | None]:
    """Kind and window of an additive bias broadcastable to [..., q_len, kv_len]."""
    full = np.broadcast_to(bias.astype(np.float64), (*bias.shape[:-2], q_len, kv_len))
    masked = full <= VERY_NEGATIVE
    finite = np.where(masked, 0.0, full)
    has_values = bool(np.any(np.abs(finite) > 1e-6))
    if not masked.any():
        return (MaskKind.BIAS, None) if has_values else (MaskKind.NONE, None)
    if masked.all():
        return MaskKind.FULLY_MASKED, None
    rows = np.arange(q_len)[:, None]
    cols = np.arange(kv_len)[None, :]
    offset = kv_len - q_len
    causal_allowed = cols <= rows + offset
    if np.array_equal(masked, np.broadcast_to(~causal_allowed, masked.shape)):
        return (MaskKind.CAUSAL_BIAS, None) if has_values else (MaskKind.CAUSAL, None)
    window = int((~masked.reshape(-1, q_len, kv_len)[0, -1]).sum())
    band = causal_allowed & (cols > rows + offset - window)
    if 0 < window < kv_len and np.array_equal(masked, np.broadcast_to(~band, masked.shape)):
        return (MaskKind.CAUSAL_BIAS, window) if has_values else (MaskKind.SLIDING_WINDOW, window)
    return MaskKind.BIAS, None


def with_padding(kind: MaskKind) -> MaskKind:
    """The kind once a data-dependent (attention-mask) part is added on top of `kind`."""
    return {
        MaskKind.NONE: MaskKind.PADDING,
        MaskKind.CAUSAL: MaskKind.CAUSAL_PADDING,
        MaskKind.SLIDING_WINDOW: MaskKind.CAUSAL_PADDING,
    }.get(kind, kind)
