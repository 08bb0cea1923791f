"""Gradients through the replaced module: torch.autograd.gradcheck in float64 for each method,
and a few optimizer steps of a tiny rewritten model lowering its loss.

Where a method is piecewise (conv-basis chooses change points with topk or a binary search,
PolySketch's fit chooses a shift): the choice is a discrete function of q and k, constant
almost everywhere, so gradients are those of the chosen approximation; gradcheck's small
perturbations do not flip the choice on these inputs. ``fast_mode`` keeps the runs short.
"""

from __future__ import annotations

import pytest
import torch

import attnrewrite.torch as art
from tests.torch_path.models import HandAttention, batch, transformer

METHODS = {  # small parameters so the approximation is active at n = 5
    "exact": {},
    "convbasis": {"bases": 2, "probe": 2},
    "polysketch": {"degree": 2, "sketch_size": 2, "block": 2},
    "multipole": {"block": 2, "sinks": 0},  # sinks would cover most of n = 5
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mask", ["tril", "none"])
def test_gradcheck_of_the_rewritten_module(method: str, mask: str) -> None:
    torch.manual_seed(0)
    model = HandAttention(dim=4, heads=1, mask=mask).double().eval()
    x = torch.randn(1, 5, 4, dtype=torch.float64)
    fast = art.rewrite(model, (x,), method, strict=False, **METHODS[method])
    assert fast.matches[0].method == method and fast.matches[0].fallback is None
    if method != "exact":  # the approximation is what gradcheck sees, not exact attention
        assert not torch.allclose(fast(x), model(x), atol=1e-9)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(fast, (x,), fast_mode=True)
    # the parameters (q/k/v projections) receive gradients too
    fast(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_optimizer_steps_lower_the_loss_of_an_approximate_rewrite() -> None:
    model = transformer("llama", "eager")
    inputs = batch(padding=False)
    fast = art.rewrite(model, inputs, "convbasis", strict=False, bases=2, probe=2)
    assert fast.matches[0].method == "convbasis"
    opt = torch.optim.Adam(fast.parameters(), lr=1e-2)
    losses = []
    fast.train()
    for _ in range(5):
        opt.zero_grad()
        loss = fast(**inputs).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
