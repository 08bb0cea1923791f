"""Fit a method's per-head arrays to a trained model's heads (attention transfer, per head).

Multipole's expansion points:

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

PolySketch's feature map (query and key gains, a key shift; `attnrewrite.methods.polysketch`):
L-BFGS from zeros (the training-free kernel) on each head's relative squared error, on sampled
query rows, of the node's own kernel (by the dense formula on those rows: exact inside the
diagonal blocks, the seeded sketch outside, as the variant says) against the head's exact
output. Fitting the exact polynomial kernel instead and running the sketch gained almost
nothing on SmolLM2 (the sketch's error dominates there; benchmarks/RESULTS.md), whereas the
map can fit the one sketch the node draws. beta is the reference's own run-time fit on the
untouched q, k, so it is fixed during the fit (refitted on the mapped q, k, its grid search
makes the objective piecewise constant and L-BFGS stalled). The map is checked on as many
other rows: a head it does not improve there keeps zeros.

Conv-basis's query centres (`attnrewrite.methods.convbasis`): the bases model q.k along
diagonals, but a trained head's scores vary key by key through the direction its queries share
(u.k), which no Toeplitz profile follows. With a centre c per head, the bases model (q - c).k
and c.k is an exact key-wise weight. L-BFGS from the head's mean query on sampled rows of the
reference itself (change points recovered again at every step, as the node recovers them:
piecewise smooth, the selection has no gradient), then each head keeps whichever of zeros, its
mean query and the fitted point does best on as many other rows. On SmolLM2 at 2048 the
fitted point beat the mean query on few layers (held-out median head error of 9 heads: layer
29 0.71 -> 0.66, layers 0 and 10 level), the per-head choice did most (layer 20: the mean
query 1.73, the choice 1.20, default 1.12); the bases' error on heads that retrieve by content
stays (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
MAP_ROWS = 512  # PolySketch rows a block (SmolLM2, 2048: top-1 17.0%; 256, half the time: 13.7%)
MAP_ITERATIONS = 20  # PolySketch's L-BFGS iterations (fits 270 SmolLM2 heads at 2048 in < 10 min)
CENTER_ROWS = 512  # conv-basis rows a block
CENTER_ITERATIONS = 20  # conv-basis's L-BFGS iterations


def fitted_arrays(
    method: str, params: Mapping[str, object], block: BlockOperands
) -> dict[str, np.ndarray]:
    """The arrays `method` declares as fitted (attnrewrite.methods), fitted to `block`'s heads."""
    if method == "multipole":
        return {"expansion": fit_expansion(block, params)}
    if method == "polysketch":
        return fit_feature_map(block, params)
    if method == "convbasis":
        return {"center": fit_center(block, params)}
    raise ValueError(f"{method} has no parameters to fit")


OBJECTIVES = {
    "multipole": "relative squared error of each head's output against exact attention, "
    f"on {ROWS} or more sampled query rows with a far field (at least {MIN_QUERY_BLOCKS}"
    " whole query blocks where there are that many), by L-BFGS from the head's mean query;"
    " a head the fit does not improve on as many other rows keeps its mean query",
    "polysketch": "relative squared error of each head's output, with the node's own kernel "
    f"(its variant, its seeded sketch), against exact attention on {MAP_ROWS} sampled query "
    "rows, by L-BFGS from zeros (the training-free kernel); a head the fit does not improve on "
    "as many other rows keeps zeros",
    "convbasis": "relative squared error of each head's output (its change points recovered "
    f"again at every step) against exact attention on {CENTER_ROWS} sampled query rows, by "
    "L-BFGS from the head's mean query; each head keeps whichever of zeros, its mean query "
    "and the fitted point does best on as many other rows",
}


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
    fit_on, check_on = _split(candidates, max(MIN_QUERY_BLOCKS, -(-rows // grid.block)))
    if not len(fit_on):  # one query block with a far field: no fit that could be checked
        return start.to(torch.float32).numpy()
    fitting = _Objective.of(block, grid, fit_on)
    expansion = start.clone().requires_grad_(True)
    _minimise([expansion], lambda: fitting(expansion).sum(), iterations)
    checking = _Objective.of(block, grid, check_on)
    with torch.no_grad():
        fitted = torch.nan_to_num(expansion.detach(), nan=0.0, posinf=0.0, neginf=0.0)
        better = checking(fitted) < checking(start)
    return torch.where(better[:, None], fitted, start).to(torch.float32).numpy()


def _mask(block: BlockOperands) -> Tensor | None:
    """The block's mask as the nodes read it: a key-wise mask's last query row."""
    import torch

    bias = None if block.mask is None else torch.from_numpy(block.mask)
    return bias[..., -1:, :] if bias is not None and block.signature.keywise else bias


def _split(candidates: Tensor, wanted: int) -> tuple[Tensor, Tensor]:
    """Two disjoint samples of `candidates` (query rows or blocks), `wanted` each or half of
    them, sorted: one to fit on, one to check the fit on. The same on the same inputs (SEED)."""
    import torch

    order = candidates[
        torch.randperm(len(candidates), generator=torch.Generator().manual_seed(SEED))
    ]
    size = min(wanted, len(order) // 2)
    return order[:size].sort().values, order[size : 2 * size].sort().values


def _relative_squared(out: Tensor, target: Tensor) -> Tensor:
    """Each head's relative squared error [Hq] over [B, Hq, rows, dv] outputs."""
    norm = target.square().sum(dim=(0, 2, 3)).clamp_min(1e-30)
    return (out - target).square().sum(dim=(0, 2, 3)) / norm


def _minimise(tensors: list[Tensor], objective: Callable[[], Tensor], iterations: int) -> None:
    """Minimise objective() over `tensors`, in place: L-BFGS with a strong-Wolfe line search."""
    import torch

    optimizer = torch.optim.LBFGS(
        tensors, lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = objective()
        value.backward()
        return value

    optimizer.step(closure)


def _grid(block: BlockOperands, params: Mapping[str, object]) -> Grid:
    """The reference's layout of the block's operands (float64), its mask as multipole reads
    it: a key-wise mask's last query row, what the body reads."""
    import torch

    from attnrewrite.methods.multipole import Grid

    q, k, v = (torch.from_numpy(x).to(torch.float64) for x in (block.q, block.k, block.v))
    bias = _mask(block)
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


def fit_feature_map(
    block: BlockOperands,
    params: Mapping[str, object],
    rows: int = MAP_ROWS,
    iterations: int = MAP_ITERATIONS,
) -> dict[str, np.ndarray]:
    """PolySketch's query_gain, key_gain and key_shift ([Hq, d] float32 each) for `block`
    with polysketch `params`: fitted on `rows` sampled query rows, checked per head on as many
    others (a head the map does not improve there keeps zeros). Zeros where the block has
    fewer than two rows that see a key (nothing to check a fit on)."""
    import torch

    head = _PolyHead.of(block, params)
    shape = (block.heads, block.q.shape[-1])
    fit_on, check_on = _split(head.rows, rows)
    names = ("query_gain", "key_gain", "key_shift")
    if not len(fit_on):
        return {name: np.zeros(shape, np.float32) for name in names}
    arrays = [torch.zeros(shape, requires_grad=True) for _ in names]
    _minimise(arrays, lambda: head.error(fit_on, arrays).sum(), iterations)
    with torch.no_grad():
        fitted = [torch.nan_to_num(a.detach(), nan=0.0, posinf=0.0, neginf=0.0) for a in arrays]
        better = head.error(check_on, fitted) < head.error(check_on, None)
    return {
        name: torch.where(better[:, None], a, 0.0).numpy()
        for name, a in zip(names, fitted, strict=True)
    }


@dataclass(frozen=True)
class _PolyHead:
    """A block's operands as the node computes them (float32, k and v repeated to the query
    heads, the key-wise mask as per-key weights) and its run-time beta (fitted in float64)."""

    q: Tensor
    k: Tensor
    x: Tensor  # [v w, w]: values and the normaliser's column, weighted per key
    exact: Tensor
    beta: Tensor | None  # [B, Hq] (None: fit="none", the layer-normed kernel)
    rows: Tensor  # query rows that see at least one key
    scale: float
    is_causal: bool
    degree: int
    sketch_size: int
    block: int
    variant: str
    seed: int

    @classmethod
    def of(cls, block: BlockOperands, params: Mapping[str, object]) -> _PolyHead:
        import torch

        from attnrewrite.methods.exact import expand_kv, key_weights, split_bias
        from attnrewrite.methods.polysketch import fit_shift

        q, k, v = (torch.from_numpy(x).to(torch.float32) for x in (block.q, block.k, block.v))
        bsz, hq, sq, _ = q.shape
        skv = k.shape[2]
        k, v = expand_kv(k, v, hq)
        bias = _mask(block)
        key_bias, _ = split_bias(bias, (bsz, hq, sq, skv), torch.float32)
        w = key_weights(key_bias, bsz, hq, skv, q)
        degree = int(params["degree"])
        beta = None
        if params["fit"] == "softmax_fit":
            beta = fit_shift(
                q.double(),
                k.double(),
                w.double(),
                scale=block.scale,
                degree=degree,
                is_causal=block.is_causal,
                seed=int(params["seed"]),
            ).float()
        first = max(0, sq - skv) if block.is_causal else 0
        return cls(
            q,
            k,
            torch.cat([v * w[..., None], w[..., None]], dim=-1),
            torch.from_numpy(block.exact).to(torch.float32),
            beta,
            torch.arange(first, sq),
            block.scale,
            block.is_causal,
            degree,
            int(params["sketch_size"]),
            int(params["block"]),
            str(params["variant"]),
            int(params["seed"]),
        )

    def error(self, chosen: Tensor, arrays: list[Tensor] | None) -> Tensor:
        """Each head's relative squared error on the `chosen` query rows, with the map
        `arrays` (query gains, key gains, key shifts; None: the training-free kernel)."""
        import torch

        from attnrewrite.methods.polysketch import feature_inputs, fitted_map, sketch_half

        q, k = self.q[:, :, chosen], self.k
        if arrays is not None:
            q, k = fitted_map(q, k, *arrays)
        aq, ak = feature_inputs(q, k, self.beta, self.scale)
        kern = (aq @ ak.transpose(-1, -2)) ** self.degree
        position = chosen + k.shape[2] - self.q.shape[2]  # each row's position among the keys
        keys = torch.arange(k.shape[2])
        if self.variant != "exact_poly":  # the sketch's kernel outside the exact diagonal blocks
            half = self.degree // 2
            hq, hk = (sketch_half(a, half, self.sketch_size, self.seed) for a in (aq, ak))
            far = (hq @ hk.transpose(-1, -2)).square()
            own = keys // self.block == (position // self.block)[:, None]
            kern = torch.where(own, kern, far) if self.variant == "mixed" else far
        if self.is_causal:
            kern = kern * (keys <= position[:, None])
        y = kern @ self.x
        den = y[..., -1:] + (1.0 if self.beta is None else 0.0)
        out = y[..., :-1] / torch.where(den > 0, den, 1.0)
        return _relative_squared(out, self.exact[:, :, chosen])


def fit_center(
    block: BlockOperands,
    params: Mapping[str, object],
    rows: int = CENTER_ROWS,
    iterations: int = CENTER_ITERATIONS,
) -> np.ndarray:
    """Conv-basis's query centres [Hq, d] (float32) for `block` with convbasis `params`:
    fitted on `rows` sampled query rows through the reference (change points recovered on the
    centred queries at every step, as the node does), checked per head on as many others
    against zeros (the method untouched) and the head's mean query. Zeros where the block has
    fewer than two rows that see a key."""
    import torch

    from attnrewrite.methods import convbasis

    q, k, v = (torch.from_numpy(x).to(torch.float32) for x in (block.q, block.k, block.v))
    exact = torch.from_numpy(block.exact).to(torch.float32)
    bias = _mask(block)
    sq, skv = q.shape[2], k.shape[2]
    first = max(0, sq - skv) if block.is_causal else 0
    fit_on, check_on = _split(torch.arange(first, sq), rows)
    zeros = torch.zeros(block.heads, q.shape[-1])
    if not len(fit_on):
        return zeros.numpy()
    options = {**params, "transform": "direct"}

    def error(center: Tensor, chosen: Tensor) -> Tensor:
        out = convbasis.rows_of(
            chosen,
            q,
            k,
            v,
            scale=block.scale,
            is_causal=block.is_causal,
            bias=bias,
            window=block.window,
            center=center,
            **options,
        )
        return _relative_squared(out, exact[:, :, chosen])

    mean = q.mean(dim=(0, 2))
    center = mean.clone().requires_grad_(True)
    _minimise([center], lambda: error(center, fit_on).sum(), iterations)
    with torch.no_grad():
        fitted = torch.nan_to_num(center.detach(), nan=0.0, posinf=0.0, neginf=0.0)
        tried = torch.stack([zeros, mean, fitted])  # [3, Hq, d]
        errors = torch.stack([error(c, check_on) for c in tried])  # [3, Hq]
        best = torch.nan_to_num(errors, nan=torch.inf).argmin(dim=0)
    return tried[best, torch.arange(block.heads)].numpy()
