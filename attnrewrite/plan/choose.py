"""Measure every candidate on every head: what each head could get, at what error and cost.

Errors are measured by the methods' torch references in float64 on the captured operands:
relative Frobenius error of each head's attention output against exact attention, over the
whole calibration batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnrewrite import methods as references
from attnrewrite.plan.calibrate import BlockOperands
from attnrewrite.plan.candidates import EXACT, Candidate


@dataclass(frozen=True)
class HeadChoice:
    block: int  # index in the finder's matches
    head: int
    candidate: Candidate
    error: float  # measured relative error of this head's output (0 for exact)
    cost: float  # flops at the target length


@dataclass(frozen=True)
class HeadErrors:
    """errors[c][h]: candidate c on head h (inf where the method cannot honour the block)."""

    block: BlockOperands
    candidates: tuple[Candidate, ...]
    errors: np.ndarray
    reasons: dict[str, str]  # candidate label -> why it cannot run on this block


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float64)


def measure(block: BlockOperands, candidates: Sequence[Candidate]) -> HeadErrors:
    q, k, v = (_tensor(x) for x in (block.q, block.k, block.v))
    bias = None
    if block.mask is not None:
        mask = block.mask[..., -1:, :] if block.keywise else block.mask
        bias = torch.from_numpy(mask) if mask.dtype == np.bool_ else _tensor(mask)
    common = {
        "scale": block.scale,
        "is_causal": block.is_causal,
        "bias": bias,
        "window": block.window,
    }
    exact = references.get("exact")(q, k, v, **common)
    norms = torch.linalg.vector_norm(exact, dim=(0, 2, 3)).numpy()
    errors = np.full((len(candidates), q.shape[1]), np.inf)
    reasons = {}
    for row, cand in enumerate(candidates):
        try:
            out = references.get(cand.method)(q, k, v, **common, **cand.params)
        except ValueError as err:
            reasons[cand.label] = str(err)
            continue
        diff = torch.linalg.vector_norm(out - exact, dim=(0, 2, 3)).numpy()
        errors[row] = np.where(norms > 0, diff / np.where(norms > 0, norms, 1.0), diff)
    return HeadErrors(block, tuple(candidates), errors, reasons)


def options(measured: HeadErrors, seq_len: int) -> list[list[HeadChoice]]:
    """Per head: exact, then every candidate that ran on it, with its error and cost."""
    block = measured.block
    d = block.q.shape[-1]
    costs = [c.cost(seq_len, d, block.is_causal) for c in measured.candidates]
    exact_cost = EXACT.cost(seq_len, d, block.is_causal)
    per_head = []
    for head in range(measured.errors.shape[1]):
        choices = [HeadChoice(block.index, head, EXACT, 0.0, exact_cost)]
        for row, cand in enumerate(measured.candidates):
            error = float(measured.errors[row, head])
            if np.isfinite(error):
                choices.append(HeadChoice(block.index, head, cand, error, costs[row]))
        per_head.append(choices)
    return per_head
