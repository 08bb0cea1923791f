"""Classify what an attention mask computes, from its values at a few lengths.

The bias is obtained by replaying the score steps on a zero score (see `scores`); its
values at two small sizes decide the kind: all zero -> none; very negative exactly above
the bottom-right-aligned diagonal -> causal; also below a band -> sliding window; anything
else -> a bias tensor. A bias that depends on a data input (an attention mask) is padding
on top of whatever it computes when that input is all ones.

A window wider than the small sizes looks causal (or like no mask) there, so a mask whose
constants could encode a wider one (an integer compared with positions, a stored causal
table) is also evaluated at a length beyond them (`probe_length`), and the kinds seen at
every length are merged (`merge`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import onnx_ir as ir

from attnrewrite.match import RESHAPES, MaskKind
from attnrewrite.patterns.graph_utils import int_attr
from attnrewrite.patterns.scores import ScoreStep
from attnrewrite.rules.replay import Step, replay

# A bias at or below this masks its key: exp underflows to 0 in fp32 for any score within
# thousands of the row's largest. Half of the -10000 that onnxruntime's kernels and older
# exporters add, so an attention bias added on top of that does not unmask it.
VERY_NEGATIVE = -5e3
MAX_PROBE = 4098  # longest length a mask is evaluated at: windows up to 4096 are found
SENTINEL = 2**24  # integers this large are "to the end" markers (Slice ends), not windows
ArrayT = TypeVar("ArrayT")


def replay_on_zero(
    steps: Sequence[Step],
    side: Callable[[int, int], np.ndarray],
    dtype: np.dtype,
    scores_shape: Sequence[int] = (),
) -> np.ndarray:
    """Apply the steps to a zero score (rules.replay, in numpy); `side(i, j)` is input j of
    step i. Steps that reshape the scores need the zero in the scores' shape, and the bias is
    returned in it."""
    reshapes = any(step.op in RESHAPES for step in steps)
    zero = np.zeros(tuple(scores_shape) if reshapes else (), dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result = replay(steps, side, zero, np)
    return np.reshape(result, scores_shape) if reshapes else np.asarray(result)


PARAMS: dict[str, Callable[[ir.Node], object]] = {  # what rules.replay needs of a node
    "Cast": lambda node: ir.DataType(int(node.attributes["to"].value)).numpy(),
    "Reshape": lambda node: int_attr(node, "allowzero", 0),
    "Flatten": lambda node: int_attr(node, "axis", 1),
}


def replayable(step: ScoreStep) -> Step:
    """The step as rules.replay takes it, naming its node: every input but the scores given
    when replaying (`side`, or the node's own inputs in a rewrite)."""
    node = step.node
    param = PARAMS[node.op_type](node) if node.op_type in PARAMS else None
    return Step(node.op_type, step.score_input, (None,) * len(node.inputs), param, node.name)


def hidden(bias: ArrayT) -> ArrayT:
    """Which entries of an additive bias hide their key (a numpy array or a torch tensor).

    One test for both finders, by what the softmax computes: -inf, finfo.min and the -1e4
    of older exporters all give the key a weight of exactly 0, so all are a mask; a finite
    bias above VERY_NEGATIVE (ALiBi, relative positions) is a value. (An `isfinite` test
    would call a -1e4 causal mask a bias tensor, and a finfo.min one too unless converted.)
    """
    return bias <= VERY_NEGATIVE


def classify(bias: np.ndarray, q_len: int, kv_len: int) -> tuple[MaskKind, int | None]:
    """Kind and window of an additive bias broadcastable to [..., q_len, kv_len]."""
    full = np.broadcast_to(bias.astype(np.float64), (*bias.shape[:-2], q_len, kv_len))
    masked = hidden(full)
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


def probe_length(constants: Sequence[np.ndarray], evaluated: int) -> int | None:
    """A length beyond any window the mask's constants could encode, or None when none could
    be wider than `evaluated`: integer scalars (a band width compared with position
    differences) count +2, float or boolean tables (a stored causal buffer) their last axis.
    It may exceed MAX_PROBE: the caller then cannot check the window."""
    lengths = [0]
    for const in constants:
        if np.issubdtype(const.dtype, np.integer) and const.size == 1:
            width = abs(int(np.ravel(const)[0]))
            if width < SENTINEL:
                lengths.append(width + 2)
        elif const.ndim >= 2 and const.shape[-1] == const.shape[-2]:
            lengths.append(const.shape[-1])
    longest = max(lengths)
    return longest if longest > evaluated else None


def merge(found: Sequence[tuple[MaskKind, int | None, int]]) -> tuple[MaskKind, int | None]:
    """One kind from (kind, window, key length) at several lengths: a window shows as plain
    causal wherever the keys fit in it, so causal at short lengths and a window w at a long
    one is that window; any other disagreement is a bias tensor."""
    distinct = {(kind, window) for kind, window, _ in found}
    if len(distinct) == 1:
        return distinct.pop()
    windowed = {(kind, window) for kind, window, _ in found if window is not None}
    if len(windowed) == 1:
        kind, window = windowed.pop()
        plain = MaskKind.CAUSAL if kind == MaskKind.SLIDING_WINDOW else kind
        if all(
            (k, w) == (kind, window) or (k == plain and w is None and kv_len <= window)
            for k, w, kv_len in found
        ):
            return kind, window
    return MaskKind.BIAS, None
