"""PolySketch: sketch convergence, the block scan against quadratic formulas, the softmax fit."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from attnrewrite.methods import exact, polysketch

from .test_inputs import F64, padding, rand_qkv, rel_err

SCALE = 0.4
LAYOUTS = [(24, 24, True), (9, 24, True), (24, 24, False), (30, 17, False)]


def kernel_error(degree: int, r: int, seeds: int = 5) -> float:
    """Mean relative error of the sketched kernel <phi(q), phi(k)>^2 against (q.k)^degree."""
    g = torch.Generator().manual_seed(7)
    a = F.normalize(torch.randn(1, 1, 64, 16, generator=g, dtype=F64), dim=-1)
    truth = (a[..., :32, :] @ a[..., 32:, :].transpose(-1, -2)) ** degree
    errs = []
    for seed in range(seeds):
        h = polysketch.sketch_half(a, degree // 2, r, seed)
        approx = (h[..., :32, :] @ h[..., 32:, :].transpose(-1, -2)) ** 2
        errs.append(rel_err(approx, truth))
    return sum(errs) / seeds


@pytest.mark.parametrize("degree", [4, 6])
def test_sketched_kernel_converges_as_the_sketch_grows(degree):
    errs = [kernel_error(degree, r) for r in (8, 32, 128, 512)]
    assert all(b < a for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < errs[0] / 10, errs


def quadratic(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    is_causal: bool,
    bias: Tensor | None,
    fit: str,
    degree: int,
    seed: int = 0,
) -> Tensor:
    """o_i = sum_j kappa v_j / (c + sum_j kappa) written out on the full kernel matrix."""
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    w = torch.ones(k.shape[:3], dtype=F64) if bias is None else (bias[:, :, 0] == 0).to(F64)
    if fit == "none":
        base = F.layer_norm(q, q.shape[-1:]) @ F.layer_norm(k, k.shape[-1:]).transpose(-1, -2)
    else:
        beta = polysketch.fit_shift(
            q, k, w.expand(k.shape[:3]), scale=SCALE, degree=degree, is_causal=is_causal, seed=seed
        )
        base = SCALE * q @ k.transpose(-1, -2) + beta[..., None, None]
    kern = base**degree * w[:, :, None, :]
    if is_causal:
        kern = kern.tril(k.shape[2] - q.shape[2])
    den = kern.sum(-1, keepdim=True) + (1.0 if fit == "none" else 0.0)
    return torch.where(den > 0, kern @ v / torch.where(den > 0, den, 1.0), 0.0)


@pytest.mark.parametrize("fit", ["none", "softmax_fit"])
@pytest.mark.parametrize(("sq", "skv", "is_causal"), LAYOUTS)
def test_block_scan_equals_the_quadratic_formula(fit, sq, skv, is_causal):
    q, k, v = rand_qkv(sq=sq, skv=skv, d=6)
    bias = padding(skv, left=[2, 0], right=[0, 3])
    ref = quadratic(q, k, v, is_causal=is_causal, bias=bias, fit=fit, degree=4)
    for block in (1, 2, 8, 64):
        out = polysketch.attention(
            q,
            k,
            v,
            scale=SCALE,
            is_causal=is_causal,
            bias=bias,
            block=block,
            variant="exact_poly",
            fit=fit,
        )
        assert rel_err(out, ref) < 1e-9, block


def dense_sketch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    is_causal: bool,
    variant: str,
    block: int,
    r: int = 8,
    seed: int = 0,
) -> Tensor:
    """The sketch / mixed kernels built as full matrices from the module's own features."""
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    w = torch.ones(k.shape[:3], dtype=F64)
    beta = polysketch.fit_shift(q, k, w, scale=SCALE, degree=4, is_causal=is_causal, seed=seed)
    aq, ak = polysketch.feature_inputs(q, k, beta, SCALE)
    h = polysketch.sketch_half(torch.cat([aq, ak], 2), 2, r, seed)
    kern = (h[:, :, : q.shape[2]] @ h[:, :, q.shape[2] :].transpose(-1, -2)) ** 2
    pos = torch.arange(q.shape[2]) + k.shape[2] - q.shape[2]
    if variant == "mixed":
        same = (
            torch.div(pos, block, rounding_mode="floor")[:, None]
            == torch.arange(k.shape[2]) // block
        )
        kern = torch.where(same, (aq @ ak.transpose(-1, -2)) ** 4, kern)
    if is_causal:
        kern = kern.tril(k.shape[2] - q.shape[2])
    return kern @ v / kern.sum(-1, keepdim=True)


@pytest.mark.parametrize("variant", ["sketch", "mixed"])
@pytest.mark.parametrize(("sq", "skv", "is_causal"), LAYOUTS)
def test_sketched_variants_equal_their_dense_kernels(variant, sq, skv, is_causal):
    q, k, v = rand_qkv(sq=sq, skv=skv, d=6)
    for block in (2, 8):
        ref = dense_sketch(q, k, v, is_causal=is_causal, variant=variant, block=block)
        out = polysketch.attention(
            q, k, v, scale=SCALE, is_causal=is_causal, block=block, variant=variant, sketch_size=8
        )
        assert rel_err(out, ref) < 1e-9, block


def test_degree_two_features_are_exact():
    q, k, v = rand_qkv()
    kwargs = {"scale": SCALE, "is_causal": True, "degree": 2, "block": 8}
    sketched = polysketch.attention(q, k, v, variant="sketch", sketch_size=4, **kwargs)
    exact_poly = polysketch.attention(q, k, v, variant="exact_poly", **kwargs)
    assert rel_err(sketched, exact_poly) < 1e-12


def test_wide_heads_fall_back_to_dense_exact_poly():
    q, k, v = rand_qkv(b=1, sq=20, skv=20, d=64)  # (d + 1)^4 features would be 17.8M
    ref = quadratic(q, k, v, is_causal=True, bias=None, fit="softmax_fit", degree=4)
    out = polysketch.attention(q, k, v, scale=SCALE, is_causal=True, variant="exact_poly")
    assert rel_err(out, ref) < 1e-9


def test_seed_makes_runs_repeatable():
    q, k, v = rand_qkv()

    def run(seed: int) -> Tensor:
        return polysketch.attention(
            q, k, v, scale=SCALE, is_causal=True, block=8, sketch_size=8, seed=seed
        )

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_softmax_fit_beats_taylor_on_softmax_heads():
    q, k, v = rand_qkv(b=1, sq=64, skv=64, d=16)
    for is_causal in (True, False):
        ref = exact.attention(q, k, v, scale=0.25, is_causal=is_causal)
        fitted = polysketch.attention(
            q, k, v, scale=0.25, is_causal=is_causal, variant="exact_poly"
        )
        a, b = q * 0.5, k * 0.5  # (1 + x/4)^4 is Taylor's choice: beta = p = 4
        taylor_kern = (a @ b.repeat_interleave(2, 1).transpose(-1, -2) + 4.0) ** 4
        if is_causal:
            taylor_kern = taylor_kern.tril()
        taylor = taylor_kern @ v.repeat_interleave(2, 1) / taylor_kern.sum(-1, keepdim=True)
        assert rel_err(fitted, ref) < 0.3
        assert rel_err(fitted, ref) < rel_err(taylor, ref)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"degree": 3}, "even"),
        ({"degree": 0}, "degree"),
        ({"block": 6}, "power of two"),
        ({"sketch_size": 0}, "sketch_size"),
        ({"variant": "learned"}, "variant"),
        ({"fit": "taylor"}, "fit"),
        ({"seed": "a"}, "seed"),
    ],
)
def test_bad_parameters_raise(kwargs, message):
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match=message):
        polysketch.attention(q, k, v, scale=1.0, is_causal=True, **kwargs)


FITTED = ("query_gain", "key_gain", "key_shift")


def feature_map(hq: int = 4, d: int = 8, size: float = 0.3) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(5)
    return {name: size * torch.randn(hq, d, generator=g, dtype=F64) for name in FITTED}


@pytest.mark.parametrize("variant", ["sketch", "mixed", "exact_poly"])
@pytest.mark.parametrize("fit", ["none", "softmax_fit"])
def test_a_zero_feature_map_is_the_training_free_kernel(variant, fit):
    q, k, v = rand_qkv()
    kwargs = {"scale": SCALE, "is_causal": True, "block": 8, "variant": variant, "fit": fit}
    zeros = {name: torch.zeros(4, 8, dtype=F64) for name in FITTED}
    assert torch.equal(
        polysketch.attention(q, k, v, **kwargs, **zeros), polysketch.attention(q, k, v, **kwargs)
    )


@pytest.mark.parametrize(("sq", "skv", "is_causal"), LAYOUTS)
def test_the_feature_map_acts_on_q_and_k_after_betas_fit(sq, skv, is_causal):
    """beta from the untouched q, k; the kernel on q o (1 + g_q), k o (1 + g_k) + c."""
    q, k, v = rand_qkv(sq=sq, skv=skv)
    arrays = feature_map()
    kr, vr = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    w = torch.ones(kr.shape[:3], dtype=F64)
    beta = polysketch.fit_shift(q, kr, w, scale=SCALE, degree=4, is_causal=is_causal, seed=0)
    qm = q * (1 + arrays["query_gain"][:, None])
    km = kr * (1 + arrays["key_gain"][:, None]) + arrays["key_shift"][:, None]
    kern = (SCALE * qm @ km.transpose(-1, -2) + beta[..., None, None]) ** 4
    if is_causal:
        kern = kern.tril(skv - sq)
    ref = kern @ vr / kern.sum(-1, keepdim=True)
    out = polysketch.attention(
        q, k, v, scale=SCALE, is_causal=is_causal, variant="exact_poly", **arrays
    )
    assert rel_err(out, ref) < 1e-9
    assert rel_err(out, polysketch.attention(q, k, v, scale=SCALE, is_causal=is_causal)) > 0.05


def test_a_mapped_sketch_converges_to_its_exact_kernel_as_the_sketch_grows():
    q, k, v = rand_qkv(b=1, sq=64, skv=64)
    kwargs = {"scale": SCALE, "is_causal": True, "block": 8, **feature_map()}
    target = polysketch.attention(q, k, v, variant="exact_poly", **kwargs)
    errs = []
    for r in (4, 16, 64):
        runs = [
            polysketch.attention(q, k, v, variant="sketch", sketch_size=r, seed=s, **kwargs)
            for s in range(4)
        ]
        errs.append(sum(rel_err(out, target) for out in runs) / len(runs))
    assert all(b < a for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < 0.6 * errs[0], errs  # r = 64 is the most a node takes (MAX_SKETCH)


@pytest.mark.parametrize("name", FITTED)
def test_a_feature_map_of_the_wrong_shape_raises(name):
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match=f"{name} must be"):
        polysketch.attention(q, k, v, scale=1.0, is_causal=True, **{name: torch.zeros(2, 8)})
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        polysketch.attention(
            q, k, v, scale=1.0, is_causal=True, **{name: torch.full((4, 8), torch.nan)}
        )
