"""Sliding window with sinks: exact softmax on its pattern, exact attention when wide enough."""

from __future__ import annotations

import pytest
import torch

from attnrewrite.methods import exact, window

from .test_inputs import F64, padding, rand_qkv, rel_err

SCALE = 0.4


@pytest.mark.parametrize(
    ("sq", "skv", "is_causal"),
    [(24, 24, True), (9, 24, True), (24, 24, False), (9, 24, False), (30, 17, False)],
)
def test_wide_window_is_exact(sq, skv, is_causal):
    q, k, v = rand_qkv(sq=sq, skv=skv)
    alibi = -0.2 * (torch.arange(sq)[:, None] + skv - sq - torch.arange(skv)).abs().to(F64)
    for bias in (padding(skv, left=[2, 0], right=[0, 3]), alibi):
        ref = exact.attention(q, k, v, scale=SCALE, is_causal=is_causal, bias=bias)
        out = window.attention(
            q, k, v, scale=SCALE, is_causal=is_causal, bias=bias, width=max(sq, skv), sinks=0
        )
        assert rel_err(out, ref) < 1e-14


@pytest.mark.parametrize("is_causal", [True, False])
def test_weights_live_on_the_band_and_the_sinks(is_causal):
    q, k, _ = rand_qkv(b=1, sq=12, skv=20)
    v = torch.eye(20, dtype=F64).expand(1, 2, 20, 20)  # the output is the weight matrix
    weights = window.attention(q, k, v, scale=SCALE, is_causal=is_causal, width=3, sinks=2)
    pos = torch.arange(12)[:, None] + 8
    rel = pos - torch.arange(20)
    band = (rel >= 0) & (rel < 3) if is_causal else rel.abs() < 3
    allowed = band | ((torch.arange(20) < 2) & (rel >= 0 if is_causal else True))
    assert torch.equal(weights > 0, allowed.expand_as(weights))
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 12, dtype=F64))


def test_model_window_and_method_band_intersect():
    q, k, v = rand_qkv(sq=16, skv=16)
    both = window.attention(q, k, v, scale=SCALE, is_causal=True, window=4, width=8, sinks=2)
    ref = exact.attention(q, k, v, scale=SCALE, is_causal=True, window=4)
    assert rel_err(both, ref) < 1e-14  # the model's window is narrower and drops the sinks


@pytest.mark.parametrize(("kwargs", "message"), [({"width": 0}, "width"), ({"sinks": -1}, "sinks")])
def test_bad_parameters_raise(kwargs, message):
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match=message):
        window.attention(q, k, v, scale=1.0, is_causal=True, **kwargs)
