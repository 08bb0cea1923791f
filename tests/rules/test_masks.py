"""One mask classifier for both finders: a key is hidden when its bias is at or below
masks.VERY_NEGATIVE (-inf, finfo.min, the -1e4 of older exporters), not only when it is
-inf. The ONNX finder classifies the evaluated bias with masks.classify, the FX finder its
example's bias with rewrite.classify; both use masks.hidden and must agree."""

from __future__ import annotations

import pytest
import torch

import attnrewrite.torch as art
from attnrewrite.match import MaskKind
from attnrewrite.patterns import masks
from attnrewrite.torch.rewrite import classify
from tests.torch_path.models import HandAttention

S = 6
FILLS = {  # what hides the future -> kind
    "-inf": (float("-inf"), MaskKind.CAUSAL),
    "finfo.min": (torch.finfo(torch.float32).min, MaskKind.CAUSAL),
    "-1e4": (-1e4, MaskKind.CAUSAL),
    "-100": (-100.0, MaskKind.BIAS),  # must not match: exp(-100) still weighs the key
}


@pytest.mark.parametrize("name", FILLS)
def test_onnx_and_fx_classifiers_agree(name: str) -> None:
    fill, kind = FILLS[name]
    future = torch.ones(S, S, dtype=torch.bool).triu(1)
    bias = torch.zeros(S, S).masked_fill(future, fill)
    assert masks.classify(bias.numpy(), S, S) == (kind, None)  # the ONNX finder's
    plan = classify(bias, S, S, causal_flag=False, data_dep=False)  # the FX finder's
    assert (plan.kind, plan.is_causal) == (kind, kind is MaskKind.CAUSAL)
    assert plan.mode == ("none" if kind is MaskKind.CAUSAL else "full")


def test_a_window_is_found_by_the_shared_band_test() -> None:
    rel = torch.arange(S)[:, None] - torch.arange(S)[None, :]
    bias = torch.zeros(S, S).masked_fill((rel < 0) | (rel >= 3), -1e4)
    assert masks.classify(bias.numpy(), S, S) == (MaskKind.SLIDING_WINDOW, 3)
    plan = classify(bias, S, S, causal_flag=False, data_dep=False)
    assert (plan.kind, plan.window, plan.mode) == (MaskKind.SLIDING_WINDOW, 3, "none")


@pytest.mark.parametrize("name", FILLS)
def test_fx_rewrite_of_each_fill_is_exact(name: str) -> None:
    fill, kind = FILLS[name]
    model = HandAttention(fill=fill).eval()
    x = torch.randn(2, S, 8, generator=torch.Generator().manual_seed(3))
    fast = art.rewrite(model, (x,), "exact", strict=False)
    [match] = (r.match for r in fast.matches)
    assert match.mask is kind  # -1e4 was a bias tensor here before the classifiers agreed
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)
