"""Fit multipole's expansion points to a trained model's heads (attention transfer, per head).

Average pooling stands a far group of keys in by their mean, which under-weights the group
(Jensen) and gives it the plain mean of its values, whereas a trained head reads a few of them.
With an expansion point u per head, the group is pooled with weights exp(u.k_j): its logit is
the first-order expansion of the group's log-sum-exp around the query u, its value the
softmax-weighted mean a query at u reads (`attnrewrite.methods.multipole`). A head's queries
share a direction (why trained models have attention sinks), so one u per head, starting at
the head's mean query (scale q), gets far closer than u = 0, the plain averages.

The fit needs no backprop through the model: on a block's captured q, k, v and exact output
(`calibrate.capture`), L-BFGS on the torch reference minimises each head's relative squared
error on a sample of query blocks that have a far field (the near field, which u does not
touch, computed once); heads are independent, so one optimisation fits a whole block. The
fitted point is then checked on as many other query blocks: a head it does not improve there
keeps its mean query, so a fit on few rows does not chase them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from attnrewrite.plan.calibrate import BlockOperands

if TYPE_CHECKING:
    from torch import Tensor

    from attnrewrite.methods.multipole import Grid

ROWS = 512  # query rows sampled per block (whole query blocks), enough to fit d numbers a head
MIN_QUERY_BLOCKS = 4  # whole query blocks sampled at least: one 512-row block fits big blocks badly
ITERATIONS = 30  # L-BFGS iterations (on two SmolLM2 blocks at 2048, 20 did about as well)
SEED = 0  # which query blocks are sampled: the same fit on the same inputs


def fitted_arrays(
    method: str, params: Mapping[str, object], block: BlockOperands
) -> dict[str, np.ndarray]:
    """The arrays `method` declares as fitted (attnrewrite.methods), fitted to `block`'s heads."""
    if method != "multipole":
        raise ValueError(f"{method} has no parameters to fit")
    return {"expansion": fit_expansion(block, params)}


def fit_expansion(
    block: BlockOperands,
    params: Mapping[str, object],
    rows: int = ROWS,
    iterations: int = ITERATIONS,
) -> np.ndarray:
    """Expansion points [Hq, d] (float32) for `block` with multipole `params`: fitted on
    `rows` sampled query rows (at least MIN_QUERY_BLOCKS whole query blocks where the block
    has twice that many with a far field: multipole block 512 at n = 4096 fitted on one block
    reached 94.8% held-out top-1 on SmolLM2, on three 95.2%), checked per head on as many
    others; a head whose fitted point does worse there than its mean query keeps the mean
    query (a fit on few rows can chase them). Zeros where the block has no far field at its
    length (nothing to fit)."""
    import torch

    grid = _grid(block, params)
    start = block.scale * grid.q.mean(dim=(0, 2))  # [Hq, d]: the head's mean query
    far_blocks = grid.kblk >= 2 if block.is_causal else torch.ones_like(grid.kblk, dtype=bool)
    candidates = torch.nonzero(far_blocks)[:, 0]
    if grid.top < 1 or not len(candidates):
        return np.zeros(start.shape, np.float32)
    order = candidates[
        torch.randperm(len(candidates), generator=torch.Generator().manual_seed(SEED))
    ]
    per_set = min(max(MIN_QUERY_BLOCKS, -(-rows // grid.block)), len(order) // 2)
    if not per_set:  # one query block with a far field: no fit that could be checked
        return start.to(torch.float32).numpy()
    fit_on, check_on = order[:per_set].sort().values, order[per_set : 2 * per_set].sort().values
    fitting = _Objective.of(block, grid, fit_on)
    expansion = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [expansion], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = fitting(expansion).sum()
        value.backward()
        return value

    optimizer.step(closure)
    checking = _Objective.of(block, grid, check_on)
    with torch.no_grad():
        fitted = torch.nan_to_num(expansion.detach(), nan=0.0, posinf=0.0, neginf=0.0)
        better = checking(fitted) < checking(start)
    return torch.where(better[:, None], fitted, start).to(torch.float32).numpy()


def _grid(block: BlockOperands, params: Mapping[str, object]) -> Grid:
    """The reference's layout of the block's operands (float64), its mask as multipole reads
    it: a key-wise mask's last query row, what the body reads."""
    import torch

    from attnrewrite.methods.multipole import Grid

    q, k, v = (torch.from_numpy(x).to(torch.float64) for x in (block.q, block.k, block.v))
    bias = None if block.mask is None else torch.from_numpy(block.mask)
    if bias is not None and block.signature.keywise:
        bias = bias[..., -1:, :]
    return Grid.of(
        q,
        k,
        v,
        scale=block.scale,
        is_causal=block.is_causal,
        bias=bias,
        window=block.window,
        block=int(params["block"]),
        coarse=int(params["coarse"]),
        levels=int(params["levels"]),
        sinks=int(params["sinks"]),
    )


@dataclass(frozen=True)
class _Objective:
    """Each head's relative squared error on some query blocks, as a function of the expansion
    points: the near field and the sinks, which the points do not touch, computed once."""

    grid: Grid
    chosen: Tensor  # query blocks
    near: _Partial
    target: Tensor  # the exact output on those blocks [B, Hq, blocks, m, dv]
    kept: Tensor  # 1 for real query rows, 0 for the grid's padding
    norm: Tensor  # [Hq]

    @classmethod
    def of(cls, block: BlockOperands, grid: Grid, chosen: Tensor) -> _Objective:
        import torch
        import torch.nn.functional as F

        exact = torch.from_numpy(block.exact).to(torch.float64)
        sq, m, lead, blocks = exact.shape[2], grid.block, grid.lead, grid.qb.shape[2]
        padded = F.pad(exact, (0, 0, lead, blocks * m - lead - sq)).unflatten(2, (blocks, m))
        index = torch.arange(blocks * m).unflatten(0, (blocks, m))[chosen] - lead
        kept = ((index >= 0) & (index < sq)).to(torch.float64)[None, None, :, :, None]
        target = padded[:, :, chosen]
        norm = (target.square() * kept).sum(dim=(0, 2, 3, 4)).clamp_min(1e-300)
        with torch.no_grad():
            near = _Partial.of(*grid.near(chosen))
        return cls(grid, chosen, near, target, kept, norm)

    def __call__(self, expansion: Tensor) -> Tensor:
        out = self.near.join(_Partial.of(*self.grid.far(self.chosen, expansion)))
        return ((out - self.target).square() * self.kept).sum(dim=(0, 2, 3, 4)) / self.norm


@dataclass(frozen=True)
class _Partial:
    """A softmax over some of a row's keys, kept as (max logit, sum of exp, exp-weighted sum of
    values), so the near field is computed once and joined with each trial's far field."""

    top: Tensor  # [..., m, 1]
    total: Tensor  # [..., m, 1]
    weighted: Tensor  # [..., m, dv]

    @classmethod
    def of(cls, logits: list[Tensor], values: list[Tensor]) -> _Partial:
        import torch

        scores = torch.cat(logits, dim=-1)
        top = scores.amax(dim=-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, 0.0)
        p = torch.exp(scores - top)
        return cls(top, p.sum(dim=-1, keepdim=True), p @ torch.cat(values, dim=-2))

    def join(self, other: _Partial) -> Tensor:
        """softmax-weighted values over both parts' keys (zeros where no key is visible)."""
        import torch

        top = torch.maximum(self.top, other.top)
        mine, theirs = torch.exp(self.top - top), torch.exp(other.top - top)
        total = self.total * mine + other.total * theirs
        weighted = self.weighted * mine + other.weighted * theirs
        return weighted / torch.where(total > 0, total, 1.0)
