"""The exact body equals exact float64 attention on every layer variant the harness builds."""

from __future__ import annotations

import pytest

from attnrewrite.layers import LayerSpec
from tests.bodies.harness import body_error

SPECS = {
    "causal": LayerSpec(),
    "bidirectional_padding": LayerSpec(causal=False, mask="padding"),
    "causal_padding_gqa": LayerSpec(mask="padding", kv_heads=2),
    "window_padding": LayerSpec(mask="padding", window=5),
    "full_bias": LayerSpec(causal=False, mask="bias"),
}


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize(("q_len", "kv_len"), [(1, None), (33, None), (5, 9)])
def test_exact_body_matches_reference(name, q_len, kv_len) -> None:
    assert body_error(SPECS[name], "exact", None, q_len, kv_len) <= 1e-6


@pytest.mark.parametrize("chunks", [1, 3, 64])
@pytest.mark.parametrize("name", ["causal", "causal_padding_gqa", "window_padding"])
@pytest.mark.parametrize(("q_len", "kv_len"), [(2, None), (40, None), (7, 30)])
def test_causal_chunks_give_the_same_attention(name, chunks, q_len, kv_len) -> None:
    """Query chunks against only the keys they see: empty chunks (64 > length), a KV-cache
    offset, a model window and padding masks cut per chunk."""
    assert body_error(SPECS[name], "exact", {"chunks": chunks}, q_len, kv_len) <= 1e-6
