"""What each step between Q.K^T and the softmax does to the scores, replayed on a zero score:
the additive bias the steps add (rules.scores: the chain computes a * raw + f(0)).

One table for both finders, evaluated with the array module it is given: numpy in the ONNX
finder, on the mask values it evaluated (patterns.masks), torch in the FX block, at run time
and differentiably (torch.block). A `Step` holds no graph values, so the block can keep it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Step:
    """One score step as replay needs it: the op (ONNX spelling), the input carrying the
    scores, each input's number when known now (None: the scores, or a tensor given when
    replaying) and the op's parameter (Cast: dtype, Reshape: allowzero, Flatten: axis).
    The ONNX finder's steps also name their node: a rewrite replays it in the graph, on the
    node's own inputs and attributes (substitute.rewrite)."""

    op: str
    score_input: int
    constants: tuple[float | None, ...]
    param: Any = None
    node: str | None = None


def _reshape(xp: Any, args: list[Any], allowzero: int) -> Any:
    # Reshape(s, shape) -> s in shape   (a 0 copies the input's size unless allowzero)
    s, shape = args
    dims = [s.shape[k] if d == 0 and not allowzero else int(d) for k, d in enumerate(shape)]
    return xp.reshape(s, dims)


def _flatten(xp: Any, args: list[Any], axis: int) -> Any:
    # Flatten(s, axis) -> s as [prod(shape[:axis]), -1]
    return xp.reshape(args[0], (math.prod(args[0].shape[:axis]), -1))


Replay = Callable[[Any, list[Any], Any], Any]  # (array module, inputs, param) -> output
REPLAY: dict[str, Replay] = {
    "Add": lambda xp, a, _: a[0] + a[1],  # Add(s, t) -> s + t
    "Sub": lambda xp, a, _: a[0] - a[1],  # Sub(s, t) -> s - t
    "Mul": lambda xp, a, _: a[0] * a[1],  # Mul(s, c) -> s * c
    "Div": lambda xp, a, _: a[0] / a[1],  # Div(s, c) -> s / c
    "Where": lambda xp, a, _: xp.where(a[0] != 0, a[1], a[2]),  # Where(m, s, c) -> m ? s : c
    "Cast": lambda xp, a, dtype: xp.asarray(a[0], dtype=dtype),  # Cast(s) -> s as dtype
    "Identity": lambda xp, a, _: a[0],  # Identity(s) -> s
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Mask": lambda xp, a, _: a[1],  # Mask(s, m) -> m   (a fused op's mask, as given)
}


def replay(steps: Sequence[Step], arg: Callable[[int, int], Any], zero: Any, xp: Any) -> Any:
    """`zero` (an array of `xp`, numpy or torch) through the steps. `arg(i, j)` gives input j
    of step i where the step holds no number for it, asked in step and input order."""
    result = zero
    for i, step in enumerate(steps):
        args = [
            result if j == step.score_input else arg(i, j) if constant is None else constant
            for j, constant in enumerate(step.constants)
        ]
        result = REPLAY[step.op](xp, args, step.param)
    return result
