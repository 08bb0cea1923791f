"""Fused attention ops written by exporters or earlier optimisation passes.

    ai.onnx Attention (opset 23+), 4-D [B,H,S,d] or 3-D [B,S,H*d]      -> q, k, v, mask
    com.microsoft attention ops left in the graph                       -> refused, with why

com.microsoft Attention, MultiHeadAttention and GroupQueryAttention are written out in
standard ops on load (substitute.contrib) and found through their Softmax; those that
could not be carry the reason. Each rule reads the op's own attributes; nothing is
evaluated.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from attnrewrite.match import (
    NOT_EXPANDED,
    AttentionMatch,
    Bias,
    Layout,
    MaskKind,
    Operand,
    Refusal,
)
from attnrewrite.patterns.graph_utils import (
    element_type,
    float_attr,
    int_attr,
    is_op,
    one_query_row,
    rank_of,
    static_dim,
)
from attnrewrite.patterns.view import ONNX
from attnrewrite.rules.operands import ungroup_kv
from attnrewrite.rules.variants import Variant, rank_tag

MS = "com.microsoft"


def match_fused(node: ir.Node, graph_name: str) -> AttentionMatch | Refusal | None:
    if is_op(node, "Attention"):
        return _onnx_attention(node, graph_name)
    if node.domain == MS and node.op_type in CONTRIB_ATTENTION:
        # the ones written out on load are gone (see substitute.contrib); these stayed
        reason = node.metadata_props.get(NOT_EXPANDED) or CONTRIB_ATTENTION[node.op_type]
        return _refuse(node, graph_name, reason)
    return None


CONTRIB_ATTENTION = {
    "Attention": "com.microsoft Attention in this form is not written out",
    "MultiHeadAttention": "com.microsoft MultiHeadAttention in this form is not written out",
    "GroupQueryAttention": "com.microsoft GroupQueryAttention in this form is not written out",
    "DecoderMaskedMultiHeadAttention": (
        "com.microsoft DecoderMaskedMultiHeadAttention (one-token decoding over a shared, "
        "beam-indexed cache) is not written out"
    ),
    "PackedAttention": "com.microsoft PackedAttention (a batch's tokens packed) is not written out",
    "PackedMultiHeadAttention": (
        "com.microsoft PackedMultiHeadAttention (tokens of a batch packed) is not written out"
    ),
    "SparseAttention": "com.microsoft SparseAttention (block-sparse layouts) is not written out",
    "LongformerAttention": "com.microsoft LongformerAttention is not written out",
}


def _refuse(node: ir.Node, graph_name: str, reason: str) -> Refusal:
    return Refusal(
        node.name or "",
        f"{node.domain + '::' if node.domain else ''}{node.op_type}",
        graph_name,
        reason,
    )


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _used(node: ir.Node, index: int) -> bool:
    return len(node.outputs) > index and bool(
        node.outputs[index].uses() or node.outputs[index].is_graph_output()
    )


def _onnx_attention(node: ir.Node, graph_name: str) -> AttentionMatch | Refusal:
    q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
    if _input(node, 4) is not None or _input(node, 5) is not None:
        return _refuse(node, graph_name, "Attention with past_key/past_value is not rewritten yet")
    if _input(node, 6) is not None:
        return _refuse(node, graph_name, "Attention with nonpad_kv_seqlen is not rewritten yet")
    if float_attr(node, "softcap", 0.0):
        return _refuse(node, graph_name, "Attention with softcap is not supported")
    if _used(node, 3):
        return _refuse(node, graph_name, "Attention's qk_matmul_output is used elsewhere")
    rank = rank_of(q)
    if rank == 3:
        q_heads, kv_heads = int_attr(node, "q_num_heads"), int_attr(node, "kv_num_heads")
        hidden = static_dim(q, -1)
        head_dim = hidden // q_heads if isinstance(hidden, int) and q_heads else None
        layout = Layout.BS_HD
    elif rank == 4:
        q_heads, kv_heads = static_dim(q, 1), static_dim(k, 1)
        head_dim = static_dim(q, -1)
        layout = Layout.BHSD
    else:
        return _refuse(node, graph_name, "Attention inputs of unknown rank")
    if not isinstance(head_dim, int):
        return _refuse(node, graph_name, "Attention head size is not static: scale unknown")
    variant: tuple[str, ...] = (Variant.ONNX_ATTENTION, rank_tag(rank))
    ungrouped = ungroup_kv(ONNX, k, v)
    if rank == 4 and ungrouped is not None:  # K, V repeated before the op: take the sources
        k, v = ungrouped
        kv_heads = static_dim(k, 1)
        variant = (*variant, Variant.KV_REPEAT)
    causal = bool(int_attr(node, "is_causal", 0))
    mask = _input(node, 3)
    bias = None
    kind = MaskKind.CAUSAL if causal else MaskKind.NONE
    if mask is not None:
        bias = Bias(
            mask.name, boolean_keep=mask.dtype == ir.DataType.BOOL, one_row=one_query_row(mask)
        )
        kind = MaskKind.CAUSAL_BIAS if causal else MaskKind.BIAS
    return AttentionMatch(
        anchor=node.name or "",
        graph_name=graph_name,
        variant=variant,
        q=Operand(q.name, layout, q_heads if isinstance(q_heads, int) else None),
        k=Operand(k.name, layout, kv_heads if isinstance(kv_heads, int) else None),
        v=Operand(v.name, layout, kv_heads if isinstance(kv_heads, int) else None),
        output=node.outputs[0].name,
        nodes=(node.name,),
        scale=float_attr(node, "scale", 1.0 / math.sqrt(head_dim)) or 1.0 / math.sqrt(head_dim),
        scale_source="attribute" if "scale" in node.attributes else "default",
        mask=kind,
        bias=bias,
        q_heads=q_heads if isinstance(q_heads, int) else None,
        kv_heads=kv_heads if isinstance(kv_heads, int) else None,
        head_dim=head_dim,
        q_len=static_dim(q, -2),
        kv_len=static_dim(k, -2),
        output_layout=layout,
        rank=4,
        kv_repeat=not (isinstance(q_heads, int) and q_heads == kv_heads),
        float32_softmax=int_attr(node, "softmax_precision", 0) == ir.DataType.FLOAT,
        dtype=element_type(q, v),
    )
