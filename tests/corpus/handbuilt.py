"""Hand-built ONNX attention graphs: the test corpus for the attention finder.

Every case is a small model written node by node with ``onnx.helper`` that
reproduces one way exporters (TorchScript, dynamo, HF legacy code, ORT
fusions, the ONNX ``Attention`` op) spell softmax attention, together with
what a correct finder should report for it.

Sizes are fixed and small: batch 2, 4 query heads (2 key/value heads for GQA),
head_dim 8, hidden 32.  Sequence lengths are symbolic: ``S`` (queries), ``T``
(keys of a separate source), ``P`` (past length of a KV cache).  ``feeds(n)``
resolves them as S=n, T=n+3, P=3 (a case may override P).

Run ``python -m tests.corpus.handbuilt`` to build every case, check it with
``onnx.checker.check_model(full_check=True)``, run it with onnxruntime at two
sequence lengths, probe its mask semantics (perturbing a position that must be
masked may not change the outputs that must not see it) and print a table.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# --------------------------------------------------------------------------- sizes

B = 2  # batch
H = 4  # query heads
KVH = 2  # key/value heads for GQA cases
D = 8  # head dim
E = H * D  # hidden size
BUFFER = 64  # length of the legacy causal buffers
PAST = 3  # past length fed for P
CROSS_EXTRA = 3  # T = S + CROSS_EXTRA
SEQ_DEFAULT, SEQ_OTHER = 6, 9
SCALE = 1.0 / math.sqrt(D)
FMIN = float(np.finfo(np.float32).min)
INT64_MAX = np.iinfo(np.int64).max

F32, F16, I32, I64, BOOL = (
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.BOOL,
)

MASK_KINDS = (
    "none",
    "causal",
    "sliding_window",
    "padding",
    "causal_padding",
    "bias",
    "causal_bias",
)


# --------------------------------------------------------------------------- the case record


@dataclass(frozen=True)
class Case:
    name: str
    model: onnx.ModelProto
    expected_blocks: int
    expected: dict
    feeds: Callable[[int], dict[str, np.ndarray]]
    dynamic_seq: bool = True
    note: str = ""
    lengths: tuple[int, ...] = ()  # where the rewrite is checked, beyond SEQ_DEFAULT/SEQ_OTHER


def expect(
    mask: str = "none",
    *,
    window: int | None = None,
    q_heads: int = H,
    kv_heads: int | None = None,
    head_dim: int = D,
    scale: float = SCALE,
    cross: bool = False,
    softcap: float | None = None,
) -> dict:
    """Description of one attention block."""
    assert mask in MASK_KINDS, mask
    return {
        "softcap": softcap,
        "mask": mask,
        "window": window,
        "q_heads": q_heads,
        "kv_heads": q_heads if kv_heads is None else kv_heads,
        "head_dim": head_dim,
        "scale": float(scale),
        "cross": cross,
    }


def refuse(reason_contains: str | None) -> dict:
    """Description of a negative case (no block; the refusal names this word)."""
    return {"reason_contains": reason_contains}


# --------------------------------------------------------------------------- graph builder


class Builder:
    """Accumulates nodes/inputs/outputs/initializers of one graph.

    A child builder (``parent=``) builds a subgraph (Loop/If body) or a
    function body: it shares the name counter and random generator of the
    root; its constants become root initializers (read from the outer scope)
    or, with ``inline_consts``, Constant nodes (function bodies cannot see
    initializers).
    """

    def __init__(
        self,
        name: str,
        *,
        seed: int = 0,
        parent: Builder | None = None,
        inline_consts: bool = False,
        dtype: type | None = None,
    ):
        self.name = name
        self.root: Builder = parent.root if parent else self
        self.rng = self.root.rng if parent else np.random.default_rng(seed)
        self._ids = self.root._ids if parent else itertools.count()
        self._const_cache: dict = {} if parent is None or inline_consts else self.root._const_cache
        self.inline_consts = inline_consts
        # float type of weights and float constants (a child inherits its parent's)
        self.dtype = dtype or (parent.dtype if parent else np.float32)
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.inits: list[onnx.TensorProto] = []

    # -- names and nodes
    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def op(
        self, op_type: str, *inputs: str | None, _n: int = 1, _out=None, _domain: str = "", **attrs
    ):
        """Append a node; returns its output name (or list of names when _n > 1)."""
        if _out is None:
            outs = [self.fresh(op_type.lower()) for _ in range(_n)]
        else:
            outs = [_out] if isinstance(_out, str) else list(_out)
        self.nodes.append(
            helper.make_node(
                op_type,
                [i or "" for i in inputs],
                outs,
                name=self.fresh(op_type),
                domain=_domain or None,
                **attrs,
            )
        )
        return outs[0] if len(outs) == 1 else outs

    # -- constants
    def const(self, value, dtype=None, hint: str = "c") -> str:
        arr = np.asarray(value, dtype=dtype or self.dtype)
        if self.inline_consts:
            return self.op("Constant", value=numpy_helper.from_array(arr), _out=self.fresh(hint))
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_cache:
            name = self.fresh(hint)
            self.root.inits.append(numpy_helper.from_array(arr, name))
            self._const_cache[key] = name
        return self._const_cache[key]

    def ints(self, *values: int) -> str:
        """1-D int64 constant."""
        return self.const(list(values), np.int64, "ints")

    def int_scalar(self, value: int) -> str:
        return self.const(value, np.int64, "i")

    def scalar(self, value: float) -> str:
        """0-D float constant of the builder's float type."""
        return self.const(value, None, "s")

    def weight(self, *shape: int, scale: float | None = None, hint: str = "w") -> str:
        """Random initializer (not cached: every call is a new weight)."""
        std = scale if scale is not None else 1.0 / math.sqrt(shape[0])
        arr = (self.rng.standard_normal(shape) * std).astype(self.dtype)
        if self.inline_consts:
            return self.op("Constant", value=numpy_helper.from_array(arr), _out=self.fresh(hint))
        name = self.fresh(hint)
        self.root.inits.append(numpy_helper.from_array(arr, name))
        return name

    # -- graph interface
    def input(self, name: str, elem_type: int, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, elem_type: int, shape, name: str | None = None) -> str:
        """Declare ``value`` as a graph output (renamed through Identity if ``name``)."""
        if name is not None and name != value:
            value = self.op("Identity", value, _out=name)
        self.outputs.append(helper.make_tensor_value_info(value, elem_type, shape))
        return value

    def graph(self) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)

    def model(
        self,
        opset: int = 18,
        *,
        ir_version: int = 10,
        domains: dict[str, int] | None = None,
        functions: Sequence[onnx.FunctionProto] = (),
    ) -> onnx.ModelProto:
        opsets = [helper.make_opsetid("", opset)]
        opsets += [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
        return helper.make_model(
            self.graph(),
            opset_imports=opsets,
            ir_version=ir_version,
            functions=list(functions),
            producer_name="attnrewrite-handbuilt",
        )


# --------------------------------------------------------------------------- shared pieces


def float_type(b: Builder) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(b.dtype))


def linear(
    b: Builder,
    x: str,
    din: int,
    dout: int,
    *,
    bias: bool = False,
    weight: str | None = None,
    weight_scale: float = 1.0,
) -> str:
    w = weight or b.weight(din, dout, scale=weight_scale / math.sqrt(din))
    y = b.op("MatMul", x, w)
    return b.op("Add", y, b.weight(dout, scale=0.1, hint="bias")) if bias else y


def unsqueeze(b: Builder, x: str, *axes: int) -> str:
    return b.op("Unsqueeze", x, b.ints(*axes))


def split_heads(b: Builder, x: str, heads: int = H, perm=(0, 2, 1, 3)) -> str:
    """[B, S, heads*D] -> Reshape [B, S, heads, D] -> Transpose (default [B, heads, S, D])."""
    return b.op("Transpose", b.op("Reshape", x, b.ints(0, 0, heads, D)), perm=list(perm))


def merge_heads(b: Builder, ctx: str, heads: int = H) -> str:
    """[B, heads, S, D] -> [B, S, heads*D]."""
    return b.op("Reshape", b.op("Transpose", ctx, perm=[0, 2, 1, 3]), b.ints(0, 0, heads * D))


def project_heads(b: Builder, x: str, heads: int = H, **kw) -> str:
    """Linear projection of [B, S, E] followed by split_heads."""
    return split_heads(b, linear(b, x, E, heads * D, **kw), heads)


def qkv_heads(b: Builder, x: str, *, kv_source: str | None = None, kv_heads: int = H, **kw):
    """Separate q/k/v projections, each split into heads; k/v from kv_source if given."""
    src = kv_source or x
    return (
        project_heads(b, x, H, **kw),
        project_heads(b, src, kv_heads, **kw),
        project_heads(b, src, kv_heads, **kw),
    )


def out_proj(
    b: Builder,
    ctx: str,
    *,
    name: str = "y",
    heads: int = H,
    declare: bool = True,
    weight: str | None = None,
) -> str:
    """Merge heads, output projection, declare as graph output [B, S, E]."""
    y = b.op("MatMul", merge_heads(b, ctx, heads), weight or b.weight(E, E), _out=name)
    if declare:
        b.output(y, float_type(b), [B, "S", E])
    return y


def seq_len(b: Builder, t: str, axis: int) -> str:
    """Runtime size of one axis as a 0-D int64, the way TorchScript writes it (Shape -> Gather)."""
    return b.op("Gather", b.op("Shape", t), b.int_scalar(axis), axis=0)


def transpose_k(b: Builder, k: str) -> str:
    return b.op("Transpose", k, perm=[0, 1, 3, 2])


@dataclass
class Attn:
    """Names of the interesting tensors of one attention block."""

    scores: str  # masked scores, the Softmax input
    probs: str  # Softmax output
    ctx: str  # probs @ V


Masker = Callable[[Builder, str], str]


def attend(
    b: Builder,
    q: str,
    k: str | None,
    v: str,
    *,
    kt: str | None = None,
    scale: str | None = "div",
    scale_value: float = SCALE,
    mask: Masker | None = None,
    softmax: Callable[[Builder, str], str] | None = None,
    post: Callable[[Builder, str], str] | None = None,
) -> Attn:
    """Standard attention core on [.., S, D] tensors.

    scale: "div" (scores / sqrt(d)), "mul" (scores * c), "mul_first" (c * scores) or None.
    mask: applied to the scaled scores; softmax defaults to Softmax(axis=-1);
    post: applied to the probabilities before the V MatMul (dropout, NaN guards).
    """
    kt = kt or transpose_k(b, k)
    s = b.op("MatMul", q, kt)
    if scale == "div":
        s = b.op("Div", s, b.scalar(1.0 / scale_value))
    elif scale == "mul":
        s = b.op("Mul", s, b.scalar(scale_value))
    elif scale == "mul_first":
        s = b.op("Mul", b.scalar(scale_value), s)
    else:
        assert scale is None, scale
    if mask is not None:
        s = mask(b, s)
    p = softmax(b, s) if softmax else b.op("Softmax", s, axis=-1)
    pv = post(b, p) if post else p
    return Attn(s, p, b.op("MatMul", pv, v))


# ---- maskers (functions scores -> masked scores)


def add_bias(bias_fn: Callable[[Builder, str], str], *, first: bool = False) -> Masker:
    """Add an additive mask computed from the scores tensor; first=True puts it as Add input 0."""

    def apply(b: Builder, s: str) -> str:
        m = bias_fn(b, s)
        return b.op("Add", m, s) if first else b.op("Add", s, m)

    return apply


def chain(*maskers: Masker) -> Masker:
    def apply(b: Builder, s: str) -> str:
        for m in maskers:
            s = m(b, s)
        return s

    return apply


def padding_bias(mask_input: str, fill: float = -10000.0) -> Callable[[Builder, str], str]:
    """BERT-style: (1 - float(mask[:, None, None, :])) * fill  ->  [B, 1, 1, S]."""

    def bias(b: Builder, _s: str) -> str:
        m = b.op("Cast", unsqueeze(b, mask_input, 1, 2), to=float_type(b))
        return b.op("Mul", b.op("Sub", b.scalar(1.0), m), b.scalar(fill))

    return bias


def positions(b: Builder, s: str):
    """Query and key positions of a scores tensor [.., Sq, Sk], bottom-right aligned.

    Returns (i [Sq, 1], j [1, Sk]) int64, where query i is at absolute position
    i + (Sk - Sq) (so a KV cache's past is to the left of the queries).
    """
    sq, sk = seq_len(b, s, -2), seq_len(b, s, -1)
    i = b.op("Range", b.op("Sub", sk, sq), sk, b.int_scalar(1))
    j = b.op("Range", b.int_scalar(0), sk, b.int_scalar(1))
    return unsqueeze(b, i, 1), unsqueeze(b, j, 0)


def causal_bias_range(b: Builder, s: str) -> str:
    """[Sq, Sk] additive causal mask from Range/Greater: key j hidden from query i if j > i."""
    i, j = positions(b, s)
    return b.op("Where", b.op("Greater", j, i), b.scalar(FMIN), b.scalar(0.0))


def sliding_bias(window: int) -> Callable[[Builder, str], str]:
    """Causal band: query i sees keys i-window+1 .. i."""

    def bias(b: Builder, s: str) -> str:
        i, j = positions(b, s)
        diff = b.op("Sub", i, j)
        hidden = b.op(
            "Or",
            b.op("Less", diff, b.int_scalar(0)),
            b.op("Not", b.op("Less", diff, b.int_scalar(window))),
        )
        return b.op("Where", hidden, b.scalar(FMIN), b.scalar(0.0))

    return bias


# ---- feeds


def pad_mask(shape, dtype) -> np.ndarray:
    """All ones except the last 2 positions of batch row 1."""
    m = np.ones(shape, dtype=dtype)
    m[1, -2:] = 0
    return m


def dims_for(n: int) -> dict[str, int]:
    return {"S": n, "T": n + CROSS_EXTRA, "P": PAST, "B": B, PAST_DIM: PAST, TOTAL: PAST + n}


def auto_feeds(
    model: onnx.ModelProto,
    seed: int = 0,
    *,
    sizes: dict[str, int] | None = None,
    **overrides: Callable[[int], np.ndarray],
) -> Callable[[int], dict[str, np.ndarray]]:
    """Inputs for every graph input of ``model`` at sequence length n.

    Symbolic dims are resolved by dims_for(n), updated with ``sizes``.

    Float inputs: seeded normal noise (names starting with ``w`` are weights,
    scaled by 1/sqrt(fan_in)); integer/bool rank-2 inputs: padding masks
    (see pad_mask); anything else needs an override ``name=lambda n: array``.
    """
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        specs.append((vi.name, tt.elem_type, [d.dim_param or d.dim_value for d in tt.shape.dim]))

    def feeds(n: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(1000 * seed + n)
        dims = dims_for(n) | (sizes or {})
        out = {}
        for name, et, shape in specs:
            if name in overrides:
                out[name] = overrides[name](n)
                continue
            shp = [dims[d] if isinstance(d, str) else d for d in shape]
            dt = helper.tensor_dtype_to_np_dtype(et)
            if et in (F32, F16):
                std = 1.0 / math.sqrt(shp[0]) if name.startswith("w") else 1.0
                out[name] = (rng.standard_normal(shp) * std).astype(dt)
            elif len(shp) == 2:
                out[name] = pad_mask(shp, dt)
            else:
                raise ValueError(f"no feed rule for input {name}")
        return out

    return feeds


# --------------------------------------------------------------------------- case registry

_BUILDERS: list[Callable[[], list[Case]]] = []


def register(fn: Callable[[], Case | list[Case]]):
    def wrapped() -> list[Case]:
        r = fn()
        return r if isinstance(r, list) else [r]

    _BUILDERS.append(wrapped)
    return fn


def hidden_input(b: Builder, name: str = "x", seq: str = "S", batch: int = B) -> str:
    return b.input(name, float_type(b), [batch, seq, E])


def simple_case(
    name: str,
    exp: dict,
    *,
    note: str,
    seed: int,
    opset: int = 18,
    body: Callable[[Builder, str], Attn],
    **feed_overrides,
) -> Case:
    """Self-attention layer over input x [B, S, E] whose core is written by ``body``."""
    b = Builder(name, seed=seed)
    x = hidden_input(b)
    out_proj(b, body(b, x).ctx)
    m = b.model(opset)
    return Case(name, m, 1, exp, auto_feeds(m, seed, **feed_overrides), True, note)


# --------------------------------------------------------------------------- 1-2 legacy GPT-2


def gpt2_layer(b: Builder, x: str, mask: Masker) -> Attn:
    """Packed c_attn (MatMul + bias + Split), scores / sqrt(d), causal buffer mask."""
    qkv = linear(b, x, E, 3 * E, bias=True)
    q, k, v = (split_heads(b, t) for t in b.op("Split", qkv, b.ints(E, E, E), axis=2, _n=3))
    return attend(b, q, k, v, scale="div", mask=mask)


def sliced_causal_buffer(b: Builder, s: str, buffer: np.ndarray) -> str:
    """bias[:, :, ns-nd:ns, :ns] with nd/ns the query/key lengths read at run time."""
    buf = b.const(buffer, buffer.dtype, "causal_buffer")
    nd, ns = seq_len(b, s, 2), seq_len(b, s, 3)
    start, end = unsqueeze(b, b.op("Sub", ns, nd), 0), unsqueeze(b, ns, 0)
    rows = b.op("Slice", buf, start, end, b.ints(2))
    return b.op("Slice", rows, b.ints(0), end, b.ints(3))


TRIL = np.tril(np.ones((BUFFER, BUFFER), dtype=bool))[None, None]


@register
def legacy_gpt2_where() -> Case:
    def mask(b: Builder, s: str) -> str:
        return b.op("Where", sliced_causal_buffer(b, s, TRIL), s, b.scalar(FMIN))

    return simple_case(
        "legacy_gpt2_where",
        expect("causal"),
        seed=1,
        body=lambda b, x: gpt2_layer(b, x, mask),
        note="HF GPT-2 (TorchScript): bool [1,1,64,64] buffer sliced by runtime "
        "lengths, Where(mask, scores, finfo.min)",
    )


@register
def legacy_gpt2_submul() -> Case:
    def mask(b: Builder, s: str) -> str:
        bm = sliced_causal_buffer(b, s, TRIL.astype(np.float32))
        kept = b.op("Mul", s, bm)
        return b.op("Sub", kept, b.op("Mul", b.scalar(1e4), b.op("Sub", b.scalar(1.0), bm)))

    return simple_case(
        "legacy_gpt2_submul",
        expect("causal"),
        seed=2,
        body=lambda b, x: gpt2_layer(b, x, mask),
        note="old GPT-2: w*b - 1e4*(1-b) with a float 0/1 causal buffer slice",
    )


# --------------------------------------------------------------------------- 3-4 exporter spellings


@register
def sdpa_torchscript_sqrt_scale() -> Case:
    def body(b: Builder, x: str) -> Attn:
        q, k, v = qkv_heads(b, x)
        last = b.op("Slice", b.op("Shape", q), b.ints(-1), b.ints(INT64_MAX))
        scale = b.op("Div", b.scalar(1.0), b.op("Sqrt", b.op("Cast", last, to=F32)))
        sq = b.op("Sqrt", b.op("Cast", scale, to=F32))
        kt = b.op("Mul", transpose_k(b, k), sq)
        return attend(b, b.op("Mul", q, sq), None, v, kt=kt, scale=None)

    return simple_case(
        "sdpa_torchscript_sqrt_scale",
        expect(),
        seed=3,
        body=body,
        note="TorchScript F.sdpa: scale = 1/Sqrt(Cast(Shape(q)[-1:])), Sqrt(scale) "
        "multiplied on q and on K^T",
    )


@register
def dynamo_3d_transpose() -> Case:
    def body(b: Builder, x: str) -> Attn:
        q, k, v = qkv_heads(b, x)
        k3 = b.op("Reshape", k, b.ints(B * H, -1, D))
        kt = b.op("Reshape", b.op("Transpose", k3, perm=[0, 2, 1]), b.ints(B, H, D, -1))

        def mask(b: Builder, s: str) -> str:
            keep = unsqueeze(b, "attention_mask", 1, 2)
            return b.op("Add", s, b.op("Where", keep, b.scalar(0.0), b.scalar(-np.inf)))

        def post(b: Builder, p: str) -> str:
            p = b.op("Where", b.op("IsNaN", p), b.scalar(0.0), p)
            return b.op("Dropout", p, b.scalar(0.1))

        return attend(b, q, None, v, kt=kt, scale="mul", mask=mask, post=post)

    b = Builder("dynamo_3d_transpose", seed=4)
    x = hidden_input(b)
    b.input("attention_mask", BOOL, [B, "S"])
    out_proj(b, body(b, x).ctx)
    m = b.model()
    return Case(
        "dynamo_3d_transpose",
        m,
        1,
        expect("padding"),
        auto_feeds(m, 4),
        True,
        "dynamo: K^T via Reshape 3-D/Transpose/Reshape, bool mask -> Where(m, 0, -inf) "
        "-> Add, Where(IsNaN(p), 0, p) and inference Dropout before @V",
    )


# --------------------------------------------------------------------------- 5 ONNX Attention op


@register
def onnx_attention_op() -> list[Case]:
    b = Builder("onnx_attention_op_4d", seed=5)
    x = hidden_input(b)
    q, k, v = qkv_heads(b, x)
    out_proj(b, b.op("Attention", q, k, v, is_causal=1))
    m4 = b.model(23, ir_version=11)

    def masked_3d(name: str, is_causal: int) -> onnx.ModelProto:
        b = Builder(name, seed=6)
        x = hidden_input(b)
        am = b.input("attention_mask", I64, [B, "S"])
        q = linear(b, x, E, E)
        k, v = linear(b, x, E, KVH * D), linear(b, x, E, KVH * D)
        # ORT needs attn_mask[-2] == q length (no broadcast on the query axis): [B,1,S,S]
        n = b.op("Shape", x, start=1, end=2)
        bias = b.op("Expand", padding_bias(am)(b, q), b.op("Concat", b.ints(B, 1), n, n, axis=0))
        heads = {"q_num_heads": H, "kv_num_heads": KVH}
        y = b.op("Attention", q, k, v, bias, **heads, **({"is_causal": 1} if is_causal else {}))
        b.output(b.op("MatMul", y, b.weight(E, E), _out="y"), F32, [B, "S", E])
        return b.model(23, ir_version=11)

    m3 = masked_3d("onnx_attention_op_3d", is_causal=0)
    m_causal = masked_3d("onnx_attention_op_causal_mask", is_causal=1)
    note = "opset-23 Attention; ir_version 11 (opset 23 needs IR >= 11)"
    return [
        Case(
            "onnx_attention_op_4d",
            m4,
            1,
            expect("causal"),
            auto_feeds(m4, 5),
            True,
            note + ": 4-D [B,H,S,d] inputs, is_causal=1",
        ),
        Case(
            "onnx_attention_op_3d",
            m3,
            1,
            expect("padding", kv_heads=KVH),
            auto_feeds(m3, 6),
            True,
            note + ": 3-D inputs, q_num_heads=4 kv_num_heads=2, float attn_mask "
            "(1-mask)*-1e4 expanded to [B,1,S,S]",
        ),
        Case(
            "onnx_attention_op_causal_mask",
            m_causal,
            1,
            expect("causal_padding", kv_heads=KVH),
            auto_feeds(m_causal, 6),
            True,
            note + ": is_causal=1 and a padding attn_mask: the mask alone does not hide "
            "future keys, the flag does",
        ),
    ]


# --------------------------------------------------------------------------- 6 com.microsoft ops

MS = "com.microsoft"


@register
def ms_contrib_ops() -> list[Case]:
    cases = []

    b = Builder("ms_multiheadattention", seed=7)
    x = hidden_input(b)
    kpm = b.input("key_padding_mask", I32, [B, "S"])
    q, k, v = (linear(b, x, E, E) for _ in range(3))
    y = b.op("MultiHeadAttention", q, k, v, None, kpm, _domain=MS, num_heads=H)
    b.output(b.op("MatMul", y, b.weight(E, E), _out="y"), F32, [B, "S", E])
    m = b.model(domains={MS: 1})
    cases.append(
        Case(
            "ms_multiheadattention",
            m,
            1,
            expect("padding"),
            auto_feeds(m, 7),
            True,
            "com.microsoft MultiHeadAttention: 3-D q/k/v [B,S,E], num_heads=4, "
            "key_padding_mask int32 [B,S]",
        )
    )

    b = Builder("ms_attention", seed=8)
    x = hidden_input(b)
    y = b.op(
        "Attention",
        x,
        b.weight(E, 3 * E),
        b.weight(3 * E, scale=0.1),
        _domain=MS,
        num_heads=H,
        unidirectional=1,
    )
    b.output(b.op("MatMul", y, b.weight(E, E), _out="y"), F32, [B, "S", E])
    m = b.model(domains={MS: 1})
    cases.append(
        Case(
            "ms_attention",
            m,
            1,
            expect("causal"),
            auto_feeds(m, 8),
            True,
            "com.microsoft Attention: packed input/weights [E,3E]/bias [3E], "
            "num_heads=4, unidirectional=1",
        )
    )

    cases.append(
        ms_gqa(
            "ms_groupqueryattention",
            batch=B,
            past=0,
            seed=9,
            note="prompt: batch 2 with an EMPTY past (P=0 fed; ORT CPU refuses "
            "batch > 1 with S > 1 and a non-empty past)",
        )
    )
    cases.append(
        ms_gqa(
            "ms_groupqueryattention_past",
            batch=1,
            past=PAST,
            seed=10,
            note="batch 1 with a real past of P=3 (bottom-right causal)",
        )
    )
    cases.append(
        ms_gqa(
            "ms_groupqueryattention_window",
            batch=1,
            past=PAST,
            seed=47,
            window=2,
            note="local_window_size 2: each query sees itself and the key before it",
        )
    )
    cases.append(
        ms_gqa(
            "ms_groupqueryattention_softcap",
            batch=1,
            past=PAST,
            seed=48,
            softcap=30.0,
            note="softcap: written out as c * tanh(s / c) on the scaled scores",
        )
    )
    cases += [ms_gqa_rotary(interleaved) for interleaved in (0, 1)]
    b = Builder("ms_decoder_masked_mha", seed=49)
    x = hidden_input(b)
    pasts = [b.input(n, F32, [B, H, "M", D]) for n in ("past_key", "past_value")]
    length = b.input("past_sequence_length", I32, [1])
    q, k, v = (linear(b, x, E, E) for _ in range(3))
    y, *_ = b.op(
        "DecoderMaskedMultiHeadAttention",
        *(q, k, v, "", "", *pasts, length),
        _domain=MS,
        _n=3,
        num_heads=H,
        past_present_share_buffer=1,
    )
    b.output(b.op("MatMul", y, b.weight(E, E), _out="y"), F32, [B, "S", E])
    m = b.model(domains={MS: 1})
    note = "one-token decoding over a shared, beam-indexed cache: refused with the reason"
    cases.append(
        Case("ms_decoder_masked_mha", m, 1, expect("causal"), auto_feeds(m, 49), True, note)
    )
    return cases


def ms_gqa(
    name: str, *, batch: int, past: int, seed: int, note: str, window: int = -1, **attrs
) -> Case:
    """com.microsoft GroupQueryAttention, past_key/past_value [batch, 2, P, 8]; with
    `window`, local_window_size (the query and `window` keys before it)."""
    b = Builder(name, seed=seed)
    x = hidden_input(b, batch=batch)
    past_k = b.input("past_key", F32, [batch, KVH, "P", D])
    past_v = b.input("past_value", F32, [batch, KVH, "P", D])
    seqlens = b.input("seqlens_k", I32, [batch])
    total = b.input("total_sequence_length", I32, [])
    q, k, v = linear(b, x, E, E), linear(b, x, E, KVH * D), linear(b, x, E, KVH * D)
    y, pk, pv = b.op(
        "GroupQueryAttention",
        q,
        k,
        v,
        past_k,
        past_v,
        seqlens,
        total,
        _domain=MS,
        _n=3,
        num_heads=H,
        kv_num_heads=KVH,
        local_window_size=window,
        **attrs,
    )
    b.output(b.op("MatMul", y, b.weight(E, E), _out="y"), F32, [batch, "S", E])
    b.output(pk, F32, [batch, KVH, None, D], name="present_key")
    b.output(pv, F32, [batch, KVH, None, D], name="present_value")
    m = b.model(domains={MS: 1})
    feeds = auto_feeds(
        m,
        seed,
        sizes={"P": past},
        seqlens_k=lambda n: np.full([batch], past + n - 1, np.int32),
        total_sequence_length=lambda n: np.array(past + n, np.int32),
    )
    return Case(
        name,
        m,
        1,
        # a window counts positions in the cache, which seqlens_k (data) sets: a bias tensor
        expect(
            "bias" if window > 0 else "causal_padding",
            kv_heads=KVH,
            cross=True,
            softcap=attrs.get("softcap"),
        ),
        feeds,
        True,
        "com.microsoft GroupQueryAttention: 3-D q [B,S,32] k/v [B,S,16], past [B,2,P,8], "
        "seqlens_k = P+S-1 (int32 [B]), total_sequence_length = P+S (int32 scalar), "
        "causal, and padding: seqlens_k, a data input, says which cache slots are valid; "
        "cross=True because kv length P+S != S statically; " + note,
    )


def ms_gqa_rotary(interleaved: int) -> Case:
    """GroupQueryAttention with do_rotary (cos/sin caches [64, 8]) as onnxruntime-genai writes
    Llama-like models: 2 query heads, 1 kv head, head size 16 (the kernel's rotary needs a
    multiple of 16), batch 1 decoding over a past of P = 3."""
    name = f"ms_groupqueryattention_rotary{'_interleaved' if interleaved else ''}"
    heads, kv_heads, size = 2, 1, 16
    b = Builder(name, seed=60 + interleaved)
    x = hidden_input(b, batch=1)
    pasts = [b.input(n, F32, [1, kv_heads, "P", size]) for n in ("past_key", "past_value")]
    seqlens = b.input("seqlens_k", I32, [1])
    total = b.input("total_sequence_length", I32, [])
    angles = np.arange(BUFFER)[:, None] / 10000 ** (np.arange(0, size, 2) / size)
    caches = [b.const(f(angles), np.float32, "rotary") for f in (np.cos, np.sin)]
    q = linear(b, x, E, heads * size)
    k, v = linear(b, x, E, kv_heads * size), linear(b, x, E, kv_heads * size)
    y, pk, pv = b.op(
        "GroupQueryAttention",
        *(q, k, v, *pasts, seqlens, total, *caches),
        _domain=MS,
        _n=3,
        num_heads=heads,
        kv_num_heads=kv_heads,
        do_rotary=1,
        rotary_interleaved=interleaved,
    )
    b.output(b.op("MatMul", y, b.weight(heads * size, E), _out="y"), F32, [1, "S", E])
    b.output(pk, F32, [1, kv_heads, None, size], name="present_key")
    b.output(pv, F32, [1, kv_heads, None, size], name="present_value")
    m = b.model(domains={MS: 1})
    feeds = auto_feeds(
        m,
        60,
        seqlens_k=lambda n: np.full([1], PAST + n - 1, np.int32),
        total_sequence_length=lambda n: np.array(PAST + n, np.int32),
    )
    expected = expect("causal_padding", q_heads=heads, kv_heads=kv_heads, head_dim=size, cross=True)
    expected["scale"] = float(size**-0.5)
    note = "rotary at the tokens' positions in the cache (P + s), halves or interleaved pairs"
    return Case(name, m, 1, expected, feeds, True, note)


# ------------------------------------------- 6b com.microsoft ops as ORT's optimizers write them

PAST_DIM, TOTAL = "past", "past+S"  # named as attnrewrite.inputs sizes them: PAST, PAST + n


def _key_lengths(total: int) -> np.ndarray:
    """mask_index [B]: the second sequence's last two keys are padding."""
    return np.array([total, total - 2], np.int32)


def _ends_and_starts(total: int) -> np.ndarray:
    """mask_index [2B]: exclusive ends then inclusive starts (left padding of row 1)."""
    return np.array([total, total, 0, 2], np.int32)


def _per_query(total: int) -> np.ndarray:
    """mask_index [B, S, T] of 0/1 with the first key always visible (S = T - PAST)."""
    mask = (np.random.default_rng(total).random((B, total - PAST, total)) > 0.3).astype(np.int32)
    mask[..., 0] = 1
    return mask


# form -> (shape, feed from the key length T); None: auto_feeds' 0/1 padding of row 1
MASK_FORMS: dict[str, tuple[list, Callable[[int], np.ndarray] | None]] = {
    "lengths": ([B], _key_lengths),
    "ends_starts": ([2 * B], _ends_and_starts),
    "raw": ([B, TOTAL], None),
    "per_query": ([B, "S", TOTAL], _per_query),
}


def ms_packed_attention(
    name: str, seed: int, *, mask: str | None, causal: bool, bias: bool = False, note: str
) -> Case:
    """com.microsoft Attention: x [B, S, E] @ W [E, 3E] + b, mask_index in one of
    MASK_FORMS, and past [2, B, H, P, d] -> present, or (onnxruntime takes no past with it)
    an attention_bias [1, H, S, S]."""
    b = Builder(name, seed=seed)
    x = hidden_input(b)
    past = "" if bias else b.input("past", F32, [2, B, H, PAST_DIM, D])
    keys, cached = ("S", 0) if bias else (TOTAL, PAST)
    overrides = {}
    mask_name = ""
    if mask is not None:
        shape, feed = MASK_FORMS[mask]
        mask_name = b.input("mask_index", I32, [keys if d == TOTAL else d for d in shape])
        if feed is not None:
            overrides["mask_index"] = lambda n, f=feed: f(cached + n)
    bias_name = b.input("attention_bias", F32, [1, H, "S", "S"]) if bias else ""
    inputs = [x, b.weight(E, 3 * E), b.weight(3 * E, scale=0.1), mask_name, past, bias_name]
    attrs = {"num_heads": H, "unidirectional": int(causal)}
    outputs = b.op("Attention", *inputs, _domain=MS, _n=1 if bias else 2, **attrs)
    y = outputs if bias else outputs[0]
    b.output(b.op("MatMul", y, b.weight(E, E), _out="y"), F32, [B, "S", E])
    if not bias:
        b.output(outputs[1], F32, [2, B, H, TOTAL, D], name="present")
    m = b.model(domains={MS: 1})
    kind = ("causal_" if causal else "") + ("bias" if bias or mask == "per_query" else "padding")
    if mask is None and not bias:
        kind = "causal" if causal else "none"
    feeds = auto_feeds(m, seed, **overrides)
    return Case(name, m, 1, expect(kind, cross=not bias), feeds, True, note)


def ms_multihead(
    name: str,
    seed: int,
    *,
    mask: str | None = None,
    causal: bool = False,
    past: bool = False,
    cross: bool = False,
    heads_first: bool = False,
    note: str,
) -> Case:
    """com.microsoft MultiHeadAttention as ORT's optimizer writes it: q, k, v projections
    without their bias, the packed bias [3E] as input 3; a key padding mask, a KV cache
    (past_key/past_value -> present_key/present_value) or cross attention (keys from
    another sequence, also as [B, H, L, d])."""
    b = Builder(name, seed=seed)
    x = hidden_input(b)
    source = b.input("encoder", F32, [B, "T", E]) if cross else x
    q, k, v = linear(b, x, E, E), linear(b, source, E, E), linear(b, source, E, E)
    packed_bias = "" if heads_first else b.weight(3 * E, scale=0.1)
    if heads_first:  # keys and values handed over per head, as a decoder's cross cache
        k, v = split_heads(b, k), split_heads(b, v)
    overrides = {}
    mask_name = ""
    if mask is not None:
        shape, feed = MASK_FORMS[mask]
        if not past:  # without a cache the key length is S (or T)
            shape = [d if d != TOTAL else ("T" if cross else "S") for d in shape]
        mask_name = b.input("key_padding_mask", I32, shape)
        extra = CROSS_EXTRA if cross else 0  # keys: P + S with a cache, T = S + 3 across
        if feed is not None:
            overrides["key_padding_mask"] = lambda n, f=feed: f((PAST if past else extra) + n)
    pasts = [b.input(n, F32, [B, H, PAST_DIM, D]) for n in ("past_key", "past_value")]
    pasts = pasts if past else ["", ""]
    outputs = 3 if past else 1
    inputs = [q, k, v, packed_bias, mask_name, "", *pasts]
    attrs = {"num_heads": H, "unidirectional": int(causal)}
    result = b.op("MultiHeadAttention", *inputs, _domain=MS, _n=outputs, **attrs)
    y = result[0] if past else result
    b.output(b.op("MatMul", y, b.weight(E, E), _out="y"), F32, [B, "S", E])
    if past:
        b.output(result[1], F32, [B, H, TOTAL, D], name="present_key")
        b.output(result[2], F32, [B, H, TOTAL, D], name="present_value")
    m = b.model(domains={MS: 1})
    kind = ("causal_" if causal else "") + ("padding" if mask else "")
    kind = {"": "none", "causal_": "causal"}.get(kind, kind)
    if mask == "per_query":
        kind = "causal_bias" if causal else "bias"
    feeds = auto_feeds(m, seed, **overrides)
    return Case(name, m, 1, expect(kind, cross=past or cross), feeds, True, note)


@register
def ms_optimizer_forms() -> list[Case]:
    return [
        ms_packed_attention(
            "ms_attention_lengths_past",
            50,
            mask="lengths",
            causal=True,
            note="Attention (GPT-2 as ORT fuses it): mask_index [B] key lengths, past/present",
        ),
        ms_packed_attention(
            "ms_attention_ends_starts",
            51,
            mask="ends_starts",
            causal=False,
            note="Attention: mask_index [2B] (ends, then starts: left padding), past",
        ),
        ms_packed_attention(
            "ms_attention_raw_mask_bias",
            52,
            mask="raw",
            causal=True,
            bias=True,
            note="Attention: raw mask [B, S], attention_bias [1, H, S, S], causal",
        ),
        ms_packed_attention(
            "ms_attention_per_query_mask",
            53,
            mask="per_query",
            causal=False,
            note="Attention: mask_index [B, S, P+S] (a mask per query)",
        ),
        ms_multihead(
            "ms_mha_bias_lengths",
            54,
            mask="lengths",
            note="MultiHeadAttention with the packed bias input and key lengths [B] (BERT as "
            "ORT's optimizer writes it with use_multi_head_attention)",
        ),
        ms_multihead(
            "ms_mha_bias_past_causal",
            55,
            mask="raw",
            causal=True,
            past=True,
            note="MultiHeadAttention: bias, raw key padding mask [B, P+S], past_key/past_value "
            "-> present_key/present_value, unidirectional",
        ),
        ms_multihead(
            "ms_mha_cross",
            56,
            cross=True,
            mask="raw",
            note="MultiHeadAttention cross attention: keys from a T-long encoder output",
        ),
        ms_multihead(
            "ms_mha_cross_heads_first",
            57,
            cross=True,
            heads_first=True,
            note="MultiHeadAttention cross attention with keys/values as [B, H, T, d]",
        ),
    ]


# --------------------------------------------------------------------------- 7 BERT-style padding


def padded_case(name: str, bias_fill: float, seed: int, note: str) -> Case:
    def body(b: Builder, x: str) -> Attn:
        q, k, v = qkv_heads(b, x, bias=True)
        return attend(b, q, k, v, mask=add_bias(padding_bias("attention_mask", bias_fill)))

    b = Builder(name, seed=seed)
    x = hidden_input(b)
    b.input("attention_mask", I64, [B, "S"])
    out_proj(b, body(b, x).ctx)
    m = b.model()
    return Case(name, m, 1, expect("padding"), auto_feeds(m, seed), True, note)


@register
def bert_padding_sub_mul() -> Case:
    return padded_case(
        "bert_padding_sub_mul",
        -10000.0,
        10,
        "BERT: (1 - Cast(mask[:,None,None,:])) * -10000 added to scores",
    )


@register
def bert_padding_finfo() -> Case:
    return padded_case(
        "bert_padding_finfo",
        FMIN,
        11,
        "BERT (newer HF): (1 - Cast(mask)) * finfo(float32).min added to scores",
    )


@register
def distilbert_masked_fill() -> Case:
    def body(b: Builder, x: str) -> Attn:
        q, k, v = qkv_heads(b, x, bias=True)
        q = b.op("Div", q, b.scalar(math.sqrt(D)))

        def mask(b: Builder, s: str) -> str:
            hidden = b.op("Equal", "attention_mask", b.int_scalar(0))
            hidden = b.op("Expand", b.op("Reshape", hidden, b.ints(B, 1, 1, -1)), b.op("Shape", s))
            return b.op("Where", hidden, b.scalar(FMIN), s)

        return attend(b, q, k, v, scale=None, mask=mask)

    b = Builder("distilbert_masked_fill", seed=12)
    x = hidden_input(b)
    b.input("attention_mask", I64, [B, "S"])
    out_proj(b, body(b, x).ctx)
    m = b.model()
    return Case(
        "distilbert_masked_fill",
        m,
        1,
        expect("padding"),
        auto_feeds(m, 12),
        True,
        "DistilBERT: q / sqrt(d) before the MatMul; Where(Expand(mask==0), finfo.min, "
        "scores) with the fill value as Where input 1",
    )


# --------------------------------------------------------------------------- 8 scale variants


@register
def scale_variants() -> list[Case]:
    def mul_commuted(b, x):
        return attend(b, *qkv_heads(b, x), scale="mul_first")

    def div_on_k(b, x):
        q, k, v = qkv_heads(b, x)
        return attend(b, q, b.op("Div", k, b.scalar(math.sqrt(D))), v, scale=None)

    def folded(b, x):
        q = project_heads(b, x, weight_scale=SCALE)  # 1/sqrt(d) folded into Wq
        return attend(b, q, project_heads(b, x), project_heads(b, x), scale=None)

    def mask_commuted(b, x):
        return attend(
            b, *qkv_heads(b, x), mask=add_bias(padding_bias("attention_mask"), first=True)
        )

    cases = [
        simple_case(
            "scale_mul_commuted",
            expect(),
            seed=13,
            body=mul_commuted,
            note="Mul(1/sqrt(d), scores): constant as the first Mul input",
        ),
        simple_case(
            "scale_div_on_k",
            expect(),
            seed=14,
            body=div_on_k,
            note="K / sqrt(d) before the transpose, no scale on the scores",
        ),
        simple_case(
            "scale_folded_into_weights",
            expect(scale=1.0),
            seed=15,
            body=folded,
            note="1/sqrt(d) folded into W_q: no scale node, effective scale 1.0",
        ),
    ]
    b = Builder("mask_add_commuted", seed=16)
    x = hidden_input(b)
    b.input("attention_mask", I64, [B, "S"])
    out_proj(b, mask_commuted(b, x).ctx)
    m = b.model()
    cases.append(
        Case(
            "mask_add_commuted",
            m,
            1,
            expect("padding"),
            auto_feeds(m, 16),
            True,
            "Add(padding_bias, scores): mask as the first Add input",
        )
    )
    return cases


# --------------------------------------------------------------------------- 9 transpose variants


@register
def transpose_variants() -> list[Case]:
    def perm_0231(b, x):
        q, v = project_heads(b, x), project_heads(b, x)
        k_bshd = b.op("Reshape", linear(b, x, E, E), b.ints(0, 0, H, D))
        return attend(b, q, None, v, kt=b.op("Transpose", k_bshd, perm=[0, 2, 3, 1]))

    def double(b, x):
        q, v = project_heads(b, x), project_heads(b, x)
        k = project_heads(b, x)  # [B,H,S,D] via Transpose(0,2,1,3) ...
        return attend(b, q, None, v, kt=transpose_k(b, k))  # ... then (0,1,3,2): two Transposes

    def batched_3d(b, x):
        # fairseq/BART: q * scaling, heads merged into the batch, bmm
        def to3d(t):
            return b.op("Reshape", project_heads(b, t), b.ints(B * H, -1, D))

        q = b.op("Mul", to3d(x), b.scalar(SCALE))
        k, v = to3d(x), to3d(x)
        a = attend(b, q, None, v, kt=b.op("Transpose", k, perm=[0, 2, 1]), scale=None)
        return Attn(a.scores, a.probs, b.op("Reshape", a.ctx, b.ints(B, H, -1, D)))

    cases = [
        simple_case(
            "kt_transpose_0231",
            expect(),
            seed=17,
            body=perm_0231,
            note="K^T = Transpose(k [B,S,H,d], perm=[0,2,3,1])",
        ),
        simple_case(
            "kt_double_transpose",
            expect(),
            seed=18,
            body=double,
            note="K^T as Transpose(0,2,1,3) then Transpose(0,1,3,2)",
        ),
        simple_case(
            "batched_3d_merged_heads",
            expect(),
            seed=19,
            body=batched_3d,
            note="fairseq/BART bmm: q*scale, [B*H,S,d] 3-D MatMuls, K^T perm [0,2,1]",
        ),
    ]

    b = Builder("k_pretransposed_input", seed=20)
    q = b.input("q", F32, [B, H, "S", D])
    kt = b.input("k_t", F32, [B, H, D, "T"])
    v = b.input("v", F32, [B, H, "T", D])
    b.output(attend(b, q, None, v, kt=kt).ctx, F32, [B, H, "S", D], name="ctx")
    m = b.model()
    cases.append(
        Case(
            "k_pretransposed_input",
            m,
            1,
            expect(cross=True),
            auto_feeds(m, 20),
            True,
            "q [B,H,S,d], K already transposed as graph input [B,H,d,T], v [B,H,T,d]",
        )
    )
    return cases


# --------------------------------------------------------------------------- 10 GQA repeat_kv


def repeat_kv(b: Builder, t: str, n_rep: int) -> str:
    """HF repeat_kv: [B,kv,S,d] -> Unsqueeze(2) -> Expand [B,kv,n_rep,S,d] -> [B,kv*n_rep,S,d]."""
    sh = b.op("Shape", t)
    bk = b.op("Slice", sh, b.ints(0), b.ints(2))
    sd = b.op("Slice", sh, b.ints(2), b.ints(4))
    expanded = b.op("Expand", unsqueeze(b, t, 2), b.op("Concat", bk, b.ints(n_rep), sd, axis=0))
    new_shape = b.op(
        "Concat", b.op("Slice", sh, b.ints(0), b.ints(1)), b.ints(KVH * n_rep), sd, axis=0
    )
    return b.op("Reshape", expanded, new_shape)


@register
def gqa_expand() -> Case:
    def body(b, x):
        q, k, v = qkv_heads(b, x, kv_heads=KVH)
        k, v = repeat_kv(b, k, H // KVH), repeat_kv(b, v, H // KVH)
        return attend(b, q, k, v, scale="mul", mask=add_bias(causal_bias_range))

    return simple_case(
        "gqa_expand",
        expect("causal", kv_heads=KVH),
        seed=21,
        body=body,
        note="Llama-style GQA: 2 kv heads repeated to 4 via Unsqueeze/Expand/Reshape; "
        "causal mask from Range/Greater",
    )


# --------------------------------------------------------------------------- 11 rotary + qk norm


def rms_norm(b: Builder, t: str) -> str:
    var = b.op("ReduceMean", b.op("Pow", t, b.scalar(2.0)), b.ints(-1), keepdims=1)
    inv = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.scalar(1e-6))))
    return b.op("Mul", b.op("Mul", t, inv), b.weight(D, scale=0.1, hint="norm_w"))


def rotary(b: Builder, t: str, cos: str, sin: str) -> str:
    x1 = b.op("Slice", t, b.ints(0), b.ints(D // 2), b.ints(-1))
    x2 = b.op("Slice", t, b.ints(D // 2), b.ints(INT64_MAX), b.ints(-1))
    rot = b.op("Concat", b.op("Neg", x2), x1, axis=-1)
    return b.op("Add", b.op("Mul", t, cos), b.op("Mul", rot, sin))


def rotary_tables(b: Builder, t: str):
    """cos/sin [S, D] from positions Range(0, S)."""
    pos = b.op("Cast", b.op("Range", b.int_scalar(0), seq_len(b, t, 2), b.int_scalar(1)), to=F32)
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, D, 2) / D))
    freqs = b.op("Mul", unsqueeze(b, pos, 1), b.const(inv_freq[None, :]))
    emb = b.op("Concat", freqs, freqs, axis=-1)
    return b.op("Cos", emb), b.op("Sin", emb)


@register
def rotary_qknorm() -> Case:
    def body(b, x):
        q, k, v = qkv_heads(b, x)
        cos, sin = rotary_tables(b, q)
        q, k = (rotary(b, rms_norm(b, t), cos, sin) for t in (q, k))
        return attend(b, q, k, v, mask=add_bias(causal_bias_range))

    return simple_case(
        "rotary_qknorm",
        expect("causal"),
        seed=22,
        body=body,
        note="Qwen3-style: RMSNorm (Pow/ReduceMean/Sqrt/Reciprocal) on q and k, "
        "rotary written out (Slice/Neg/Concat/Mul/Add), causal mask",
    )


# --------------------------------------------------------------------------- 12 KV cache, cross


@register
def kv_cache_and_cross() -> list[Case]:
    b = Builder("kv_cache_concat", seed=23)
    x = hidden_input(b)
    past_k = b.input("past_key", F32, [B, H, "P", D])
    past_v = b.input("past_value", F32, [B, H, "P", D])
    q, k, v = qkv_heads(b, x)
    k = b.op("Concat", past_k, k, axis=2)
    v = b.op("Concat", past_v, v, axis=2)
    out_proj(b, attend(b, q, k, v, mask=add_bias(causal_bias_range)).ctx)
    b.output(k, F32, [B, H, None, D], name="present_key")
    b.output(v, F32, [B, H, None, D], name="present_value")
    m = b.model()
    cases = [
        Case(
            "kv_cache_concat",
            m,
            1,
            expect("causal", cross=True),
            auto_feeds(m, 23),
            True,
            "decoder step with cache: K/V = Concat(past [B,H,P,d], new) on axis 2; causal "
            "bottom-right (query i sees keys j <= i+P); cross=True because kv length P+S != S",
        )
    ]

    b = Builder("cross_attention", seed=24)
    x = hidden_input(b)
    enc = hidden_input(b, "encoder_hidden_states", "T")
    out_proj(b, attend(b, *qkv_heads(b, x, kv_source=enc)).ctx)
    m = b.model()
    cases.append(
        Case(
            "cross_attention",
            m,
            1,
            expect(cross=True),
            auto_feeds(m, 24),
            True,
            "encoder-decoder cross attention: K/V from encoder_hidden_states [B,T,E]",
        )
    )
    return cases


# --------------------------------------------------------------------------- 13 fp16


@register
def fp16_cast_softmax() -> Case:
    b = Builder("fp16_cast_softmax", seed=25, dtype=np.float16)
    x = hidden_input(b)
    am = b.input("attention_mask", I64, [B, "S"])

    def mask(b: Builder, s: str) -> str:
        m = b.op("Cast", unsqueeze(b, am, 1, 2), to=F32)
        bias32 = b.op(
            "Mul", b.op("Sub", b.const(1.0, np.float32), m), b.const(-10000.0, np.float32)
        )
        return b.op("Add", s, b.op("Cast", bias32, to=F16))

    def softmax(b: Builder, s: str) -> str:
        return b.op("Cast", b.op("Softmax", b.op("Cast", s, to=F32), axis=-1), to=F16)

    out_proj(b, attend(b, *qkv_heads(b, x), mask=mask, softmax=softmax).ctx)
    m = b.model()
    return Case(
        "fp16_cast_softmax",
        m,
        1,
        expect("padding"),
        auto_feeds(m, 25),
        True,
        "fp16 model, Cast to float32 around Softmax; mask computed in float32 and Cast to "
        "fp16 before the Add",
    )


# --------------------------------------------------------------------------- 14 softmax axes


def flattened_softmax_opset11(b: Builder, s: str) -> str:
    """Reshape scores to [-1, Sk], Softmax with default axis (1 in opset 11), reshape back."""
    sk = b.op("Gather", b.op("Shape", s), b.ints(3), axis=0)
    flat = b.op("Reshape", s, b.op("Concat", b.ints(-1), sk, axis=0))
    return b.op("Reshape", b.op("Softmax", flat), b.op("Shape", s))


@register
def softmax_axis_variants() -> list[Case]:
    return [
        simple_case(
            "softmax_axis_positive",
            expect(),
            seed=26,
            body=lambda b, x: attend(
                b, *qkv_heads(b, x), softmax=lambda b, s: b.op("Softmax", s, axis=3)
            ),
            note="Softmax(axis=3) on rank-4 scores",
        ),
        simple_case(
            "softmax_opset11_flattened",
            expect(),
            seed=27,
            opset=11,
            body=lambda b, x: attend(b, *qkv_heads(b, x), softmax=flattened_softmax_opset11),
            note="opset 11: scores reshaped to [B*H*S, T], Softmax without axis (=1, the "
            "last axis of rank 2), reshaped back",
        ),
    ]


@register
def softmax_opset11_axis3_unknown_rank() -> Case:
    """Opset 11, Softmax(axis=3), after a contrib op (com.microsoft Gelu) that shape
    inference does not know: nothing downstream has a rank, and converting to opset 13
    turns the Softmax into Flatten(axis=3) -> Softmax -> Reshape(Shape(scores)), which keeps
    the key axis only if the scores have rank 4."""
    name = "softmax_opset11_axis3_unknown_rank"
    b = Builder(name, seed=40)
    x = b.op("Gelu", hidden_input(b), _domain="com.microsoft")
    out_proj(b, attend(b, *qkv_heads(b, x), softmax=lambda b, s: b.op("Softmax", s, axis=3)).ctx)
    m = b.model(11, domains={"com.microsoft": 1})
    note = "ranks known only by evaluation (the old exports ORT's optimizer left contrib ops in)"
    return Case(name, m, 1, expect(), auto_feeds(m, 40), True, note)


@register
def softmax_opset11_rank4_axis1() -> Case:
    b = Builder("softmax_opset11_rank4_axis1", seed=28)
    x = hidden_input(b)
    out_proj(b, attend(b, *qkv_heads(b, x), softmax=lambda b, s: b.op("Softmax", s)).ctx)
    m = b.model(11)
    return Case(
        "softmax_opset11_rank4_axis1",
        m,
        0,
        refuse("axis"),
        auto_feeds(m, 28),
        True,
        "NEGATIVE: opset-11 Softmax with default axis=1 on rank-4 scores normalizes over "
        "H*S*T, not over keys",
    )


# --------------------------------------------------------------------------- 15 biases and masks


@register
def bias_and_mask_variants() -> list[Case]:
    def alibi(b, x):
        slopes = 2.0 ** (-8.0 / H * np.arange(1, H + 1))

        def bias(b: Builder, s: str) -> str:
            i, j = positions(b, s)
            rel = b.op("Cast", b.op("Sub", j, i), to=F32)
            return b.op("Mul", b.const(slopes.reshape(1, H, 1, 1)), rel)

        return attend(b, *qkv_heads(b, x), mask=chain(add_bias(bias), add_bias(causal_bias_range)))

    def t5(b, x):
        buckets = 8

        def bias(b: Builder, s: str) -> str:
            i, j = positions(b, s)
            rel = b.op("Sub", j, i)
            bucket = b.op(
                "Add",
                b.op("Clip", rel, b.int_scalar(-buckets // 2), b.int_scalar(buckets // 2 - 1)),
                b.int_scalar(buckets // 2),
            )
            table = b.op("Gather", b.weight(buckets, H, scale=0.5, hint="rel_emb"), bucket, axis=0)
            return unsqueeze(b, b.op("Transpose", table, perm=[2, 0, 1]), 0)

        return attend(b, *qkv_heads(b, x), scale=None, mask=add_bias(bias))

    def causal_trilu(b: Builder, s: str) -> str:
        n = unsqueeze(b, seq_len(b, s, 2), 0)
        full = b.op(
            "ConstantOfShape",
            b.op("Concat", n, n, axis=0),
            value=numpy_helper.from_array(np.array([FMIN], np.float32)),
        )
        return b.op("Trilu", full, b.int_scalar(1), upper=1)

    return [
        simple_case(
            "alibi_bias",
            expect("causal_bias"),
            seed=29,
            body=alibi,
            note="ALiBi: slopes[1,H,1,1] * (j - i) from Range, plus causal mask",
        ),
        simple_case(
            "t5_relative_bias",
            expect("bias", scale=1.0),
            seed=30,
            body=t5,
            note="T5: relative positions via Range, Clip bucketing, Gather from a "
            "[buckets,H] embedding, Transpose/Unsqueeze to [1,H,S,S]; T5 has no "
            "scaling (scale 1.0)",
        ),
        simple_case(
            "causal_from_range",
            expect("causal"),
            seed=31,
            body=lambda b, x: attend(b, *qkv_heads(b, x), mask=add_bias(causal_bias_range)),
            note="causal mask Where(Greater(j, i), finfo.min, 0) from two Ranges",
        ),
        simple_case(
            "causal_from_trilu",
            expect("causal"),
            seed=32,
            body=lambda b, x: attend(b, *qkv_heads(b, x), mask=add_bias(causal_trilu)),
            note="causal mask Trilu(ConstantOfShape([S,S], finfo.min), k=1, upper=1)",
        ),
        simple_case(
            "sliding_window",
            expect("sliding_window", window=4),
            seed=33,
            body=lambda b, x: attend(b, *qkv_heads(b, x), mask=add_bias(sliding_bias(4))),
            note="causal band: query i sees keys i-3..i (4 keys incl. itself), "
            "Mistral convention i - j < window",
        ),
        *wide_window_cases(),
    ]


WIDE = 20  # wider than the lengths a mask is first evaluated at (6 and 9)


def local_band(b: Builder, s: str) -> str:
    """Bidirectional band |i - j| < WIDE (Longformer-style local attention, no causality)."""
    i, j = positions(b, s)
    far = b.op("Not", b.op("Less", b.op("Abs", b.op("Sub", i, j)), b.int_scalar(WIDE)))
    return b.op("Where", far, b.scalar(FMIN), b.scalar(0.0))


def local_buffer(b: Builder, s: str) -> str:
    """GPT-Neo local attention: a stored [1, 1, 64, 64] boolean band table, sliced to the
    lengths read at run time, then Where(keep, scores, finfo.min)."""
    rows = np.arange(BUFFER)[:, None]
    cols = np.arange(BUFFER)[None, :]
    band = ((cols <= rows) & (cols > rows - WIDE)).reshape(1, 1, BUFFER, BUFFER)
    table = b.const(band, np.bool_, "local_buffer")
    sq, sk = unsqueeze(b, seq_len(b, s, -2), 0), unsqueeze(b, seq_len(b, s, -1), 0)
    start = b.op("Sub", sk, sq)
    keep = b.op(
        "Slice",
        table,
        b.op("Concat", start, b.ints(0), axis=0),
        b.op("Concat", sk, sk, axis=0),
        b.ints(2, 3),
    )
    return b.op("Where", keep, s, b.scalar(FMIN))


def wide_window_cases() -> list[Case]:
    """Windows wider than the first evaluation lengths: causal there, a window beyond."""
    lengths = (6, 9, WIDE + 3)
    cases = [
        simple_case(
            "sliding_window_wide",
            expect("sliding_window", window=WIDE),
            seed=35,
            body=lambda b, x: attend(b, *qkv_heads(b, x), mask=add_bias(sliding_bias(WIDE))),
            note=f"causal band of {WIDE} keys from Range/Sub/Less: plain causal at 6 and 9",
        ),
        simple_case(
            "local_band_wide",
            expect("bias"),
            seed=36,
            body=lambda b, x: attend(b, *qkv_heads(b, x), mask=add_bias(local_band)),
            note=f"bidirectional band |i - j| < {WIDE}: no mask at all at 6 and 9",
        ),
        simple_case(
            "local_buffer_wide",
            expect("sliding_window", window=WIDE, scale=1.0),
            seed=37,
            body=lambda b, x: attend(b, *qkv_heads(b, x), scale=None, mask=local_buffer),
            note=f"GPT-Neo local attention: stored band table of width {WIDE}, sliced",
        ),
    ]
    return [dataclasses.replace(case, lengths=lengths) for case in cases]


# --------------------------------------------------------------------------- 15b logit soft-cap

SOFTCAP = 2.0  # small against scores of about +-3, so a rewrite that dropped it shows


def soft_cap(inner: str = "div", *, cap_first: bool = False, scale: float = 1.0) -> Masker:
    """Gemma 2's logit soft-cap on the scores: cap * tanh(scale * s / cap), the division
    written as Div by cap ("div") or Mul by scale / cap ("mul": the scale folded into it,
    as flash-attention writes softcap); the cap first in the product with `cap_first`."""

    def apply(b: Builder, s: str) -> str:
        if inner == "div":
            s = b.op("Div", s, b.scalar(SOFTCAP / scale))
        else:
            s = b.op("Mul", s, b.scalar(scale / SOFTCAP))
        t = b.op("Tanh", s)
        return b.op("Mul", b.scalar(SOFTCAP), t) if cap_first else b.op("Mul", t, b.scalar(SOFTCAP))

    return apply


@register
def softcap_variants() -> list[Case]:
    def gemma2(b, x):
        q, k, v = qkv_heads(b, x, kv_heads=KVH)
        k, v = repeat_kv(b, k, H // KVH), repeat_kv(b, v, H // KVH)
        mask = chain(soft_cap(), add_bias(causal_bias_range))
        return attend(b, q, k, v, scale="mul", mask=mask)

    def windowed(b, x):
        mask = chain(soft_cap(cap_first=True), add_bias(sliding_bias(3), first=True))
        return attend(b, *qkv_heads(b, x), scale="div", mask=mask)

    def folded(b, x):
        mask = chain(soft_cap("mul", scale=SCALE), add_bias(causal_bias_range))
        return attend(b, *qkv_heads(b, x), scale=None, mask=mask)

    def per_head(b, x):  # a Tanh times a [1, H, 1, 1] tensor: no scalar cap
        def capped(b: Builder, s: str) -> str:
            return b.op("Mul", b.op("Tanh", s), b.const(np.full((1, H, 1, 1), SOFTCAP)))

        return attend(b, *qkv_heads(b, x), mask=chain(capped, add_bias(causal_bias_range)))

    b = Builder("tanh_not_a_softcap", seed=93)
    out_proj(b, per_head(b, hidden_input(b)).ctx)
    m = b.model()
    return [
        simple_case(
            "softcap_gemma2",
            expect("causal", kv_heads=KVH, softcap=SOFTCAP),
            seed=90,
            body=gemma2,
            note="Gemma 2: (scores * scale) / cap -> Tanh -> * cap, then the causal mask; GQA",
        ),
        simple_case(
            "softcap_sliding_cap_first",
            expect("sliding_window", window=3, softcap=SOFTCAP),
            seed=91,
            body=windowed,
            note="cap * Tanh(scores / sqrt(d) / cap), the band mask added first",
        ),
        simple_case(
            "softcap_scale_folded",
            expect("causal", softcap=SOFTCAP),
            seed=92,
            body=folded,
            note="cap * Tanh(scores * (scale / cap)): the scale folded into the cap's division",
        ),
        Case(
            "tanh_not_a_softcap",
            m,
            0,
            refuse("not a logit soft-cap"),
            auto_feeds(m, 93),
            True,
            "NEGATIVE: Tanh(scores) times a per-head [1, H, 1, 1] tensor, not a scalar cap",
        ),
    ]


# --------------------------------------------------------------------------- 16 decomposed softmax


def decomposed_softmax(b: Builder, s: str) -> str:
    e = b.op("Exp", b.op("Sub", s, b.op("ReduceMax", s, b.ints(-1), keepdims=1)))
    return b.op("Div", e, b.op("ReduceSum", e, b.ints(-1), keepdims=1))


@register
def decomposed_softmax_case() -> Case:
    return simple_case(
        "decomposed_softmax",
        expect(),
        seed=34,
        body=lambda b, x: attend(b, *qkv_heads(b, x), softmax=decomposed_softmax),
        note="ReduceMax/Sub/Exp/ReduceSum/Div instead of Softmax",
    )


# -------------------------------------------------------------------------- 17 subgraphs, functions


@register
def loop_body() -> Case:
    layers = 2
    root = Builder("loop_body", seed=35)
    x = hidden_input(root)
    w_stacks = [
        root.weight(layers, E, E, scale=1 / math.sqrt(E), hint=f"w_{n}")
        for n in ("q", "k", "v", "o")
    ]

    body = Builder("layer_body", parent=root)
    it = body.input("iter", I64, [])
    cond = body.input("cond_in", BOOL, [])
    h = body.input("h_in", F32, [B, "S", E])
    wq, wk, wv, wo = (body.op("Gather", w, it, axis=0) for w in w_stacks)
    q, k, v = (project_heads(body, h, weight=w) for w in (wq, wk, wv))
    ctx = attend(body, q, k, v).ctx
    h_new = body.op(
        "Add", h, out_proj(body, ctx, name=body.fresh("attn_out"), declare=False, weight=wo)
    )
    body.output(body.op("Identity", cond), BOOL, [])
    body.output(h_new, F32, [B, "S", E])

    root.op("Loop", root.int_scalar(layers), None, x, body=body.graph(), _out="y")
    root.output("y", F32, [B, "S", E])
    m = root.model()
    return Case(
        "loop_body",
        m,
        1,
        expect(),
        auto_feeds(m, 35),
        True,
        "one attention block inside a Loop body (2 iterations = 2 layers), per-layer "
        "weights gathered from outer-scope initializers by the iteration number",
    )


@register
def if_body() -> Case:
    root = Builder("if_body", seed=36)
    x = hidden_input(root)
    flag = root.input("use_attention", BOOL, [])
    then = Builder("then_attention", parent=root)
    out_proj(
        then,
        attend(then, *qkv_heads(then, x), mask=add_bias(causal_bias_range)).ctx,
        name="then_y",
        declare=False,
    )
    then.output("then_y", F32, [B, "S", E])
    other = Builder("else_mlp", parent=root)
    other.output(other.op("Relu", linear(other, x, E, E), _out="else_y"), F32, [B, "S", E])
    root.op("If", flag, then_branch=then.graph(), else_branch=other.graph(), _out="y")
    root.output("y", F32, [B, "S", E])
    m = root.model()
    return Case(
        "if_body",
        m,
        1,
        expect("causal"),
        auto_feeds(m, 36, use_attention=lambda n: np.array(True)),
        True,
        "causal attention inside the then-branch of If (else: an MLP); feeds take the "
        "attention branch",
    )


@register
def model_local_function() -> Case:
    fb = Builder("fn", parent=None, inline_consts=True)
    q, k, v = "q", "k", "v"
    ctx = attend(fb, q, k, v, mask=add_bias(causal_bias_range)).ctx
    fb.op("Identity", ctx, _out="ctx")
    fn = helper.make_function(
        "local",
        "CausalSelfAttention",
        ["q", "k", "v"],
        ["ctx"],
        fb.nodes,
        [helper.make_opsetid("", 18)],
    )

    b = Builder("model_local_function", seed=37)
    h = hidden_input(b)
    for layer in range(2):
        q, k, v = qkv_heads(b, h)
        ctx = b.op("CausalSelfAttention", q, k, v, _domain="local")
        y = out_proj(b, ctx, name="y" if layer == 1 else b.fresh("layer_out"), declare=layer == 1)
        h = b.op("Add", h, y) if layer == 0 else h
    m = b.model(domains={"local": 1}, functions=[fn])
    return Case(
        "model_local_function",
        m,
        1,
        expect("causal"),
        auto_feeds(m, 37),
        True,
        "causal attention in a model-local function local.CausalSelfAttention(q,k,v) "
        "called twice (2 layers): ONE block in the function body; a finder that inlines "
        "functions would see 2 call sites",
    )


# --------------------------------------------------------------------------- 18 weights as inputs


@register
def dynamic_weights_inputs() -> Case:
    b = Builder("dynamic_weights_inputs", seed=38)
    x = b.input("x", F32, ["B", "S", E])
    wq, wk, wv, wo = (b.input(f"w_{n}", F32, [E, E]) for n in "qkvo")
    q, k, v = (project_heads(b, x, weight=w) for w in (wq, wk, wv))
    y = b.op("MatMul", merge_heads(b, attend(b, q, k, v).ctx), wo, _out="y")
    b.output(y, F32, ["B", "S", E])
    m = b.model()
    return Case(
        "dynamic_weights_inputs",
        m,
        1,
        expect(),
        auto_feeds(m, 38),
        True,
        "projection weights are graph inputs (not initializers); batch symbolic too",
    )


# --------------------------------------------------------------------------- negative cases


@register
def classifier_softmax() -> Case:
    b = Builder("classifier_softmax", seed=39)
    x = b.input("x", F32, [B, "S", E])
    pooled = b.op("ReduceMean", x, b.ints(1), keepdims=0)
    logits = linear(b, pooled, E, 10, bias=True)
    b.output(b.op("Softmax", logits, axis=-1, _out="probs"), F32, [B, 10])
    m = b.model()
    return Case(
        "classifier_softmax",
        m,
        0,
        refuse("not attention"),
        auto_feeds(m, 39),
        True,
        "NEGATIVE: Softmax over class logits (no Q.K^T, no .V)",
    )


# --------------------------------------------------------------------------- files to repair


def _contrib_layer(name: str, seed: int) -> onnx.ModelProto:
    """A causal layer whose input goes through com.microsoft Gelu first."""
    b = Builder(name, seed=seed)
    x = b.op("Gelu", hidden_input(b), _domain=MS)
    out_proj(b, attend(b, *qkv_heads(b, x), mask=add_bias(causal_bias_range)).ctx)
    return b.model(domains={MS: 1})


@register
def files_to_repair() -> list[Case]:
    """Models onnxruntime runs but the ONNX standard refuses, each repaired on load."""
    unsorted = _contrib_layer("repair_unsorted_nodes", 44)
    nodes = list(unsorted.graph.node)
    del unsorted.graph.node[:]
    unsorted.graph.node.extend(reversed(nodes))

    no_import = _contrib_layer("repair_contrib_import", 45)
    del no_import.opset_import[1:]

    twice = _contrib_layer("repair_duplicate_constants", 46)
    scale = numpy_helper.from_array(np.array(1.0 / SCALE, np.float32))
    div = next(n for n in twice.graph.node if n.op_type == "Div")
    div.input[1] = "scale"
    at = list(twice.graph.node).index(div)
    for where in (at, 0):  # one Constant before its reader, an identical one at the top
        twice.graph.node.insert(where, helper.make_node("Constant", [], ["scale"], value=scale))

    notes = {
        "repair_unsorted_nodes": "nodes in reverse order (onnxruntime sorts them itself)",
        "repair_contrib_import": "com.microsoft node without the com.microsoft opset import",
        "repair_duplicate_constants": "two identical Constant nodes write the scale",
    }
    models = {"repair_unsorted_nodes": unsorted, "repair_contrib_import": no_import}
    models["repair_duplicate_constants"] = twice
    return [
        Case(name, m, 1, expect("causal"), auto_feeds(m, 44), True, notes[name])
        for name, m in models.items()
    ]


def extra_output_case(name: str, which: str, seed: int) -> Case:
    b = Builder(name, seed=seed)
    x = hidden_input(b)
    a = attend(b, *qkv_heads(b, x))
    out_proj(b, a.ctx)
    b.output(
        getattr(a, which),
        F32,
        [B, H, "S", "S"],
        name="attn_scores" if which == "scores" else "attn_weights",
    )
    m = b.model()
    return Case(
        name,
        m,
        0,
        refuse("consumer"),
        auto_feeds(m, seed),
        True,
        f"NEGATIVE: the attention {which} tensor is also a graph output",
    )


@register
def scores_second_consumer() -> Case:
    return extra_output_case("scores_second_consumer", "scores", 40)


@register
def probs_second_consumer() -> Case:
    return extra_output_case("probs_second_consumer", "probs", 41)


@register
def training_graph() -> Case:
    """A training graph (onnxruntime-training's gradient graph): SoftmaxGrad_13 reads the
    probabilities to compute the scores' gradient from the output's gradient."""
    name = "training_graph"
    b = Builder(name, seed=43)
    x = hidden_input(b)
    a = attend(b, *qkv_heads(b, x))
    out_proj(b, a.ctx)
    grad_in = b.input("probs_grad", F32, [B, H, "S", "S"])
    grad = b.op("SoftmaxGrad_13", grad_in, a.probs, _domain=MS, axis=-1)
    b.output(grad, F32, [B, H, "S", "S"], name="scores_grad")
    m = b.model(domains={MS: 1})
    return Case(
        name,
        m,
        0,
        refuse("training graph"),
        auto_feeds(m, 43),
        True,
        "NEGATIVE: gradient ops read the probabilities; only inference graphs are rewritten",
    )


@register
def no_attention() -> Case:
    b = Builder("no_attention", seed=42)
    x = hidden_input(b)
    y = linear(b, b.op("Relu", linear(b, x, E, 4 * E, bias=True)), 4 * E, E, bias=True)
    b.output(b.op("Add", x, y, _out="y"), F32, [B, "S", E])
    m = b.model()
    return Case(
        "no_attention",
        m,
        0,
        refuse(None),
        auto_feeds(m, 42),
        True,
        "NEGATIVE: an MLP block without any Softmax; nothing to refuse (reason_contains None)",
    )


# --------------------------------------------------------------------------- public entry


def all_cases() -> list[Case]:
    cases = [c for build in _BUILDERS for c in build()]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


# --------------------------------------------------------------------------- self check


def _seq_axis(vi: onnx.ValueInfoProto, sym: str = "S") -> int | None:
    for ax, d in enumerate(vi.type.tensor_type.shape.dim):
        if d.dim_param == sym:
            return ax
    return None


def _probe(case: Case, sess) -> str:
    """Check the mask semantics by perturbing inputs along the query axis S.

    causal-like: changing the last position must not change earlier outputs;
    sliding_window: changing position 0 must not change outputs >= window;
    padding: changing batch row 1's 2 padded positions must not change its
    other outputs; none/bias (self-attention): changing the last position
    MUST change earlier outputs (nothing hidden by accident).
    """
    if case.expected_blocks == 0:
        return "-"
    exp = case.expected.get("per_block", [case.expected])[0]
    mask, n = exp["mask"], SEQ_DEFAULT
    graph = case.model.graph
    out_ax = _seq_axis(graph.output[0])
    in_axes = {vi.name: _seq_axis(vi) for vi in graph.input}
    base = case.feeds(n)
    y0 = sess.run([graph.output[0].name], base)[0]

    def perturbed(rows, positions):
        feeds = {k: v.copy() for k, v in base.items()}
        rng = np.random.default_rng(99)
        for name, arr in feeds.items():
            ax = in_axes.get(name)
            if ax is None or arr.dtype.kind != "f":
                continue
            idx = [slice(None)] * arr.ndim
            idx[0], idx[ax] = rows, positions
            arr[tuple(idx)] += rng.standard_normal(arr[tuple(idx)].shape).astype(arr.dtype)
        return sess.run([graph.output[0].name], feeds)[0]

    def part(y, rows, positions):
        idx = [slice(None)] * y.ndim
        idx[0], idx[out_ax] = rows, positions
        return y[tuple(idx)]

    all_rows = slice(None)
    results = []
    if mask in ("causal", "causal_padding", "causal_bias", "sliding_window"):
        y1 = perturbed(all_rows, slice(n - 1, n))
        ok = np.allclose(
            part(y0, all_rows, slice(0, n - 1)), part(y1, all_rows, slice(0, n - 1)), atol=1e-3
        )
        results.append("causal" if ok else "CAUSAL-LEAK")
    if mask == "sliding_window":
        w = exp["window"]
        y1 = perturbed(all_rows, slice(0, 1))
        ok = np.allclose(
            part(y0, all_rows, slice(w, n)), part(y1, all_rows, slice(w, n)), atol=1e-3
        )
        results.append("window" if ok else "WINDOW-LEAK")
    if mask in ("padding", "causal_padding"):
        y1 = perturbed(1, slice(n - 2, n))
        ok = np.allclose(part(y0, 1, slice(0, n - 2)), part(y1, 1, slice(0, n - 2)), atol=1e-3)
        results.append("padding" if ok else "PADDING-LEAK")
    if mask in ("none", "bias") and not exp["cross"]:
        y1 = perturbed(all_rows, slice(n - 1, n))
        ok = not np.allclose(
            part(y0, all_rows, slice(0, n - 1)), part(y1, all_rows, slice(0, n - 1)), atol=1e-3
        )
        results.append("unmasked" if ok else "UNEXPECTED-MASK")
    return ",".join(results) or "-"


def check_case(case: Case) -> dict:
    """checker (full) + onnxruntime at one or two lengths + mask probe. Raises on failure."""
    import onnxruntime as ort

    onnx.checker.check_model(case.model, full_check=True)
    if case.expected_blocks:
        per = case.expected.get("per_block", [case.expected])
        for e in per:
            assert e["mask"] in MASK_KINDS and isinstance(e["scale"], float), e
    else:
        assert "reason_contains" in case.expected
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(
        case.model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    lengths = (SEQ_DEFAULT, SEQ_OTHER) if case.dynamic_seq else (SEQ_DEFAULT,)
    for n in lengths:
        for out in sess.run(None, case.feeds(n)):
            if out.dtype.kind == "f" and not np.isfinite(out).all():
                raise AssertionError(f"non-finite output at S={n}")
    probe = _probe(case, sess)
    if any(w.isupper() for w in probe.split(",")):
        raise AssertionError(f"mask probe failed: {probe}")
    return {"lengths": lengths, "probe": probe}


def main() -> int:
    cases = all_cases()
    rows, failures = [], 0
    for c in cases:
        exp = c.expected.get("per_block", [c.expected])[0]
        opset = next(o.version for o in c.model.opset_import if o.domain in ("", "ai.onnx"))
        try:
            info = check_case(c)
            status, probe = "ok " + "/".join(map(str, info["lengths"])), info["probe"]
        except Exception as e:  # report every case, fail at the end
            failures += 1
            status, probe = "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        if c.expected_blocks:
            desc = (
                f"{exp['mask']:<14} w={exp['window']!s:<4} h={exp['q_heads']}/{exp['kv_heads']} "
                f"d={exp['head_dim']} scale={exp['scale']:.4f} cross={int(exp['cross'])}"
            )
        else:
            desc = f"refuse: {exp['reason_contains']!r}"
        rows.append((c.name, str(c.expected_blocks), str(opset), desc, status, probe))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    header = ("case", "blk", "op", "expected", "checker+ort S=", "probe")
    print("  ".join(h.ljust(w) for h, w in zip(header, [*widths, 0], strict=False)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, [*widths, 0], strict=False)))
    print(f"\n{len(cases)} cases, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
