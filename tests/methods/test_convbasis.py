"""Conv-basis: the derived basis algebra, exactness at k = n, convergence in k, numerics."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from attnrewrite.methods import convbasis, exact

from .test_inputs import F64, rand_qkv, rel_err, relative_qkv


def conv_matrix(b: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """conv(b, m): zero except its trailing m x m block, the lower-triangular Toeplitz of b."""
    i = torch.arange(m)
    block = torch.where(i[:, None] >= i, b[(i[:, None] - i).clamp(min=0)], 0.0)
    out = torch.zeros(n, n, dtype=b.dtype)
    out[n - m :, n - m :] = block
    return out


def test_derived_claim_exp_of_a_k_conv_matrix_is_k_conv():
    n, starts = 20, [0, 3, 9, 14]
    g = torch.Generator().manual_seed(0)
    b = [torch.randn(n, generator=g, dtype=F64) for _ in starts]
    h = sum(conv_matrix(bi, n - j, n) for bi, j in zip(b, starts, strict=True))
    s = torch.stack(b).cumsum(0)  # S_i = b_1 + ... + b_i
    tilde = [s[0].exp()] + [s[i].exp() - s[i - 1].exp() for i in range(1, len(starts))]
    rebuilt = sum(conv_matrix(bt, n - j, n) for bt, j in zip(tilde, starts, strict=True))
    truth = torch.where(torch.ones(n, n, dtype=torch.bool).tril(), h.exp(), 0.0)
    torch.testing.assert_close(rebuilt, truth, rtol=1e-12, atol=1e-12)


def test_derived_claim_upper_part_is_reversed_lower_conv():
    n = 16
    g = torch.Generator().manual_seed(1)
    lower = conv_matrix(torch.randn(n, generator=g, dtype=F64), n, n)
    lower += conv_matrix(torch.randn(n, generator=g, dtype=F64), 9, n)
    flip = torch.eye(n, dtype=F64).flip(0)
    upper = flip @ lower.tril(-1) @ flip  # J (strictly lower k-conv) J
    assert torch.equal(upper, upper.triu(1))
    q = torch.eye(n, dtype=F64)[None, None]
    h = lower.tril() + upper  # scores, with q = I and k = H^T
    v = torch.randn(1, 1, n, 3, generator=g, dtype=F64)
    out = convbasis.attention(q, h.T[None, None], v, scale=1.0, is_causal=False, bases=2)
    ref = exact.attention(q, h.T[None, None], v, scale=1.0, is_causal=False)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_derived_error_bound_for_perturbed_scores():
    """|H~ - H| <= eps entrywise gives |O~ - O|_inf <= (e^(2 eps) - 1) |V|_inf."""
    g = torch.Generator().manual_seed(2)
    h = 3 * torch.randn(64, 30, 30, generator=g, dtype=F64)
    v = torch.randn(64, 30, 5, generator=g, dtype=F64)
    causal = torch.ones(30, 30, dtype=torch.bool).tril()
    for eps in (1e-3, 0.1, 1.0):
        noisy = h + eps * (2 * torch.rand(h.shape, generator=g, dtype=F64) - 1)
        out = [torch.softmax(x.masked_fill(~causal, -torch.inf), -1) @ v for x in (h, noisy)]
        gap = (out[0] - out[1]).abs().amax(dim=(-1, -2))
        assert (gap <= (math.exp(2 * eps) - 1) * v.abs().amax(dim=(-1, -2))).all()


@pytest.mark.parametrize("is_causal", [True, False])
@pytest.mark.parametrize("recovery", ["topk", "binary"])
def test_k_conv_heads_are_exact_with_their_k_bases(is_causal, recovery):
    q, k, v = relative_qkv(48, changes=(5, 13, 29))  # exactly 5-conv
    ref = exact.attention(q, k, v, scale=1.0, is_causal=is_causal)
    out = convbasis.attention(q, k, v, scale=1.0, is_causal=is_causal, bases=5, recovery=recovery)
    assert rel_err(out, ref) < 1e-9
    fewer = convbasis.attention(q, k, v, scale=1.0, is_causal=is_causal, bases=3)
    assert rel_err(fewer, ref) > 1e-3


def test_binary_search_misses_steps_that_cancel():
    """A step undone by a later one breaks its monotonicity; topk still finds both."""
    q, k, v = relative_qkv(64, h=1, changes=(20, 24))
    k[..., 20:, -2] = 0.6  # +0.6 from column 20 ...
    k[..., 24:, -1] = -0.6  # ... cancelled from column 24: the search's midpoints never see it
    ref = exact.attention(q, k, v, scale=1.0, is_causal=True)
    topk = convbasis.attention(q, k, v, scale=1.0, is_causal=True, bases=4)
    binary = convbasis.attention(q, k, v, scale=1.0, is_causal=True, bases=4, recovery="binary")
    assert rel_err(topk, ref) < 1e-9
    assert rel_err(binary, ref) > 1e-2


@pytest.mark.parametrize("is_causal", [True, False])
@pytest.mark.parametrize("recovery", ["topk", "binary"])
def test_error_falls_with_k_and_vanishes_at_n(is_causal, recovery):
    q, k, v = relative_qkv(64, changes=(5, 13, 29, 44), noise=0.02)
    ref = exact.attention(q, k, v, scale=1.0, is_causal=is_causal)

    def err(bases: int, tol: float) -> float:
        out = convbasis.attention(
            q, k, v, scale=1.0, is_causal=is_causal, bases=bases, recovery=recovery, tol=tol
        )
        return rel_err(out, ref)

    errs = [err(n, 0.3) for n in (1, 2, 4, 8, 16, 32)]  # tol above the score noise
    assert all(b <= a * 1.1 for a, b in itertools.pairwise(errs)), errs
    assert errs[3] < 0.1 * errs[0], errs
    assert err(64, 0.0) < 1e-9


def test_random_heads_are_exact_at_k_equals_n_only():
    q, k, v = rand_qkv(b=1, sq=40, skv=40)
    for is_causal in (True, False):
        ref = exact.attention(q, k, v, scale=0.4, is_causal=is_causal)
        out = convbasis.attention(q, k, v, scale=0.4, is_causal=is_causal, bases=40)
        assert rel_err(out, ref) < 1e-9
        assert rel_err(convbasis.attention(q, k, v, scale=0.4, is_causal=is_causal), ref) > 0.1


def test_window_and_full_bias_are_exact_at_k_equals_n():
    q, k, v = rand_qkv(b=1, sq=30, skv=30)
    alibi = -0.3 * (torch.arange(30)[:, None] - torch.arange(30)).abs().to(F64)
    for kwargs in ({"window": 7}, {"bias": alibi}, {"bias": alibi, "window": 4}):
        ref = exact.attention(q, k, v, scale=0.4, is_causal=True, **kwargs)
        out = convbasis.attention(q, k, v, scale=0.4, is_causal=True, bases=30, **kwargs)
        assert rel_err(out, ref) < 1e-9


def test_alibi_keeps_a_relative_position_head_k_conv():
    q, k, v = relative_qkv(48, changes=(5, 13, 29))
    alibi = -0.25 * (torch.arange(48)[:, None] - torch.arange(48)).abs().to(F64)
    for is_causal in (True, False):
        ref = exact.attention(q, k, v, scale=1.0, is_causal=is_causal, bias=alibi)
        out = convbasis.attention(q, k, v, scale=1.0, is_causal=is_causal, bias=alibi, bases=5)
        assert rel_err(out, ref) < 1e-9


def test_single_query_decode_is_exact_at_any_k():
    q, k, v = rand_qkv(sq=1, skv=50)
    ref = exact.attention(q, k, v, scale=0.4, is_causal=True)
    out = convbasis.attention(q, k, v, scale=0.4, is_causal=True, bases=1)
    assert rel_err(out, ref) < 1e-12


def test_float32_ffts_stay_close_to_float64():
    q, k, v = relative_qkv(256, h=4, noise=0.02)
    wide = convbasis.attention(q, k, v, scale=1.0, is_causal=True, bases=256, transform="fft")
    narrow = convbasis.attention(
        q.float(), k.float(), v.float(), scale=1.0, is_causal=True, bases=256, transform="fft"
    )
    assert rel_err(narrow, wide) < 1e-2
    rows = (narrow.double() - wide).norm(dim=-1) / wide.norm(dim=-1)
    assert (rows > 1e-2).float().mean() < 0.02  # only the first rows, with tiny sums, suffer


@pytest.mark.parametrize("is_causal", [True, False])
def test_direct_and_fft_transforms_compute_the_same_sums(is_causal):
    """The transform changes rounding only; direct sums of non-negative terms keep every row
    accurate in float32, where the FFT's absolute error swamps the first rows' small sums."""
    q, k, v = relative_qkv(256, h=4, noise=0.02)
    kwargs = {"scale": 1.0, "is_causal": is_causal, "bases": 7}
    by_fft = convbasis.attention(q, k, v, transform="fft", **kwargs)
    assert rel_err(convbasis.attention(q, k, v, transform="direct", **kwargs), by_fft) < 1e-12
    narrow = convbasis.attention(q.float(), k.float(), v.float(), transform="direct", **kwargs)
    rows = (narrow.double() - by_fft).norm(dim=-1) / by_fft.norm(dim=-1)
    assert rows.max() < 1e-5


def _center(hq: int = 4, d: int = 8, size: float = 1.0) -> torch.Tensor:
    return size * torch.randn(hq, d, generator=torch.Generator().manual_seed(5), dtype=F64)


@pytest.mark.parametrize("is_causal", [True, False])
def test_a_query_centre_is_exact_at_k_equals_n_and_zeros_are_the_plain_method(is_causal):
    """The centre moves c.k out of the bases into an exact key-wise weight: every basis count
    still converges to exact attention at n, and zeros change nothing."""
    q, k, v = rand_qkv(skv=24, sq=24)
    mask = torch.zeros(2, 1, 1, 24, dtype=F64)
    mask[0, ..., :3] = -torch.inf  # padded keys stay hidden under the centre's weights
    kwargs = {"scale": 0.4, "is_causal": is_causal, "bias": mask}
    ref = exact.attention(q, k, v, **kwargs)
    centred = convbasis.attention(q, k, v, bases=24, center=_center(), **kwargs)
    assert rel_err(centred, ref) < 1e-12
    plain = convbasis.attention(q, k, v, bases=4, **kwargs)
    zeros = convbasis.attention(q, k, v, bases=4, center=torch.zeros(4, 8, dtype=F64), **kwargs)
    assert torch.equal(plain, zeros)
    moved = convbasis.attention(q, k, v, bases=4, center=_center(), **kwargs)
    assert rel_err(moved, plain) > 0.05
    errors = [
        rel_err(convbasis.attention(q, k, v, bases=b, center=_center(), **kwargs), ref)
        for b in (2, 6, 12, 24)
    ]
    assert errors[-1] < 1e-12 < errors[0], errors


def test_queries_sharing_a_direction_lose_it_to_the_centre():
    """Queries = u + small noise: (q - u).k is nearly flat, what one basis models well, while
    the plain bases must follow u.k, which varies key by key."""
    g = torch.Generator().manual_seed(6)
    u = 3.0 * torch.randn(2, 8, generator=g, dtype=F64)
    q = u[None, :, None] + 0.05 * torch.randn(1, 2, 64, 8, generator=g, dtype=F64)
    k, v = (torch.randn(1, 2, 64, d, generator=g, dtype=F64) for d in (8, 4))
    ref = exact.attention(q, k, v, scale=0.5, is_causal=True)
    plain = convbasis.attention(q, k, v, scale=0.5, is_causal=True, bases=4)
    centred = convbasis.attention(q, k, v, scale=0.5, is_causal=True, bases=4, center=u)
    assert rel_err(centred, ref) < 0.05 < 0.5 < rel_err(plain, ref)


@pytest.mark.parametrize("is_causal", [True, False])
@pytest.mark.parametrize(("sq", "skv"), [(24, 24), (7, 24), (24, 17)])
def test_a_subset_of_rows_is_those_rows_of_the_whole(is_causal, sq, skv):
    """What calibration's fit evaluates: the rows it samples, as the whole output has them."""
    q, k, v = rand_qkv(sq=sq, skv=skv)
    params = {**convbasis.get("convbasis").resolve({"bases": 5}), "center": _center(size=0.3)}
    kwargs = {"scale": 0.4, "is_causal": is_causal, "bias": None, "window": None, **params}
    rows = torch.tensor([sq - 1, 0, sq // 2, 3])
    whole = convbasis.attention(q, k, v, **kwargs)
    torch.testing.assert_close(convbasis.rows_of(rows, q, k, v, **kwargs), whole[:, :, rows])
    with pytest.raises(ValueError, match="direct"):
        convbasis.rows_of(rows, q, k, v, **{**kwargs, "transform": "fft"})


def test_fast_length_is_the_smallest_5_smooth_length():
    def smooth(n: int) -> bool:
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    for n in range(1, 300):
        want = next(m for m in range(n, 2 * n + 2) if smooth(m))
        assert convbasis.fast_length(n) == want


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bases": 0}, "bases"),
        ({"probe": 0}, "probe"),
        ({"recovery": "greedy"}, "recovery"),
        ({"tol": -1.0}, "tol"),
        ({"transform": "winograd"}, "transform"),
    ],
)
def test_bad_parameters_raise(kwargs, message):
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match=message):
        convbasis.attention(q, k, v, scale=1.0, is_causal=True, **kwargs)
