"""The rewritten module runs at any sequence length and batch size (dynamic shapes by
default), and transformers models trace with their default config, KV cache included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnrewrite.torch as art
from attnrewrite.errors import AttnRewriteError
from tests.torch_path.models import VOCAB, HandAttention, batch, transformer


def _other_batch(n: int, b: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    mask = torch.ones(b, n, dtype=torch.long)
    mask[0, -(n // 3) :] = 0  # right padding, every row keeps keys
    return {"input_ids": torch.randint(0, VOCAB, (b, n), generator=g), "attention_mask": mask}


@pytest.mark.parametrize(
    ("arch", "impl"), [("gpt2", "eager"), ("llama", "eager"), ("llama", "sdpa")]
)
def test_default_config_with_a_kv_cache_traces_and_returns_the_cache(arch: str, impl: str) -> None:
    model = transformer(arch, impl, use_cache=True)
    inputs = batch(labels=False)
    fast = art.rewrite(model, inputs, "exact")
    [m] = (r.match for r in fast.matches)
    assert m.kv_heads == (2 if arch == "llama" else m.q_heads)  # GQA still seen through
    for n, b in ((7, 2), (12, 3), (3, 1)):  # the example's shape, then others
        feeds = _other_batch(n, b)
        out, ref = fast(**feeds), model(**feeds)
        torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-6)
        [layer], [ref_layer] = out.past_key_values.layers, ref.past_key_values.layers
        torch.testing.assert_close(layer.keys, ref_layer.keys)
        assert layer.keys.shape[-2] == n


def test_an_approximate_method_runs_at_other_lengths() -> None:
    model = transformer("gpt2", "sdpa")
    feeds = _other_batch(20, 2)
    ref = model(**feeds).logits
    wide = art.rewrite(model, batch(labels=False), "multipole", block=16)  # exact up to 32
    narrow = art.rewrite(model, batch(labels=False), "multipole", block=2)
    torch.testing.assert_close(wide(**feeds).logits, ref, rtol=1e-5, atol=1e-6)
    error = (narrow(**feeds).logits - ref).norm() / ref.norm()
    assert 1e-5 < error < 0.5  # the approximation is at work at n = 20, and sane


def test_hand_written_attention_runs_at_any_length_with_positional_inputs() -> None:
    model = HandAttention(mask="tril").eval()
    fast = art.rewrite(model, (torch.randn(2, 5, 8),), "exact")
    for n in (2, 9, 15):  # its causal buffer holds 16 positions: the trace keeps a bound
        x = torch.randn(3, n, 8)
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)


def test_static_shapes_on_request_stay_at_the_example_length() -> None:
    model = HandAttention(mask="tril").eval()
    fast = art.rewrite(model, (torch.randn(2, 5, 8),), "exact", dynamic_shapes=None)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(AssertionError, match="Guard failed"):
        fast(torch.randn(2, 9, 8))


class ReturnsACache(nn.Module):
    """A model whose output holds an object torch.export cannot flatten, named like a cache."""

    class LayerCache:
        def __init__(self, k: torch.Tensor) -> None:
            self.k = k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        return torch.softmax(x @ x.transpose(-1, -2), -1) @ x, self.LayerCache(x)


def test_an_unflattenable_cache_gets_a_one_line_hint() -> None:
    with pytest.raises(AttnRewriteError, match="use_cache=False") as caught:
        art.rewrite(ReturnsACache(), (torch.randn(1, 4, 8),), "exact")
    assert "\n" not in str(caught.value)
