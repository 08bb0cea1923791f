"""A deep model: `n` causal self-attention layers in a row, each with a residual connection.

Used where the number of blocks matters: the fuzz suite's unusual models and the scaling
benchmark (1,000 blocks found and rewritten in linear time).
"""

from __future__ import annotations

import onnx

from tests.corpus.handbuilt import (
    F32,
    Builder,
    E,
    add_bias,
    attend,
    causal_bias_range,
    hidden_input,
    merge_heads,
    qkv_heads,
)


def chained_layers(n: int, seed: int = 0) -> onnx.ModelProto:
    """x [B, S, E] -> n x (x + Wo . attention(x)) -> y [B, S, E]."""
    b = Builder(f"chain{n}", seed=seed)
    x = hidden_input(b)
    for _ in range(n):
        q, k, v = qkv_heads(b, x)
        ctx = attend(b, q, k, v, mask=add_bias(causal_bias_range)).ctx
        x = b.op("Add", x, b.op("MatMul", merge_heads(b, ctx), b.weight(E, E)))
    b.output(x, F32, [2, "S", E], name="y")
    return b.model(18)
