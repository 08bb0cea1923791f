"""What each head could get: every candidate measured on every head, its error and its cost.

Errors and costs are measured (plan.measure): the candidate's node on the block's captured
operands against the block's exact output, and its time at the target length. A candidate the
method cannot honour on a block (a mask it cannot carry, a body that fails) gets no option
there, with the reason kept for rewrite.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from attnrewrite.plan.calibrate import BlockOperands
from attnrewrite.plan.candidates import EXACT_CHUNKS, ORIGINAL, Candidate
from attnrewrite.plan.fit import fitted_arrays
from attnrewrite.plan.measure import Bench, Cost
from attnrewrite.substitute.methods import get_method


@dataclass(frozen=True)
class HeadChoice:
    block: int  # index in the finder's matches
    head: int
    candidate: Candidate
    error: float  # measured relative error of this head's output (0 for exact)
    cost: float  # measured ms per head at the target length (the node's fixed part apart)
    fixed: float = 0.0  # measured ms of a node of this candidate whatever its heads
    flops: float = 0.0  # attention work per head at the target length
    split: float = 0.0  # measured ms that splitting this head's block into groups adds
    fitted: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False)  # [1, d] rows


@dataclass(frozen=True)
class BlockOptions:
    """errors[c][h]: candidate c on head h (inf where the method cannot run on the block)."""

    block: BlockOperands
    candidates: tuple[Candidate, ...]
    errors: np.ndarray
    costs: dict[str, Cost]  # candidate label -> its node's cost on this block
    original: Cost  # attention as the exported model computes it (the whole score matrix)
    reasons: dict[str, str]  # candidate label -> why it cannot run on this block
    fitted: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # label -> arrays


def measure(
    bench: Bench, block: BlockOperands, candidates: Sequence[Candidate], seq_len: int
) -> BlockOptions:
    errors = np.full((len(candidates), block.heads), np.inf)
    costs, reasons, fitted = {}, {}, {}
    for row, cand in enumerate(candidates):
        why = get_method(cand.method, cand.params).limit(block.signature)
        if why is not None:
            reasons[cand.label] = why
            continue
        try:
            arrays = fitted_arrays(cand.method, cand.resolved(), block) if cand.fitted else None
            errors[row] = bench.errors(cand, block, arrays)
            costs[cand.label] = bench.cost(cand, block, seq_len)
            if arrays is not None:
                fitted[cand.label] = arrays
        except Exception as err:  # onnxruntime raises several types: the block keeps exact
            reasons[cand.label] = f"{cand.label} did not run: {str(err).splitlines()[0][:200]}"
            errors[row] = np.inf
    return BlockOptions(
        block,
        tuple(candidates),
        errors,
        costs,
        bench.cost(ORIGINAL, block, seq_len),
        reasons,
        fitted,
    )


def options(measured: BlockOptions, bench: Bench, seq_len: int) -> list[list[HeadChoice]]:
    """Per head: exact, then every candidate that ran on it, with its error and costs."""
    block = measured.block
    d = block.q.shape[-1]

    split = bench.split_cost(block, seq_len) if block.heads > 1 else 0.0

    def choice(head: int, cand: Candidate, error: float, cost: Cost) -> HeadChoice:
        flops = cand.flops(seq_len, d, block.is_causal)
        rows = {k: v[head : head + 1] for k, v in measured.fitted.get(cand.label, {}).items()}
        return HeadChoice(
            block.index, head, cand, error, cost.per_head_ms, cost.fixed_ms, flops, split, rows
        )

    exact, exact_cost = fastest_exact(bench, block, seq_len)
    per_head = []
    for head in range(block.heads):
        choices = [choice(head, exact, 0.0, exact_cost)]
        for row, cand in enumerate(measured.candidates):
            error = float(measured.errors[row, head])
            if np.isfinite(error):
                choices.append(choice(head, cand, error, measured.costs[cand.label]))
        per_head.append(choices)
    return per_head


def fastest_exact(bench: Bench, block: BlockOperands, seq_len: int) -> tuple[Candidate, Cost]:
    """Exact attention in the number of causal chunks that runs fastest on this block at
    `seq_len` (bidirectional attention has nothing to chunk)."""
    if not block.is_causal:
        return ORIGINAL, bench.cost(ORIGINAL, block, seq_len)
    timed = [(cand, bench.cost(cand, block, seq_len)) for cand in EXACT_CHUNKS]
    return min(timed, key=lambda pair: pair[1].ms(block.heads))
