"""com.microsoft attention ops written out as the standard ops they stand for.

Graphs from onnxruntime's optimizers hold fused attention ops with packed weights, input
biases, key padding masks and KV caches. Each is replaced on load by its documented
computation, so that the finder matches it like any exported attention, classifies its
mask by evaluating it, and the report compares the op's own output:

    Attention(x, W, b, mask_index, past, attention_bias)  -> x @ W + b, split in q | k | v
    MultiHeadAttention(q, k, v, bias, key_padding_mask, attention_bias, past_k, past_v)
    GroupQueryAttention(q, k, v, past_k, past_v, seqlens_k, total_sequence_length)

    q, k, v [B, S, H*d] -> heads [B, H, S, d] -> Concat(past, k), Concat(past, v) (present)
    -> MatMul(q, k^T) * scale [-> c * tanh(. / c), softcap] + key mask + causal mask + bias
    -> Softmax -> MatMul(., v) -> [B, S, H*dv]

Masks are added as onnxruntime's CPU kernels add them: `mask_filter_value` (-10000) where
a key is hidden, once per reason (padding, causality); GroupQueryAttention hides keys
outright. An op with a feature this does not write out (rotary, buffer sharing, packed
5-D inputs, smooth softmax, ...) is left as it is, with the reason in its metadata (NOT_EXPANDED)
for the finder to report. The Softmax written for an op carries FUSED_FROM, and its output
merge is the op's own output, which the finder takes as the block's output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper, numpy_helper

from attnrewrite.inputs import generate_inputs
from attnrewrite.match import FUSED_FROM, NOT_EXPANDED

MS_DOMAIN = "com.microsoft"
PROBE_LENGTH = 7  # sequence length of the run that finds ranks shape inference left unknown


@dataclass
class Writer:
    """Nodes written for one op, named after it, in the op's float type."""

    prefix: str
    dtype: np.dtype
    nodes: list[onnx.NodeProto] = field(default_factory=list)

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: object) -> str:
        return self.ops(op_type, *inputs, outs=[out] if out else None, **attrs)[0]

    def ops(
        self, op_type: str, *inputs: str, outs: list[str] | None = None, n: int = 1, **attrs: object
    ) -> list[str]:
        name = f"{self.prefix}/{op_type}_{len(self.nodes)}"
        outs = outs or [f"{name}_out{i}" for i in range(n)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs

    def const(self, value: object, dtype: np.dtype | type = np.int64) -> str:
        return self.op("Constant", value=numpy_helper.from_array(np.asarray(value, dtype)))

    def float(self, value: float) -> str:
        return self.const(value, self.dtype)

    def dims(self, x: str, start: int, end: int) -> str:
        """Dimensions [start, end) of x, int64 [end - start] (Shape's start/end need 15)."""
        return self.op("Slice", self.op("Shape", x), self.const([start]), self.const([end]))


@dataclass(frozen=True)
class Spec:
    """One op's attention, its inputs sorted out (names; "" where absent)."""

    query: str  # [B, S, H*d]
    key: str  # [B, L, Hkv*d], or [B, Hkv, L, d] with `heads_first`
    value: str
    heads: int
    kv_heads: int
    scale: float  # 0: 1 / sqrt(head size)
    head_dim: int | None = None  # where static (else the scale is computed from q)
    widths: tuple[int, ...] = ()  # Attention's q | k | v widths where static
    causal: bool = False
    filter_value: float = -10000.0
    heads_first: bool = False
    past_key: str = ""  # [B, Hkv, P, d]
    past_value: str = ""
    key_mask: str = ""  # mask_index / key_padding_mask: [B] lengths, [2B], [B, T], [B, S, T]
    key_mask_rank: int = 0
    attention_bias: str = ""  # [B|1, H|1, S, T]
    seqlens: str = ""  # GroupQueryAttention's cache: valid keys per sequence - 1
    total: str = ""  # its total_sequence_length: S for a first prompt
    window: int = -1  # its local_window_size
    softcap: float = 0.0  # its softcap: scores capped to c * tanh(s / c) after the scale
    rotary: tuple[str, str] = ("", "")  # its cos_cache, sin_cache [max length, rotary dim / 2]
    interleaved: bool = False  # rotate (x0, x1) pairs, not the two halves
    present: tuple[str, str] = ("", "")  # output names of the keys and values (with past)


def expand_contrib_attention(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with every com.microsoft attention op it can write out written out (a copy
    when any is); ops it cannot are marked with the reason."""
    if not any(n.domain == MS_DOMAIN and n.op_type in RULES for n in proto.graph.node):
        return proto
    expanded = onnx.ModelProto()
    expanded.CopyFrom(proto)
    shapes, dtypes = _shapes(expanded), _dtypes(expanded)
    shapes.update(_evaluated_shapes(expanded, shapes, dtypes))
    nodes: list[onnx.NodeProto] = []
    for node in expanded.graph.node:
        rule = RULES.get(node.op_type) if node.domain == MS_DOMAIN else None
        written = rule(node, shapes) if rule is not None else None
        dtype = _float_type(node, dtypes)
        if isinstance(written, Spec) and dtype is not None:
            nodes.extend(_write(node, written, dtype))
            continue
        if rule is not None:
            _mark(node, written if isinstance(written, str) else f"{node.op_type} of unknown type")
        nodes.append(node)
    del expanded.graph.node[:]
    expanded.graph.node.extend(nodes)
    return expanded


def _mark(node: onnx.NodeProto, reason: str) -> None:
    entry = node.metadata_props.add()
    entry.key, entry.value = NOT_EXPANDED, reason


Shapes = dict[str, list[int | None]]


def _shapes(proto: onnx.ModelProto) -> Shapes:
    graph = proto.graph
    shapes: Shapes = {t.name: list(t.dims) for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.tensor_type.HasField("shape"):
            dims = info.type.tensor_type.shape.dim
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for node in graph.node:  # contrib producers shape inference does not know
        embed = node.domain == MS_DOMAIN and node.op_type == "EmbedLayerNormalization"
        if embed and len(node.output) > 1 and node.output[1]:
            shapes.setdefault(node.output[1], [None])  # mask_index [B]: key lengths
    return shapes


def _evaluated_shapes(proto: onnx.ModelProto, shapes: Shapes, dtypes: dict[str, int]) -> Shapes:
    """Shapes (and element types, into `dtypes`) of the attention ops' inputs that shape
    inference left unknown (downstream of other contrib ops), from one run at a small size;
    none when the model does not run there."""
    unknown = list(
        dict.fromkeys(
            name
            for node in proto.graph.node
            if node.domain == MS_DOMAIN and node.op_type in RULES
            for name in node.input[:5]
            if name and (name not in shapes or not dtypes.get(name))
        )
    )
    if not unknown:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in unknown)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options)
        feeds = generate_inputs(ir.from_proto(proto), PROBE_LENGTH)
        values = session.run(unknown, {i.name: feeds[i.name] for i in session.get_inputs()})
    except Exception:  # onnxruntime raises many types: all mean "not known"
        return {}
    for name, value in zip(unknown, values, strict=True):
        dtypes[name] = helper.np_dtype_to_tensor_dtype(value.dtype)
    return {name: [None] * value.ndim for name, value in zip(unknown, values, strict=True)}


def _dtypes(proto: onnx.ModelProto) -> dict[str, int]:
    graph = proto.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    return types


def _float_type(node: onnx.NodeProto, dtypes: dict[str, int]) -> np.dtype | None:
    known = [dtypes[name] for name in node.input[:3] if dtypes.get(name)]
    return np.dtype(helper.tensor_dtype_to_np_dtype(known[0])) if known else None


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _output(node: onnx.NodeProto, index: int) -> str:
    return node.output[index] if len(node.output) > index else ""


def _attr(node: onnx.NodeProto, name: str, default: object = 0) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _rank(shapes: Shapes, name: str) -> int | None:
    return len(shapes[name]) if name in shapes else None


def _refused(node: onnx.NodeProto, unsupported: dict[str, str], inputs: dict[int, str]) -> str:
    """Why the op has a feature that is not written out, or ""."""
    for attr, what in unsupported.items():
        if _attr(node, attr):
            return f"{node.op_type} with {what} is not written out"
    for index, what in inputs.items():
        if _input(node, index):
            return f"{node.op_type} with {what} is not written out"
    return ""


def _mask_problem(node: onnx.NodeProto, index: int, shapes: Shapes) -> str:
    mask = _input(node, index)
    rank = _rank(shapes, mask) if mask else 1
    if rank not in (1, 2, 3):
        return f"{node.op_type} with a mask of rank {rank or 'unknown'} is not written out"
    return ""


# ------------------------------------------------------------------------ the ops: a Spec each


def _attention(node: onnx.NodeProto, shapes: Shapes) -> Spec | str:
    """Attention: packed projection x @ W + b, split q | k | v (qkv_hidden_sizes, else three
    equal parts); past and present [2, B, H, P|T, d]."""
    reason = _refused(
        node,
        {"do_rotary": "rotary embedding", "past_present_share_buffer": "a shared past buffer"},
        {6: "past_sequence_length"},
    ) or _mask_problem(node, 3, shapes)
    if reason:
        return reason
    heads = int(_attr(node, "num_heads"))
    packed = shapes.get(node.input[1], [None, None])[-1]
    sizes = list(_attr(node, "qkv_hidden_sizes", [])) or ([packed // 3] * 3 if packed else [])
    return Spec(
        query="",  # written by _write from the packed projection
        key="",
        value="",
        heads=heads,
        kv_heads=heads,
        scale=float(_attr(node, "scale", 0.0)),
        head_dim=sizes[0] // heads if sizes and heads else None,
        widths=tuple(sizes),
        causal=bool(_attr(node, "unidirectional")),
        filter_value=float(_attr(node, "mask_filter_value", -10000.0)),
        key_mask=_input(node, 3),
        key_mask_rank=_rank(shapes, _input(node, 3)) or 0,
        attention_bias=_input(node, 5),
    )


def _multihead(node: onnx.NodeProto, shapes: Shapes) -> Spec | str:
    """MultiHeadAttention: q, k, v [B, S|L, D] (k, v also [B, H, L, d]), input bias
    [Dq + Dk + Dv], key padding mask, attention bias, past/present [B, H, P|T, d]."""
    query, key, value = node.input[0], _input(node, 1), _input(node, 2)
    if not key or _rank(shapes, query) != 3 or _rank(shapes, key) not in (3, 4):
        return "MultiHeadAttention with packed q/k/v (or of unknown rank) is not written out"
    reason = _refused(
        node, {}, {8: "past_sequence_length", 9: "cache_indirection"}
    ) or _mask_problem(node, 4, shapes)
    if _output(node, 3):
        reason = "MultiHeadAttention with its qk output is not written out"
    heads_first = _rank(shapes, key) == 4
    if heads_first and (_input(node, 3) or _input(node, 6)):
        reason = "MultiHeadAttention with keys in [B, H, L, d] and a bias or past"
    if reason:
        return reason
    heads = int(_attr(node, "num_heads"))
    return Spec(
        query=query,
        key=key,
        value=value,
        heads=heads,
        kv_heads=heads,
        scale=float(_attr(node, "scale", 0.0)),
        head_dim=_head_dim(shapes, query, heads),
        causal=bool(_attr(node, "unidirectional")),
        filter_value=float(_attr(node, "mask_filter_value", -10000.0)),
        heads_first=heads_first,
        past_key=_input(node, 6),
        past_value=_input(node, 7),
        key_mask=_input(node, 4),
        key_mask_rank=_rank(shapes, _input(node, 4)) or 0,
        attention_bias=_input(node, 5),
        present=(_output(node, 1), _output(node, 2)),
    )


def _group_query(node: onnx.NodeProto, shapes: Shapes) -> Spec | str:
    """GroupQueryAttention: q [B, S, H*d], k, v [B, S, Hkv*d], past [B, Hkv, P, d], rotary
    embedding from cos/sin caches at the tokens' positions. After the step seqlens_k[b] + 1
    keys are valid; a first prompt (S equal to total_sequence_length) ignores the past. The
    keys are the past then the new ones (the present), stale past slots hidden: that
    present is onnxruntime's wherever every sequence's cache is full (seqlens_k = P + S - 1),
    as in a batch without padding."""
    reason = _refused(
        node,
        {
            "smooth_softmax": "smooth softmax",
            "qk_output": "its qk output",
            "kv_cache_bit_width": "a quantized cache",
            "sliding_window_cache": "a window-sized cache",
        },
        {
            9: "position_ids",
            11: "head_sink",
            12: "k_scale",
            13: "v_scale",
            14: "q_norm_weight",
            15: "k_norm_weight",
            16: "query_seqlens",
        },
    )
    if not _attr(node, "causal", 1):
        reason = "GroupQueryAttention without causal is not written out"
    if bool(_attr(node, "do_rotary")) != bool(_input(node, 7) and _input(node, 8)):
        reason = reason or "GroupQueryAttention with rotary caches but no do_rotary (or back)"
    if not _input(node, 1) or not _input(node, 3):
        reason = reason or "GroupQueryAttention with packed qkv or without past is not written out"
    if reason:
        return reason
    return Spec(
        query=node.input[0],
        key=node.input[1],
        value=node.input[2],
        heads=int(_attr(node, "num_heads")),
        kv_heads=int(_attr(node, "kv_num_heads")),
        scale=float(_attr(node, "scale", 0.0)),
        head_dim=_head_dim(shapes, node.input[0], int(_attr(node, "num_heads"))),
        past_key=node.input[3],
        past_value=node.input[4],
        attention_bias=_input(node, 10),
        seqlens=node.input[5],
        total=node.input[6],
        window=int(_attr(node, "local_window_size", -1)),
        softcap=float(_attr(node, "softcap", 0.0)),
        rotary=(_input(node, 7), _input(node, 8)) if _attr(node, "do_rotary") else ("", ""),
        interleaved=bool(_attr(node, "rotary_interleaved")),
        present=(_output(node, 1), _output(node, 2)),
    )


RULES: dict[str, Callable[[onnx.NodeProto, Shapes], Spec | str]] = {
    "Attention": _attention,
    "MultiHeadAttention": _multihead,
    "GroupQueryAttention": _group_query,
}


# ------------------------------------------------------------------------ writing a Spec out


def _write(node: onnx.NodeProto, spec: Spec, dtype: np.dtype) -> list[onnx.NodeProto]:
    w = Writer(node.name or node.output[0], dtype)
    if node.op_type == "Attention":
        spec = _packed_projection(w, node, spec)
    elif node.op_type == "MultiHeadAttention" and _input(node, 3):
        spec = _input_bias(w, node.input[3], spec)
    query = _heads(w, spec.query, spec.heads)
    if spec.heads_first:
        key, value = spec.key, spec.value
    else:
        key, value = _heads(w, spec.key, spec.kv_heads), _heads(w, spec.value, spec.kv_heads)
    cached = _cached(w, spec, query) if spec.seqlens else ""
    if spec.rotary[0]:  # the new tokens sit at positions cached + s
        steps = w.op(
            "Range", w.const(0), w.op("Squeeze", w.dims(query, 2, 3), w.const([0])), w.const(1)
        )
        positions = w.op("Add", w.op("Reshape", cached, w.const([-1, 1])), steps)  # [B, S]
        query, key = (_rotate(w, spec, x, positions) for x in (query, key))
    present_key, present_value = spec.present
    if spec.past_key:
        key = w.op("Concat", spec.past_key, key, axis=2, out=present_key or None)
        value = w.op("Concat", spec.past_value, value, axis=2, out=present_value or None)
    else:
        for name, out in ((key, present_key), (value, present_value)):
            if out:
                w.op("Identity", name, out=out)
    if node.op_type == "Attention" and _output(node, 1):  # present [2, B, H, T, d]
        stacked = [w.op("Unsqueeze", x, w.const([0])) for x in (key, value)]
        w.op("Concat", *stacked, axis=0, out=node.output[1])
    if spec.kv_heads != spec.heads:
        key, value = (_repeat_kv(w, x, spec.heads // spec.kv_heads) for x in (key, value))
    scale = _scale(w, spec, query)
    scores = w.op("Mul", w.op("MatMul", query, w.op("Transpose", key, perm=[0, 1, 3, 2])), scale)
    if spec.softcap > 0:  # before the masks, as the kernel caps the scaled scores
        cap = w.float(spec.softcap)
        scores = w.op("Mul", w.op("Tanh", w.op("Div", scores, cap)), cap)
    for mask in (_key_mask(w, spec, key), _causal(w, spec, query, key)):
        if mask:  # one Add each: the finder tells the data part (padding) from the causal
            scores = w.op("Add", scores, mask)
    if spec.attention_bias:
        scores = w.op("Add", scores, spec.attention_bias)
    if spec.seqlens:  # hidden outright, as onnxruntime's kernel leaves them out
        lowest = w.float(np.finfo(w.dtype).min)
        for hidden in _cache_hidden(w, spec, query, cached):
            scores = w.op("Where", hidden, lowest, scores)
    probs = w.op("Softmax", scores, axis=-1)
    entry = w.nodes[-1].metadata_props.add()
    entry.key, entry.value = FUSED_FROM, f"{MS_DOMAIN}:{node.op_type}"
    context = w.op("Transpose", w.op("MatMul", probs, value), perm=[0, 2, 1, 3])
    w.op("Reshape", context, w.const([0, 0, -1]), out=node.output[0])
    return w.nodes


def _packed_projection(w: Writer, node: onnx.NodeProto, spec: Spec) -> Spec:
    """x @ W (+ b) split into q | k | v by qkv_hidden_sizes, else in three equal parts."""
    qkv = w.op("MatMul", node.input[0], node.input[1])
    if _input(node, 2):
        qkv = w.op("Add", qkv, node.input[2])
    if spec.widths:
        split = w.const(list(spec.widths))
    else:
        third = w.op("Div", w.dims(node.input[1], 1, 2), w.const([3]))
        split = w.op("Concat", third, third, third, axis=0)
    query, key, value = w.ops("Split", qkv, split, n=3, axis=-1)
    past = _input(node, 4)
    past_key = past_value = ""
    if past:
        past_key, past_value = (
            w.op("Squeeze", x, w.const([0]))
            for x in w.ops("Split", past, w.const([1, 1]), n=2, axis=0)
        )
    return replace(
        spec, query=query, key=key, value=value, past_key=past_key, past_value=past_value
    )


def _input_bias(w: Writer, bias: str, spec: Spec) -> Spec:
    """q + b[:Dq], k + b[Dq:Dq+Dk], v + b[Dq+Dk:] (MultiHeadAttention's input bias)."""
    widths = w.op("Concat", *(w.dims(x, 2, 3) for x in (spec.query, spec.key, spec.value)), axis=0)
    parts = w.ops("Split", bias, widths, n=3, axis=0)
    query, key, value = (
        w.op("Add", x, b) for x, b in zip((spec.query, spec.key, spec.value), parts, strict=True)
    )
    return replace(spec, query=query, key=key, value=value)


def _heads(w: Writer, x: str, heads: int) -> str:
    """[B, S, H*d] -> [B, H, S, d]."""
    return w.op("Transpose", w.op("Reshape", x, w.const([0, 0, heads, -1])), perm=[0, 2, 1, 3])


def _repeat_kv(w: Writer, x: str, groups: int) -> str:
    """[B, Hkv, T, d] -> [B, Hkv * groups, T, d], each kv head serving `groups` query heads
    (Unsqueeze -> Expand -> Reshape: the form the finder reads back as grouped-query)."""
    lead, tail = w.dims(x, 0, 2), w.dims(x, 2, 4)
    expanded = w.op(
        "Expand",
        w.op("Unsqueeze", x, w.const([2])),
        w.op("Concat", lead, w.const([groups]), tail, axis=0),
    )
    merged = w.op("Concat", w.dims(x, 0, 1), w.const([-1]), tail, axis=0)
    return w.op("Reshape", expanded, merged)


def _scale(w: Writer, spec: Spec, query: str) -> str:
    """The scale attribute, else 1 / sqrt(head size) (computed from q where not static)."""
    if spec.scale or spec.head_dim:
        return w.float(spec.scale or 1.0 / np.sqrt(np.float32(spec.head_dim)))
    size = w.op("Cast", w.dims(query, 3, 4), to=helper.np_dtype_to_tensor_dtype(w.dtype))
    return w.op("Reciprocal", w.op("Sqrt", w.op("Squeeze", size, w.const([0]))))


def _head_dim(shapes: Shapes, name: str, heads: int) -> int | None:
    """The static head size of a [B, S, H*d] input."""
    width = shapes.get(name, [None])[-1] if shapes.get(name) else None
    return width // heads if width and heads else None


def _key_mask(w: Writer, spec: Spec, key: str) -> str:
    """The additive key mask [B, 1, S|1, T]: filter_value where hidden, as onnxruntime's CPU
    kernels build it (mask_index / key_padding_mask: [B] end positions, [2B] ends then
    starts, [B, T] or [B, S, T] with 0 = hidden)."""
    mask = spec.key_mask
    if not mask:
        return ""
    hidden_value, zero = w.float(spec.filter_value), w.float(0.0)
    if spec.key_mask_rank > 1:
        keep = w.op("Greater", mask, w.op("Cast", w.const(0), to=onnx.TensorProto.INT32))
        bias = w.op("Where", keep, zero, hidden_value)
        axes = [1, 2] if spec.key_mask_rank == 2 else [1]
        return w.op("Unsqueeze", bias, w.const(axes))
    batch = w.dims(key, 0, 1)
    lengths = w.op("Cast", mask, to=onnx.TensorProto.INT64)
    padded = w.op(
        "Concat",
        lengths,
        w.op("ConstantOfShape", batch, value=numpy_helper.from_array(np.zeros(1, np.int64))),
        axis=0,
    )
    ends = w.op("Slice", padded, w.const([0]), batch)
    starts = w.op("Slice", padded, batch, w.op("Mul", batch, w.const([2])))
    cols = w.op("Range", w.const(0), w.op("Squeeze", w.dims(key, 2, 3), w.const([0])), w.const(1))
    column = [-1, 1]
    hidden = w.op(
        "Or",
        w.op("GreaterOrEqual", cols, w.op("Reshape", ends, w.const(column))),
        w.op("Less", cols, w.op("Reshape", starts, w.const(column))),
    )
    bias = w.op("Where", hidden, hidden_value, zero)
    return w.op("Unsqueeze", bias, w.const([1, 2]))


def _causal(w: Writer, spec: Spec, query: str, key: str) -> str:
    """filter_value [S, T] above the bottom-right-aligned diagonal (past keys are visible)."""
    if not spec.causal:
        return ""
    q_len = w.op("Squeeze", w.dims(query, 2, 3), w.const([0]))
    kv_len = w.op("Squeeze", w.dims(key, 2, 3), w.const([0]))
    rows = w.op("Range", w.op("Sub", kv_len, q_len), kv_len, w.const(1))
    cols = w.op("Range", w.const(0), kv_len, w.const(1))
    future = w.op("Greater", cols, w.op("Unsqueeze", rows, w.const([1])))
    return w.op("Where", future, w.float(spec.filter_value), w.float(0.0))


def _cached(w: Writer, spec: Spec, query: str) -> str:
    """GroupQueryAttention's keys per sequence before this step, int64 [B]: seqlens_k + 1 - S,
    or 0 for a first prompt (S equal to total_sequence_length)."""
    int64 = onnx.TensorProto.INT64
    q_len = w.op("Squeeze", w.dims(query, 2, 3), w.const([0]))
    prompt = w.op("Equal", w.op("Reshape", w.op("Cast", spec.total, to=int64), w.const([])), q_len)
    cached = w.op("Sub", w.op("Add", w.op("Cast", spec.seqlens, to=int64), w.const(1)), q_len)
    return w.op("Where", prompt, w.const(0), cached)


def _rotate(w: Writer, spec: Spec, x: str, positions: str) -> str:
    """Rotary embedding of x [B, h, S, d] at `positions` [B, S]: its first 2r channels (r,
    the caches' width) turned by cos/sin; halves (x1, x2) -> (x1 c - x2 s, x2 c + x1 s), or,
    interleaved, each pair (x0, x1) the same way."""
    cos, sin = (
        w.op("Unsqueeze", w.op("Gather", table, positions, axis=0), w.const([1]))
        for table in spec.rotary
    )  # [B, 1, S, r]
    half = w.dims(spec.rotary[0], 1, 2)
    width = w.op("Mul", half, w.const([2]))
    turned = w.op("Slice", x, w.const([0]), width, w.const([3]))
    rest = w.op("Slice", x, width, w.const([2**62]), w.const([3]))
    if spec.interleaved:  # [..., r, 2]: pairs
        pairs = w.op("Reshape", turned, w.op("Concat", w.dims(x, 0, 3), half, w.const([2]), axis=0))
        first, second = (
            w.op("Squeeze", part, w.const([4]))
            for part in w.ops("Split", pairs, w.const([1, 1]), n=2, axis=4)
        )
    else:
        first, second = w.ops("Split", turned, w.op("Concat", half, half, axis=0), n=2, axis=3)
    new_first = w.op("Sub", w.op("Mul", first, cos), w.op("Mul", second, sin))
    new_second = w.op("Add", w.op("Mul", second, cos), w.op("Mul", first, sin))
    if spec.interleaved:
        stacked = w.op(
            "Concat", *(w.op("Unsqueeze", p, w.const([4])) for p in (new_first, new_second)), axis=4
        )
        turned = w.op("Reshape", stacked, w.op("Concat", w.dims(x, 0, 3), width, axis=0))
    else:
        turned = w.op("Concat", new_first, new_second, axis=3)
    return w.op("Concat", turned, rest, axis=3)


def _cache_hidden(w: Writer, spec: Spec, query: str, cached: str) -> list[str]:
    """GroupQueryAttention's hidden keys among [past P | new S], as masks the finder can
    classify: the future, new token t for queries s < t [S, P + S]; stale past slots, j at
    or past the sequence's cached length c, [B, 1, 1, P + S]; with local_window_size W,
    all but the W latest keys (the query's own included), [B, 1, S, P + S] (positions: the
    query c + s, past slot j, new token c + t)."""
    q_len = w.op("Squeeze", w.dims(query, 2, 3), w.const([0]))
    past_len = w.op("Squeeze", w.dims(spec.past_key, 2, 3), w.const([0]))
    kv_len = w.op("Add", past_len, q_len)
    cols = w.op("Range", w.const(0), kv_len, w.const(1))  # [T]
    steps = w.op("Unsqueeze", w.op("Range", w.const(0), q_len, w.const(1)), w.const([1]))
    new = w.op("Sub", cols, past_len)  # t for new tokens, negative for past slots
    hidden = [w.op("Greater", new, steps)]
    cached = w.op("Reshape", cached, w.const([-1, 1, 1, 1]))
    in_past = w.op("Less", cols, past_len)
    hidden.append(w.op("And", in_past, w.op("GreaterOrEqual", cols, cached)))
    if spec.window > 0:
        position = w.op("Where", in_past, cols, w.op("Add", cached, new))
        earliest = w.op("Sub", w.op("Add", cached, steps), w.const(spec.window - 1))
        hidden.append(w.op("Less", position, earliest))
    return hidden
