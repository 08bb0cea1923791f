"""The structural variant of an attention node, which selects its function overload.

Attributes (scale, window, the soft-cap's value, method parameters) are values; whether there
is a bias input, causality, a logit soft-cap, kv-head repeat and dtype change the body's
structure, so each combination gets
its own overload of the op's function: `ExactAttention` / overload `r4_f32_causal_bias`.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from attnrewrite.match import AttentionMatch


@dataclass(frozen=True)
class Signature:
    rank: int
    dtype: ir.DataType
    bias: str  # "none" | "additive" | "keep" (boolean, True = attend)
    keywise: bool  # the bias only hides keys (padding): its last query row holds all of it
    causal: bool
    window: bool
    kv_repeat: bool
    nan_guard: bool
    float32_softmax: bool
    head_dim: int | None = None  # static q/k head dim where known (sketch matrices need it)
    causal_in_bias: bool = False  # the bias hides future keys itself: the body adds no causal mask
    softcap: bool = False  # scores capped to softcap * tanh(s / softcap) (its value: attribute)

    @classmethod
    def of(cls, match: AttentionMatch) -> Signature:
        bias = "none"
        if match.bias is not None:
            bias = "keep" if match.bias.boolean_keep else "additive"
        return cls(
            rank=match.rank,
            dtype=match.dtype,
            bias=bias,
            keywise=match.keywise,
            causal=match.mask.is_causal,
            causal_in_bias=match.causal_in_bias and bias != "none",
            window=match.window is not None,
            kv_repeat=match.kv_repeat,
            nan_guard=match.nan_guard,
            float32_softmax=match.float32_softmax,
            head_dim=match.head_dim,
            softcap=match.softcap is not None,
        )

    @property
    def compute_dtype(self) -> ir.DataType:
        return ir.DataType.FLOAT if self.float32_softmax else self.dtype

    @property
    def overload(self) -> str:
        parts = [f"r{self.rank}", self.dtype.short_name()]
        flags = {
            "bias": self.bias == "additive",
            "keepmask": self.bias == "keep",
            "causal": self.causal,
            "window": self.window,
            "softcap": self.softcap,
            "gqa": self.kv_repeat,
            "nanguard": self.nan_guard,
            "softmax32": self.float32_softmax and self.dtype != ir.DataType.FLOAT,
        }
        return "_".join(parts + [name for name, on in flags.items() if on])
