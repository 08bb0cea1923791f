"""Fitting multipole's expansion points to a head: better than plain averages where pooling is
biased, exact where every key is near, and nothing to fit without a far field. Fitting
PolySketch's feature map: better than the training-free kernel where the keys share a mean (a
per-query offset softmax ignores), and converging to softmax as the degree grows. Fitting
conv-basis's query centres: better than the plain bases where the queries share a direction,
and exact at k = n."""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir
import pytest
import torch

from attnrewrite.methods import convbasis, exact, get, polysketch
from attnrewrite.plan.calibrate import BlockOperands
from attnrewrite.plan.fit import fit_center, fit_expansion, fit_feature_map
from attnrewrite.substitute.signature import Signature
from tests.methods.test_inputs import relative_qkv

SCALE = 0.5
PARAMS = {"block": 8, "coarse": 1, "levels": 0, "sinks": 2}


def biased_head(n: int, seed: int, heads: int = 3, d: int = 8) -> BlockOperands:
    """Heads whose queries share a direction, as trained heads do, with keys spread along it:
    every far group's scores vary a lot, so its mean key under-weights it and its mean value is
    not what the head reads."""
    direction = torch.randn(heads, 1, d, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)  # the tokens: the heads are the same in every draw
    q = 2.0 * direction.double() + 0.5 * torch.randn(
        1, heads, n, d, generator=g, dtype=torch.float64
    )
    k = torch.randn(1, heads, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, heads, n, 4, generator=g, dtype=torch.float64)
    out = exact.attention(q, k, v, scale=SCALE, is_causal=True)
    sig = Signature(4, ir.DataType.FLOAT, "none", False, True, False, False, False, False, d)
    return BlockOperands(
        0, *(x.float().numpy() for x in (q, k, v)), None, out.float().numpy(), sig, SCALE, None
    )


def errors(
    method: str, operands: BlockOperands, arrays: dict[str, np.ndarray | None], **params
) -> np.ndarray:
    """Each head's relative L2 error against exact attention, the method given its fitted
    `arrays` (None or absent: the method untouched)."""
    q, k, v = (torch.from_numpy(x).double() for x in (operands.q, operands.k, operands.v))
    tensors = {n: torch.from_numpy(a).double() for n, a in arrays.items() if a is not None}
    out = get(method).attention(q, k, v, scale=SCALE, is_causal=True, **params, **tensors)
    ref = torch.from_numpy(operands.exact).double()
    return ((out - ref).square().sum((0, 2, 3)) / ref.square().sum((0, 2, 3))).sqrt().numpy()


def head_errors(operands: BlockOperands, expansion: np.ndarray | None, **params) -> np.ndarray:
    return errors("multipole", operands, {"expansion": expansion}, **params)


def test_fitting_halves_the_error_of_biased_heads_on_other_inputs() -> None:
    """Fitted on one draw, measured on another: the points generalise, they do not memorise."""
    expansion = fit_expansion(biased_head(256, seed=0), PARAMS)
    assert expansion.shape == (3, 8) and expansion.dtype == np.float32
    held_out = biased_head(256, seed=1)
    default = head_errors(held_out, None, **PARAMS)
    fitted = head_errors(held_out, expansion, **PARAMS)
    assert (default > 0.1).all(), default
    assert (fitted < 0.5 * default).all(), (fitted, default)


def test_the_fitted_variant_converges_to_exact_as_the_block_grows() -> None:
    n = 64
    calibration, held_out = biased_head(n, seed=0), biased_head(n, seed=1)
    errors = []
    for block in (4, 8, 16, 32):
        params = {**PARAMS, "block": block}
        errors.append(head_errors(held_out, fit_expansion(calibration, params), **params).max())
    assert all(b <= a * 1.1 for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-6, errors  # two blocks: every key is near


@pytest.mark.parametrize("n", [16, 8, 1])
def test_no_far_field_nothing_to_fit(n) -> None:
    assert not fit_expansion(biased_head(n, seed=0), PARAMS).any()


def test_the_fit_is_repeatable() -> None:
    block = biased_head(128, seed=0)
    assert np.array_equal(fit_expansion(block, PARAMS), fit_expansion(block, PARAMS))


POLY = get("polysketch").resolve({"block": 32, "variant": "exact_poly"})


def offset_head(n: int, seed: int, heads: int = 3, d: int = 8) -> BlockOperands:
    """Keys sharing a large mean, as trained heads' do: q.mean shifts each query's row by its
    own amount, which softmax ignores and one polynomial per head cannot follow."""
    mean = 2.0 * torch.randn(heads, 1, d, generator=torch.Generator().manual_seed(99)).double()
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, d, generator=g, dtype=torch.float64)
    k = mean + torch.randn(1, heads, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, heads, n, 4, generator=g, dtype=torch.float64)
    out = exact.attention(q, k, v, scale=SCALE, is_causal=True)
    sig = Signature(4, ir.DataType.FLOAT, "none", False, True, False, False, False, False, d)
    return BlockOperands(
        0, *(x.float().numpy() for x in (q, k, v)), None, out.float().numpy(), sig, SCALE, None
    )


def poly_errors(operands: BlockOperands, arrays: dict[str, np.ndarray], **params) -> np.ndarray:
    return errors("polysketch", operands, arrays, **params)


def test_the_feature_map_lowers_the_error_of_offset_heads_on_other_inputs() -> None:
    params = {**POLY, "degree": 8}
    arrays = fit_feature_map(offset_head(256, seed=0), params)
    assert sorted(arrays) == ["key_gain", "key_shift", "query_gain"]
    assert all(a.shape == (3, 8) and a.dtype == np.float32 for a in arrays.values())
    held_out = offset_head(256, seed=1)
    default = poly_errors(held_out, {}, **params)
    fitted = poly_errors(held_out, arrays, **params)
    assert (default > 0.3).all(), default
    assert (fitted < 0.75 * default).all(), (fitted, default)


def test_the_fitted_feature_map_converges_to_softmax_as_the_degree_grows() -> None:
    """The knob is the degree: fitted again at each, the exact polynomial kernel's error
    against softmax on other inputs falls towards 0 ((x + beta)^p -> exp as p grows), below
    the training-free kernel's at every degree (at 16, the most the registry takes: 0.15)."""
    calibration, held_out = offset_head(128, seed=0), offset_head(128, seed=1)
    fitted, default = [], []
    for degree in (4, 8, 16):
        params = {**POLY, "degree": degree}
        fitted.append(poly_errors(held_out, fit_feature_map(calibration, params), **params).max())
        default.append(poly_errors(held_out, {}, **params).max())
    assert all(b < 0.8 * a for a, b in itertools.pairwise(fitted)), fitted
    assert all(f < d for f, d in zip(fitted, default, strict=True)), (fitted, default)
    assert fitted[-1] < 0.2, fitted


def test_one_row_nothing_to_fit() -> None:
    arrays = fit_feature_map(offset_head(1, seed=0), POLY)
    assert not any(a.any() for a in arrays.values())


def test_the_feature_map_fit_is_repeatable() -> None:
    block = offset_head(64, seed=0)
    first, second = fit_feature_map(block, POLY), fit_feature_map(block, POLY)
    assert all(np.array_equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize("variant", ["sketch", "mixed", "exact_poly"])
def test_the_fits_objective_is_the_nodes_error_on_its_rows(variant) -> None:
    """The dense formula the fit minimises is the reference's kernel, sketch included."""
    from attnrewrite.plan.fit import _PolyHead

    block = offset_head(96, seed=0)
    params = {**POLY, "variant": variant, "block": 16, "sketch_size": 8}
    gen = torch.Generator().manual_seed(3)
    arrays = [0.2 * torch.randn(3, 8, generator=gen) for _ in range(3)]
    rows = torch.tensor([0, 5, 17, 40, 41, 95])
    objective = _PolyHead.of(block, params).error(rows, arrays)
    q, k, v = (torch.from_numpy(x).double() for x in (block.q, block.k, block.v))
    names = ("query_gain", "key_gain", "key_shift")
    tensors = {n: a.double() for n, a in zip(names, arrays, strict=True)}
    out = polysketch.attention(q, k, v, scale=SCALE, is_causal=True, **params, **tensors)
    ref = torch.from_numpy(block.exact).double()[:, :, rows]
    expected = (out[:, :, rows] - ref).square().sum((0, 2, 3)) / ref.square().sum((0, 2, 3))
    torch.testing.assert_close(objective.double(), expected, rtol=1e-3, atol=1e-5)


CONV = get("convbasis").resolve({"bases": 16})


def conv_errors(operands: BlockOperands, center: np.ndarray | None, **params) -> np.ndarray:
    return errors("convbasis", operands, {"center": center}, **params)


def test_the_centre_lowers_the_error_of_biased_heads_on_other_inputs() -> None:
    center = fit_center(biased_head(256, seed=0), CONV)
    assert center.shape == (3, 8) and center.dtype == np.float32
    held_out = biased_head(256, seed=1)
    default = conv_errors(held_out, None, **CONV)
    fitted = conv_errors(held_out, center, **CONV)
    assert (default > 0.4).all(), default
    assert (fitted < 0.75 * default).all(), (fitted, default)


def relative_head_with_a_direction() -> BlockOperands:
    """A relative-position head (few conv bases) whose queries also share a direction: u.k
    varies key by key, which the plain bases must model and the centre takes exactly."""
    q, k, v = relative_qkv(128, changes=(5, 13, 29, 44, 80), noise=0.02)
    u = 2.0 * torch.randn(q.shape[1], 1, q.shape[-1], generator=torch.Generator().manual_seed(9))
    q = q + u.double()
    out = exact.attention(q, k, v, scale=1.0, is_causal=True)
    sig = Signature(4, ir.DataType.FLOAT, "none", False, True, False, False, False, False, 14)
    return BlockOperands(
        0, *(x.float().numpy() for x in (q, k, v)), None, out.float().numpy(), sig, 1.0, None
    )


def test_the_centred_variant_converges_to_exact_as_the_bases_grow() -> None:
    """Fitted again at each k, the centred bases stay at the head's noise level (0.02 of the
    scores) where the plain ones are off by O(1), and both are exact at k = n."""
    block = relative_head_with_a_direction()
    q, k, v = (torch.from_numpy(x).double() for x in (block.q, block.k, block.v))
    ref = torch.from_numpy(block.exact).double()
    for bases in (1, 4, 16, 128):
        params = {**CONV, "bases": bases}
        center = torch.from_numpy(fit_center(block, params)).double()
        errors = [
            (
                (
                    convbasis.attention(q, k, v, scale=1.0, is_causal=True, center=c, **params)
                    - ref
                ).norm()
                / ref.norm()
            ).item()
            for c in (None, center)
        ]
        if bases == 128:
            assert max(errors) < 1e-6, errors
        else:
            assert errors[1] < 0.1 < 0.5 < errors[0], (bases, errors)


def test_one_row_no_centre_to_fit() -> None:
    assert not fit_center(biased_head(1, seed=0), CONV).any()


def test_the_centre_fit_is_repeatable() -> None:
    block = biased_head(96, seed=0)
    assert np.array_equal(fit_center(block, CONV), fit_center(block, CONV))
