"""The variant tags: which written form of attention a finder matched (rewrite.json's
`variant`, `inspect`). One name per form, whichever finder saw it, so reports of ONNX and
torch models read alike and a count over them adds up.
"""

from __future__ import annotations

from enum import StrEnum


class Variant(StrEnum):
    """A form an attention block was written in."""

    SOFTMAX = "softmax"  # a softmax op
    SOFTMAX_DECOMPOSED = "softmax:decomposed"  # exp(x - max) / sum(exp(x - max)) written out
    FLOAT32_SOFTMAX = "softmax:float32-upcast"  # the softmax computed in float32
    K_TRANSPOSE = "k:transpose"  # Transpose(k, [.., -1, -2])
    K_TRANSPOSE_BSHD = "k:transpose-bshd"  # Transpose(k [B, S, H, d], [0, 2, 3, 1])
    K_RESHAPE_TRANSPOSE_RESHAPE = "k:reshape-transpose-reshape"  # through [B*H, S, d]
    K_STORED_TRANSPOSED = "k:stored-transposed"  # K^T as its projection wrote it
    KV_REPEAT = "kv:repeat"  # k, v repeated per query head (grouped-query attention)
    SCALE_ON_Q = "scale:on-q"
    SCALE_UPSTREAM_Q = "scale:upstream-q"  # on q before its reshape (already in q)
    SCALE_ON_K = "scale:on-k"
    NAN_GUARD = "probs:nan-guard"  # Where(IsNaN(p), 0, p)
    DROPOUT = "probs:dropout"  # inference dropout on the probabilities
    BATCHED_3D = "batched-3d"  # [B*H, S, d] operands
    SCORES_RESHAPED = "scores:reshaped"  # reshapes of whole key rows between Q.K^T and .V
    SOFTCAP = "scores:softcap"  # logit soft-capping c * tanh(s / c) (Gemma 2, Grok)
    MASK_UNCLASSIFIED = "mask:unclassified"  # a mask that could not be evaluated
    MASK_WINDOW_UNCHECKED = "mask:window-unchecked"  # a window wider than could be looked for
    ONNX_ATTENTION = "onnx:Attention"  # the ai.onnx Attention op
    SDPA = "sdpa"  # torch's scaled_dot_product_attention (its other kernels: by op name)
    ENABLE_GQA = "enable_gqa"  # SDPA's own grouped-query flag


def mask_tag(op: str) -> str:
    """The op that first reads the mask: mask:add, mask:where, mask:sub, mask:mul."""
    return f"mask:{op.lower()}"


def rank_tag(rank: int) -> str:
    """The rank of a fused op's operands: rank3 ([B, S, H*d]) or rank4 ([B, H, S, d])."""
    return f"rank{rank}"
