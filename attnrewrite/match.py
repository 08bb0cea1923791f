"""The canonical description of one softmax attention, however the graph spelled it.

Every finder (ONNX Softmax anchors, fused ONNX attention ops, torch FX) produces
`AttentionMatch` values; the rewrite, the planner and the reports read only these.
A match says what the attention computes:

    out = softmax(cap(scale * q @ k^T) + bias [+ causal/window mask]) @ v

where cap(s) = softcap * tanh(s / softcap) under a logit soft-cap (Gemma 2), else s; with
q [..., Hq, Sq, d], k [..., Hkv, Skv, d], v [..., Hkv, Skv, dv] once each operand's layout
adapter is applied. Anything the finder could not express this way becomes a
`Refusal` with a reason that reaches the user.

A match is plain data: it names the nodes and values it covers (unique in its graph, see
attnrewrite.graphs), so it can be kept, compared and pickled, and it holds for every copy of
the model. A stage that edits a model binds it there (`AttentionMatch.bind`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import onnx_ir as ir

from attnrewrite.graphs import Scope
from attnrewrite.rules.operands import Layout
from attnrewrite.rules.replay import Step
from attnrewrite.rules.scores import RESHAPES
from attnrewrite.rules.variants import Variant

__all__ = ["RESHAPES", "Layout", "Variant"]  # the rules' vocabulary, named here for every stage

# Node metadata left by substitute.contrib, which writes com.microsoft ops out on load:
FUSED_FROM = "attnrewrite.fused_from"  # on the Softmax written for an op: "domain:op"
NOT_EXPANDED = "attnrewrite.not_expanded"  # on an op left as it was: why


class MaskKind(StrEnum):
    """What the additive mask computes, classified by evaluating it (never by node names)."""

    NONE = "none"
    CAUSAL = "causal"
    SLIDING_WINDOW = "sliding_window"
    PADDING = "padding"
    CAUSAL_PADDING = "causal_padding"
    BIAS = "bias"
    CAUSAL_BIAS = "causal_bias"
    FULLY_MASKED = "fully_masked"  # classification only: every key hidden at the probe input

    @property
    def is_causal(self) -> bool:
        return self in (
            MaskKind.CAUSAL,
            MaskKind.SLIDING_WINDOW,
            MaskKind.CAUSAL_PADDING,
            MaskKind.CAUSAL_BIAS,
        )

    @property
    def needs_tensor(self) -> bool:
        """Whether the rewritten node must receive the mask as a tensor input."""
        return self in (
            MaskKind.PADDING,
            MaskKind.CAUSAL_PADDING,
            MaskKind.BIAS,
            MaskKind.CAUSAL_BIAS,
        )


@dataclass(frozen=True)
class Operand:
    """A tensor feeding the attention (by value name), with the layout it arrives in."""

    value: str
    layout: Layout = Layout.BHSD
    heads: int | None = None


@dataclass(frozen=True)
class Bias:
    """Where the additive bias comes from: a value used as is, or score steps to replay on a
    zero score (rules.replay; each names its node, whose other inputs it reads)."""

    value: str | None = None
    steps: tuple[Step, ...] = ()
    boolean_keep: bool = False  # value is a boolean mask, True = attend
    one_row: bool = False  # value's query axis is statically 1: it only weighs keys

    @property
    def reshapes(self) -> bool:
        """Whether the steps reshape the scores: replayed on zero, they then need the scores'
        shape, and give the bias back in it."""
        return any(step.op in RESHAPES for step in self.steps)


@dataclass(frozen=True)
class AttentionMatch:
    """One attention block, in canonical form.

    `nodes` are the nodes the rewrite replaces (those left without consumers are removed);
    `output` is the value the rewritten node takes over, in `output_layout`.
    """

    anchor: str
    graph_name: str
    variant: tuple[str, ...]
    q: Operand
    k: Operand
    v: Operand
    output: str
    nodes: tuple[str, ...]
    scale: float
    scale_source: str
    mask: MaskKind
    upstream_scale: float = 1.0  # a scalar already applied to q before its reshape (OPT)
    bias: Bias | None = None
    window: int | None = None
    softcap: float | None = None  # logit soft-cap c: scores c * tanh(s / c) before the mask
    q_heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    q_len: int | str | None = None
    kv_len: int | str | None = None
    output_layout: Layout = Layout.BHSD
    rank: int = 4
    kv_repeat: bool = False  # the body repeats k, v heads to match q (grouped-query attention)
    shape_readers: tuple[str, ...] = ()  # Shape nodes reading the scores: re-routed to q, k
    runtime_factors: tuple[tuple[str, bool], ...] = ()  # (value, divide) applied to q
    dtype: ir.DataType = ir.DataType.FLOAT  # q's element type (v's where q's is unknown)
    nan_guard: bool = False
    float32_softmax: bool = False
    causal_in_bias: bool = False  # the bias itself hides future keys (not an is_causal flag)

    @property
    def effective_scale(self) -> float:
        """What multiplies q.k in the model: the node's scale times any already in q."""
        return self.scale * self.upstream_scale

    @property
    def keywise(self) -> bool:
        """The bias only weighs keys, so its last query row holds all of it: a padding kind
        (the finder also gives that to data masks of one query row, [B, 1, 1, Skv]) or a
        constant bias whose query axis is statically 1. Methods that cannot carry a
        per-query bias can still honour these, as key weights."""
        if self.bias is None:
            return False
        return self.mask in (MaskKind.PADDING, MaskKind.CAUSAL_PADDING) or self.bias.one_row

    def describe(self) -> dict[str, object]:
        """JSON-ready description for rewrite.json and `inspect`, whichever finder found it."""
        q_heads, kv_heads = self.q_heads, self.kv_heads
        return {
            "anchor": self.anchor,
            "graph": self.graph_name,
            "variant": list(self.variant),
            "nodes": list(self.nodes),
            "q": self.q.value,
            "k": self.k.value,
            "v": self.v.value,
            "layout": {
                "q": self.q.layout.value,
                "k": self.k.layout.value,
                "v": self.v.layout.value,
            },
            "output": self.output,
            "mask": self.mask.value,
            "window": self.window,
            "softcap": self.softcap,
            "scale": self.scale,
            "scale_source": self.scale_source,
            "upstream_scale": self.upstream_scale,
            "effective_scale": self.effective_scale,
            "q_heads": q_heads,
            "kv_heads": kv_heads,
            "kv_groups": q_heads // kv_heads if q_heads and kv_heads else None,
            "head_dim": self.head_dim,
            "q_len": self.q_len,
            "kv_len": self.kv_len,
            "float32_softmax": self.float32_softmax,
        }

    def bind(self, scope: Scope) -> Bound:
        """The match's nodes and values in one model (its graph's `scope`); ValueError when
        the model lacks one of them."""
        bias = self.bias or Bias()
        return Bound(
            q=scope.value(self.q.value),
            k=scope.value(self.k.value),
            v=scope.value(self.v.value),
            output=scope.value(self.output),
            nodes=tuple(scope.node(name) for name in self.nodes),
            shape_readers=tuple(scope.node(name) for name in self.shape_readers),
            runtime_factors=tuple((scope.value(n), divide) for n, divide in self.runtime_factors),
            bias=scope.value(bias.value) if bias.value is not None else None,
            bias_steps=tuple(scope.node(step.node) for step in bias.steps if step.node),
        )


@dataclass(frozen=True)
class Bound:
    """A match's names resolved in one model: the objects a rewrite of that model edits."""

    q: ir.Value
    k: ir.Value
    v: ir.Value
    output: ir.Value
    nodes: tuple[ir.Node, ...]
    shape_readers: tuple[ir.Node, ...]
    runtime_factors: tuple[tuple[ir.Value, bool], ...]
    bias: ir.Value | None
    bias_steps: tuple[ir.Node, ...]  # the nodes of the bias's steps, in step order


@dataclass(frozen=True)
class Refusal:
    """A Softmax or attention op that was not rewritten, and why."""

    anchor: str
    op_type: str
    graph_name: str
    reason: str

    def describe(self) -> dict[str, str]:
        return {
            "anchor": self.anchor,
            "op_type": self.op_type,
            "graph": self.graph_name,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class FindResult:
    matches: tuple[AttentionMatch, ...]
    refusals: tuple[Refusal, ...]
