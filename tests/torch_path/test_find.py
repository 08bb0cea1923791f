"""The FX finder on hand-written spellings: what it matches, in the ONNX vocabulary, and the
softmaxes it must refuse. Every match is checked by running the exact rewrite."""

from __future__ import annotations

import pickle

import pytest
import torch

import attnrewrite.torch as art
from attnrewrite.match import AttentionMatch, Layout, MaskKind
from attnrewrite.rules.variants import Variant
from tests.torch_path.models import Classifier, HandAttention

X = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1))
X16 = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(1))

FORMS = {  # kwargs -> (mask kind, window, scale source, variant tag)
    "q_scale_tril": ({}, MaskKind.CAUSAL, None, "q", Variant.SOFTMAX),
    "k_scale_keep": ({"scale_on": "k", "mask": "keep"}, MaskKind.CAUSAL, None, "k", None),
    "div_scores_none": (
        {"scale_on": "scores", "mask": "none"},
        MaskKind.NONE,
        None,
        "scores",
        None,
    ),
    "window": ({"mask": "window", "window": 3}, MaskKind.SLIDING_WINDOW, 3, "q", None),
    "alibi": ({"mask": "alibi"}, MaskKind.CAUSAL_BIAS, None, "q", None),
    "gqa_repeat_interleave": (
        {"heads": 4, "kv_heads": 2, "dim": 16},
        MaskKind.CAUSAL,
        None,
        "q",
        Variant.KV_REPEAT,
    ),
    "bmm_3d": ({"bmm": True}, MaskKind.CAUSAL, None, "q", None),
    "softcap": ({"softcap": 0.5}, MaskKind.CAUSAL, None, "q", Variant.SOFTCAP),
    "k_stored_transposed": (
        {"k_stored_t": True},
        MaskKind.CAUSAL,
        None,
        "q",
        Variant.K_STORED_TRANSPOSED,
    ),
    "sdpa_is_causal": ({"sdpa": True}, MaskKind.CAUSAL, None, "default 1/sqrt(d)", Variant.SDPA),
    "sdpa_gqa": (
        {"sdpa": True, "heads": 4, "kv_heads": 2, "dim": 16},
        MaskKind.CAUSAL,
        None,
        None,
        Variant.KV_REPEAT,
    ),
}


@pytest.mark.parametrize("name", FORMS)
def test_form_is_matched_and_exact(name: str) -> None:
    kwargs, kind, window, source, tag = FORMS[name]
    torch.manual_seed(0)
    model = HandAttention(**kwargs).eval()
    x = X16 if kwargs.get("dim") == 16 else X
    fast = art.rewrite(model, (x,), "exact", strict=False)
    assert len(fast.matches) == 1, fast.report()
    m = fast.matches[0].match
    assert m.mask is kind
    assert m.window == window
    assert m.scale == pytest.approx(0.5)  # head dim 4
    if source:
        assert m.scale_source == source
    if tag:
        assert tag in m.variant
    assert m.k.layout is (Layout.BHDS if kwargs.get("k_stored_t") else Layout.BHSD)
    heads = kwargs.get("heads", 2)
    assert (m.q_heads, m.kv_heads) == (
        (heads, kwargs.get("kv_heads", heads)) if not kwargs.get("bmm") else (1, 1)
    )
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)
    assert set(m.describe()) >= {"mask", "scale", "window", "q_heads", "kv_heads", "variant"}


def test_a_soft_cap_is_honoured_by_exact_and_window_and_kept_exact_by_the_others() -> None:
    torch.manual_seed(0)
    model = HandAttention(softcap=0.5).eval()
    uncapped = HandAttention().eval()
    uncapped.load_state_dict(model.state_dict())
    assert (model(X) - uncapped(X)).abs().max() > 1e-2  # the cap shows in the outputs
    for method, params in (("exact", {}), ("window", {"width": 16, "sinks": 0})):
        fast = art.rewrite(model, (X,), method, strict=False, **params)
        [rewritten] = fast.matches
        assert (rewritten.method, rewritten.fallback) == (method, None)
        assert rewritten.match.softcap == 0.5 and rewritten.describe()["softcap"] == 0.5
        torch.testing.assert_close(fast(X), model(X), rtol=1e-5, atol=1e-6)
    fast = art.rewrite(model, (X,), "multipole", strict=False)
    [rewritten] = fast.matches
    assert rewritten.fallback == (
        "multipole cannot run this block: multipole cannot honour logit soft-capping"
    )
    torch.testing.assert_close(fast(X), model(X), rtol=1e-5, atol=1e-6)


def test_the_record_is_the_onnx_finders_match_naming_fx_nodes() -> None:
    model = HandAttention(mask="alibi").eval()
    fast = art.rewrite(model, (X,), "exact", strict=False)
    (rewritten,) = fast.matches
    m = rewritten.match
    assert isinstance(m, AttentionMatch) and pickle.loads(pickle.dumps(m)) == m
    names = {node.name for node in fast.graph_module.graph.nodes}
    assert m.q.value in names and m.k.value in names and m.v.value in names  # the block's inputs
    assert m.bias is not None and m.bias.steps  # the steps the block replays on the mask
    assert rewritten.describe() == {
        **m.describe(),
        "is_causal": rewritten.is_causal,
        "block": rewritten.block,
        "method": "exact",
        "params": rewritten.params,
    }


def test_strict_trace_matches_too() -> None:
    model = HandAttention(mask="window").eval()
    fast = art.rewrite(model, (X,), "exact", strict=True)
    assert [m.match.mask for m in fast.matches] == [MaskKind.SLIDING_WINDOW]


def test_softmax_that_is_not_attention_is_refused_with_reason() -> None:
    with pytest.raises(art.AttnRewriteError, match="no softmax attention found in Classifier"):
        art.rewrite(Classifier(), (torch.randn(3, 8),), strict=False)


def test_probabilities_with_another_consumer_are_refused() -> None:
    model = HandAttention(extra_softmax=True).eval()
    with pytest.raises(art.AttnRewriteError, match=r"another consumer \(a graph output\)"):
        art.rewrite(model, (X,), strict=False)


def test_refusals_are_reported_beside_matches() -> None:
    class Both(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn, self.head = HandAttention(), Classifier()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attn(x))

    fast = art.rewrite(Both().eval(), (X,), strict=False)
    assert len(fast.matches) == 1
    [refusal] = fast.report()["not_rewritten"]
    assert set(refusal) == {"anchor", "op_type", "graph", "reason"}
    assert refusal["reason"].startswith("softmax output is a model output and feeds no MatMul")


def test_fused_variants_with_tuple_outputs() -> None:
    aten = torch.ops.aten

    class Fused(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            a = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)[0]
            return a + aten._scaled_dot_product_attention_math(q, k, v, None, 0.0, False)[0]

    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    fast = art.rewrite(Fused(), (q, k, v), strict=False)
    assert [(m.match.variant[0], m.match.mask) for m in fast.matches] == [
        ("_scaled_dot_product_flash_attention_for_cpu", MaskKind.CAUSAL),
        ("_scaled_dot_product_attention_math", MaskKind.NONE),
    ]
    torch.testing.assert_close(fast(q, k, v), Fused()(q, k, v))


def test_dynamic_shapes_keep_shape_masks_exact_at_other_lengths() -> None:
    model = HandAttention(mask="window", window=3).eval()
    s = torch.export.Dim("s", min=2, max=16)
    fast = art.rewrite(model, (X,), "exact", strict=False, dynamic_shapes=({1: s},))
    (m,) = fast.matches
    assert (m.match.mask, m.match.window) == (MaskKind.SLIDING_WINDOW, 3)
    for n in (2, 11):
        y = torch.randn(2, n, 8)
        torch.testing.assert_close(fast(y), model(y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("mask", "method", "params", "why"),
    [
        ("alibi", "polysketch", {"block": 2}, "key-wise"),
        ("window", "multipole", {"block": 2}, "sliding window"),
    ],
)
def test_a_mask_the_method_cannot_honour_keeps_the_block_exact(
    mask: str, method: str, params: dict, why: str
) -> None:
    model = HandAttention(mask=mask).eval()
    fast = art.rewrite(model, (X,), method, strict=False, **params)
    [m] = fast.matches
    assert m.method == "exact" and why in m.fallback
    assert fast.report()["summary"]["kept_exact"] == 1
    torch.testing.assert_close(fast(X), model(X), rtol=1e-5, atol=1e-6)
