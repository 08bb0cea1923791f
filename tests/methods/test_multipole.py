"""Multipole: exact near field, a tiling that covers every key once, Jensen, convergence."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from attnrewrite.methods import exact, multipole

from .test_common import LAYOUTS as COMMON_LAYOUTS
from .test_inputs import F64, padding, rand_qkv, rel_err

SCALE = 0.4
LAYOUTS = [*COMMON_LAYOUTS, (5, 40, False)]  # plus queries before every key


def local_qkv(
    n: int, *, amp: float = 20.0, om: float = 0.02, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """A recency head: q_i . k_j ~ amp cos(om (i - j)), peaked at i = j, plus weak content."""
    g = torch.Generator().manual_seed(seed)
    ang = om * torch.arange(n, dtype=F64)[:, None]
    rot = torch.cat([ang.cos(), ang.sin()], dim=-1).expand(1, 2, n, 2)
    q = torch.cat([amp * rot, torch.randn(1, 2, n, 6, generator=g, dtype=F64)], dim=-1)
    k = torch.cat([rot, 0.05 * torch.randn(1, 2, n, 6, generator=g, dtype=F64)], dim=-1)
    return q, k, torch.randn(1, 2, n, 8, generator=g, dtype=F64)


@pytest.mark.parametrize(("sq", "skv", "is_causal"), LAYOUTS)
def test_exact_when_the_near_field_covers_every_key(sq, skv, is_causal):
    q, k, v = rand_qkv(sq=sq, skv=skv)
    bias = padding(skv, left=[3, 0], right=[0, 2])
    ref = exact.attention(q, k, v, scale=SCALE, is_causal=is_causal, bias=bias)
    for block in (skv, 64, (skv + 1) // 2):  # one block, a larger one, two blocks
        out = multipole.attention(q, k, v, scale=SCALE, is_causal=is_causal, bias=bias, block=block)
        assert rel_err(out, ref) < 1e-12, block


@pytest.mark.parametrize(("sq", "skv", "is_causal"), LAYOUTS)
def test_levels_tile_the_keys_exactly_once(sq, skv, is_causal):
    """With identical keys, pooling is lossless: only a gap or an overlap can cause an error."""
    q, k, v = rand_qkv(sq=sq, skv=skv)
    k = k[:, :, :1].expand_as(k)
    bias = padding(skv, left=[3, 0], right=[0, 2])
    ref = exact.attention(q, k, v, scale=SCALE, is_causal=is_causal, bias=bias)
    for block, coarse, levels in itertools.product((1, 2, 3, 4), (1, 2), (0, 1, 2)):
        if block % coarse:
            continue
        out = multipole.attention(
            q,
            k,
            v,
            scale=SCALE,
            is_causal=is_causal,
            bias=bias,
            block=block,
            coarse=coarse,
            levels=levels,
        )
        assert rel_err(out, ref) < 1e-12, (block, coarse, levels)


@pytest.mark.parametrize("seed", range(4))
def test_averaged_keys_under_weight_the_far_field(seed):
    """Jensen: exp(q . mean k) <= mean exp(q . k), so the far field's share can only shrink."""
    q, k, _ = rand_qkv(b=1, sq=1, skv=64, seed=seed)
    far = (torch.arange(64) < 56).to(F64)  # block 4: the near field is keys 56..63
    v = far[None, None, :, None].expand(1, 2, 64, 1)
    share = exact.attention(q, k, v, scale=SCALE, is_causal=True)
    pooled = multipole.attention(q, k, v, scale=SCALE, is_causal=True, block=4)
    assert (pooled <= share + 1e-12).all()
    assert (pooled < share - 1e-6).any()


@pytest.mark.parametrize("is_causal", [True, False])
def test_error_falls_as_blocks_grow_on_a_recency_head(is_causal):
    q, k, v = local_qkv(128)
    ref = exact.attention(q, k, v, scale=1.0, is_causal=is_causal)
    errs = [
        rel_err(multipole.attention(q, k, v, scale=1.0, is_causal=is_causal, block=b), ref)
        for b in (4, 8, 16, 32)
    ]
    assert all(b <= a * 1.1 for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < 0.01, errs
    finer = multipole.attention(q, k, v, scale=1.0, is_causal=is_causal, block=4, levels=1)
    assert rel_err(finer, ref) <= errs[0]  # a finer far field is not worse


def test_one_coarse_level_is_close_on_a_recency_head():
    q, k, v = local_qkv(64)
    for is_causal in (True, False):
        ref = exact.attention(q, k, v, scale=1.0, is_causal=is_causal)
        out = multipole.attention(q, k, v, scale=1.0, is_causal=is_causal, block=16)  # L = 1
        assert rel_err(out, ref) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block": 0}, "block"),
        ({"coarse": 0}, "coarse"),
        ({"block": 6, "coarse": 4}, "divide"),
        ({"levels": -1}, "levels"),
    ],
)
def test_bad_parameters_raise(kwargs, message):
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match=message):
        multipole.attention(q, k, v, scale=1.0, is_causal=True, **kwargs)


@pytest.mark.parametrize("is_causal", [True, False])
def test_sinks_converge_to_exact_as_they_cover_the_keys(is_causal):
    q, k, v = rand_qkv(sq=40, skv=40)
    ref = exact.attention(q, k, v, scale=SCALE, is_causal=is_causal)
    errors = [
        rel_err(
            multipole.attention(q, k, v, scale=SCALE, is_causal=is_causal, block=4, sinks=s), ref
        )
        for s in (0, 8, 24, 40)
    ]
    assert errors[-1] < 1e-12 and errors[0] > 0.05
    assert errors == sorted(errors, reverse=True), errors


def test_sinks_keep_an_attention_sink_out_of_the_averages():
    """A first key that takes most of the mass (trained LMs' attention sink) is averaged away
    inside a far summary; as a sink it is attended exactly."""
    q, k, v = local_qkv(256, amp=2.0)
    k[..., 0, :] = q.mean(dim=2) * 10.0  # key 0 scores high for every query
    v[..., 0, :] = 5.0
    ref = exact.attention(q, k, v, scale=SCALE, is_causal=True)
    pooled = rel_err(multipole.attention(q, k, v, scale=SCALE, is_causal=True, sinks=0), ref)
    kept = rel_err(multipole.attention(q, k, v, scale=SCALE, is_causal=True, sinks=1), ref)
    assert kept < 0.1 * pooled, (kept, pooled)


def _expansion(hq: int = 4, d: int = 8, seed: int = 1) -> Tensor:
    return torch.randn(hq, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize(("sq", "skv", "is_causal"), LAYOUTS)
def test_a_zero_expansion_is_the_plain_method(sq, skv, is_causal):
    q, k, v = rand_qkv(sq=sq, skv=skv)
    bias = padding(skv, left=[3, 0], right=[0, 2])
    kwargs = {"scale": SCALE, "is_causal": is_causal, "bias": bias, "block": 4, "coarse": 2}
    plain = multipole.attention(q, k, v, **kwargs)
    assert torch.equal(
        multipole.attention(q, k, v, expansion=torch.zeros(4, 8, dtype=F64), **kwargs), plain
    )


@pytest.mark.parametrize(("sq", "skv", "is_causal"), LAYOUTS)
def test_an_expansion_keeps_what_holds_by_construction(sq, skv, is_causal):
    """Exact when every key is near, and with identical keys (the tiling is unchanged)."""
    q, k, v = rand_qkv(sq=sq, skv=skv)
    bias = padding(skv, left=[3, 0], right=[0, 2])
    u = 3.0 * _expansion()
    ref = exact.attention(q, k, v, scale=SCALE, is_causal=is_causal, bias=bias)
    for block in (skv, (skv + 1) // 2):
        out = multipole.attention(
            q, k, v, scale=SCALE, is_causal=is_causal, bias=bias, block=block, expansion=u
        )
        assert rel_err(out, ref) < 1e-12, block
    same = k[:, :, :1].expand_as(k)
    ref = exact.attention(q, same, v, scale=SCALE, is_causal=is_causal, bias=bias)
    for block, levels in itertools.product((1, 3), (0, 1)):
        out = multipole.attention(
            q,
            same,
            v,
            scale=SCALE,
            is_causal=is_causal,
            bias=bias,
            block=block,
            levels=levels,
            expansion=u,
        )
        assert rel_err(out, ref) < 1e-12, (block, levels)


@pytest.mark.parametrize("is_causal", [True, False])
def test_expanding_around_the_query_itself_is_exact(is_causal):
    """The group's log-sum-exp and softmax-weighted value, expanded around u, are exact at
    q = u: one query per head with u = scale q gets exact attention at any block size."""
    q, k, v = rand_qkv(b=1, sq=1, skv=64, d=8)
    u = SCALE * q[0, :, 0]
    ref = exact.attention(q, k, v, scale=SCALE, is_causal=is_causal)
    plain = multipole.attention(q, k, v, scale=SCALE, is_causal=is_causal, block=4)
    out = multipole.attention(q, k, v, scale=SCALE, is_causal=is_causal, block=4, expansion=u)
    assert rel_err(plain, ref) > 0.05
    assert rel_err(out, ref) < 1e-12


def test_an_expansion_of_the_wrong_shape_raises():
    q, k, v = rand_qkv()
    for bad in (torch.zeros(3, 8, dtype=F64), torch.zeros(4, 7, dtype=F64)):
        with pytest.raises(ValueError, match="expansion must be"):
            multipole.attention(q, k, v, scale=1.0, is_causal=True, expansion=bad)
    with pytest.raises(ValueError, match="finite"):
        multipole.attention(
            q, k, v, scale=1.0, is_causal=True, expansion=torch.full((4, 8), torch.nan, dtype=F64)
        )
