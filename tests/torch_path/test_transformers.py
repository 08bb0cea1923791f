"""transformers models (random weights, small configs): the exact rewrite reproduces the
outputs and the gradients of the original, and the finder describes each block."""

from __future__ import annotations

import pytest
import torch

import attnrewrite.torch as art
from attnrewrite.match import MaskKind
from attnrewrite.rules.variants import Variant
from tests.torch_path.models import batch, transformer

CASES = {  # (arch, attn_implementation) -> (mask kind, q heads, kv heads, variant tag)
    ("gpt2", "eager"): (MaskKind.CAUSAL_PADDING, 2, 2, Variant.SOFTMAX),
    ("llama", "eager"): (MaskKind.CAUSAL_PADDING, 4, 2, Variant.KV_REPEAT),
    ("llama", "sdpa"): (MaskKind.CAUSAL_PADDING, 4, 2, Variant.SDPA),
    ("bert", "sdpa"): (MaskKind.PADDING, 2, 2, Variant.SDPA),
    ("gemma2", "eager"): (MaskKind.CAUSAL_PADDING, 4, 2, Variant.SOFTCAP),
}


def _loss(out: object) -> torch.Tensor:
    if getattr(out, "loss", None) is not None:
        return out.loss
    return out.last_hidden_state.square().mean()


@pytest.mark.parametrize(("arch", "impl"), CASES)
def test_exact_rewrite_reproduces_outputs_and_gradients(arch: str, impl: str) -> None:
    kind, hq, hkv, tag = CASES[arch, impl]
    model = transformer(arch, impl)
    inputs = batch(labels=arch != "bert")
    fast = art.rewrite(model, inputs, "exact", strict=False)
    [rewritten] = fast.matches
    m = rewritten.match
    assert (m.mask, m.q_heads, m.kv_heads) == (kind, hq, hkv)
    assert tag in m.variant and rewritten.fallback is None
    assert m.scale == pytest.approx(m.head_dim**-0.5)

    ref = _loss(model(**inputs))
    ref_grads = torch.autograd.grad(ref, list(model.parameters()), allow_unused=True)
    out = _loss(fast(**inputs))
    grads = torch.autograd.grad(out, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        if r is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_without_a_mask_input_the_mask_is_causal() -> None:
    model = transformer("gpt2", "sdpa")
    fast = art.rewrite(model, batch(padding=False), "multipole", strict=False, block=2)
    [m] = fast.matches
    assert (m.match.mask, m.is_causal, m.method, m.params["block"]) == (
        MaskKind.CAUSAL,
        True,
        "multipole",
        2,
    )
