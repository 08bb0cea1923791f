"""Vertical-slash: the sets it selects, exactness when they cover every key, convergence."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnrewrite.methods import exact, get, verticalslash, window

from .test_inputs import F64, padding, rand_qkv, rel_err, relative_qkv

SCALE = 0.4


def _alibi(sq: int, skv: int) -> torch.Tensor:
    return -0.2 * (torch.arange(sq)[:, None] + skv - sq - torch.arange(skv)).abs().to(F64)


@pytest.mark.parametrize(("sq", "skv"), [(24, 24), (9, 24), (1, 24), (30, 17)])
@pytest.mark.parametrize("budget", ["vertical", "slash"])
def test_a_budget_covering_every_key_is_exact(sq, skv, budget):
    q, k, v = rand_qkv(sq=sq, skv=skv)
    small = {"vertical": 2, "slash": 3, "sinks": 1, "local": 2, "last": 4}
    for bias in (None, padding(skv, left=[2, 0], right=[0, 3]), _alibi(sq, skv)):
        for model_window in (None, 7):
            common = {"scale": SCALE, "is_causal": True, "bias": bias, "window": model_window}
            ref = exact.attention(q, k, v, **common)
            out = verticalslash.attention(q, k, v, **common, **{**small, budget: skv})
            assert rel_err(out, ref) < 1e-14


def _chosen(weights: torch.Tensor, positions: torch.Tensor, **params: int) -> tuple:
    """The vertical keys and slash offsets a head should use, from its exact weights [L, Skv],
    ranked here with Python's stable sort (forced entries first, ties to the lower index)."""
    skv = weights.shape[-1]
    column = weights.sum(0).tolist()
    diagonal = [
        sum(weights[r, p - o].item() for r, p in enumerate(positions) if p >= o) for o in range(skv)
    ]

    def top(scores: list[float], forced: int, k: int) -> set[int]:
        rank = sorted(range(skv), key=lambda j: (j >= forced, -scores[j]))
        return set(rank[:k])

    return (
        top(column, params["sinks"], params["vertical"]),
        top(diagonal, params["local"], params["slash"]),
    )


@pytest.mark.parametrize(("sq", "skv"), [(20, 20), (12, 30), (1, 30)])
@pytest.mark.parametrize("bias", ["none", "padding", "alibi"])
def test_weights_live_on_the_chosen_columns_and_diagonals(sq, skv, bias):
    """With V = I the output is the weight matrix: its support is, per head, the vertical keys
    and slash diagonals ranked from the exact weights of the last queries, under the mask."""
    q, k, _ = rand_qkv(sq=sq, skv=skv, seed=3)
    v = torch.eye(skv, dtype=F64).expand(2, 2, skv, skv)
    mask = {"none": None, "padding": padding(skv, [3, 0], [0, 4]), "alibi": _alibi(sq, skv)}[bias]
    params = {"vertical": 5, "slash": 6, "last": 4, "sinks": 2, "local": 3}
    weights = verticalslash.attention(q, k, v, scale=SCALE, is_causal=True, bias=mask, **params)
    full = exact.attention(q, k, v, scale=SCALE, is_causal=True, bias=mask)
    positions = torch.arange(sq) + skv - sq
    visible = full > 0  # the model's own mask (exp never underflows at these scales)
    for b in range(2):
        for h in range(4):
            n_last = min(params["last"], sq)
            keys, offsets = _chosen(full[b, h, -n_last:], positions[-n_last:].tolist(), **params)
            rel = positions[:, None] - torch.arange(skv)
            pattern = torch.isin(torch.arange(skv), torch.tensor(sorted(keys))) & (rel >= 0)
            pattern |= torch.isin(rel, torch.tensor(sorted(offsets)))
            assert torch.equal(weights[b, h] > 0, pattern & visible[b, h]), (b, h)
    rows = (weights > 0).any(-1)  # rows that see a key sum to one, the others are zeros
    torch.testing.assert_close(weights.sum(-1), rows.to(F64))
    assert rows.sum() > 0.8 * rows.numel()


def test_padded_keys_tie_at_zero_and_go_to_the_lowest_index():
    """A column budget larger than the unpadded keys takes padded ones, lowest first, and
    they stay masked: the output equals exact attention on the unpadded keys."""
    q, k, v = rand_qkv(b=1, sq=16, skv=16)
    mask = padding(16, left=[0], right=[10])  # six real keys
    params = {"vertical": 8, "slash": 1, "last": 16, "sinks": 0, "local": 1}
    out = verticalslash.attention(q, k, v, scale=SCALE, is_causal=True, bias=mask, **params)
    ref = exact.attention(q, k, v, scale=SCALE, is_causal=True, bias=mask)
    assert rel_err(out, ref) < 1e-14


def test_a_planted_pattern_is_found_where_a_window_misses_it():
    """A head attending to three content columns (the first key among them) and the diagonal
    33 keys back: vertical-slash with budgets that hold them is close to exact; a window with
    sinks, which sees as many keys per query, is not."""
    n, d = 96, 64
    gen = torch.Generator().manual_seed(0)
    r = torch.nn.functional.normalize(torch.randn(n + 33, d - 1, generator=gen, dtype=F64), dim=-1)
    column = torch.zeros(n, 1, dtype=F64)
    column[[0, 17, 40]] = 10.0
    q = torch.cat([torch.ones(n, 1, dtype=F64), 3 * r[33:]], -1)[None, None]
    k = torch.cat([column, 3 * r[:n]], -1)[None, None]  # q_i . k_(i-33) = 9, else ~N(0, 1.1)
    v = torch.randn(1, 1, n, d, generator=gen, dtype=F64)
    ref = exact.attention(q, k, v, scale=1.0, is_causal=True)
    found = verticalslash.attention(
        q, k, v, scale=1.0, is_causal=True, vertical=4, slash=8, sinks=1, local=4, last=8
    )
    band = window.attention(q, k, v, scale=1.0, is_causal=True, width=8, sinks=4)
    assert rel_err(found, ref) < 0.005 and rel_err(band, ref) > 0.5


@pytest.mark.parametrize("head", ["random", "relative"])
def test_error_falls_to_zero_as_the_diagonals_cover_every_key(head):
    n = 128
    if head == "random":
        q, k, v = rand_qkv(b=1, hq=4, hkv=2, sq=n, skv=n, d=16, seed=1)
        scale = 0.5
    else:  # position-driven: scores follow the distance i - j, plus a sink and steps
        q, k, v = relative_qkv(n, h=4, noise=0.1, seed=1)
        scale = 1.0
    ref = exact.attention(q, k, v, scale=scale, is_causal=True)
    errors = []
    for slash in (4, 16, 32, 64, 96, n):
        out = verticalslash.attention(
            q, k, v, scale=scale, is_causal=True, vertical=4, slash=slash, local=min(slash, 16)
        )
        errors.append(rel_err(out, ref))
    assert all(a >= b * (1 - 1e-3) for a, b in itertools.pairwise(errors)), errors
    assert errors[0] > 0.05 and errors[-1] < 1e-14, errors


def test_bidirectional_is_refused():
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match="causal only"):
        verticalslash.attention(q, k, v, scale=SCALE, is_causal=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vertical": 0}, "vertical"),
        ({"slash": 1.5}, "slash"),
        ({"last": True}, "last"),
        ({"sinks": -1}, "sinks"),
        ({"vertical": 1 << 17}, "vertical"),
        ({"vertical": 2, "sinks": 3}, "sinks=3 must not exceed vertical=2"),
        ({"slash": 8, "local": 9}, "local=9 must not exceed slash=8"),
    ],
)
def test_bad_parameters_raise(kwargs, message):
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match=message):
        verticalslash.attention(q, k, v, scale=1.0, is_causal=True, **kwargs)


def test_exact_up_to_is_the_length_up_to_which_it_is_exact():
    method = get("verticalslash")
    params = method.resolve({"vertical": 2, "slash": 5, "sinks": 0, "local": 1, "last": 8})
    limit = int(method.exact_up_to(params))
    for n, is_exact in ((limit, True), (limit + 2, False)):
        q, k, v = rand_qkv(sq=n, skv=n)
        out = method(q, k, v, scale=0.5, is_causal=True, **params)
        ref = exact.attention(q, k, v, scale=0.5, is_causal=True)
        assert (rel_err(out, ref) < 1e-12) == is_exact, n
