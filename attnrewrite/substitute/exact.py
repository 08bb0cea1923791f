"""The exact method: the same attention, one node. Its parity with the original model
proves the match captured q, k, v, scale and mask."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from attnrewrite.substitute.body import Body, Params, causal_allowed, repeat_kv, swap_last_two
from attnrewrite.substitute.methods import MethodBody
from attnrewrite.substitute.signature import Signature


def exact_body(b: Body, sig: Signature, inputs: Sequence[ir.Value], params: Params) -> ir.Value:
    """softmax(scale * q k^T + mask) v, with the original's softmax precision."""
    query, key, value = inputs[:3]
    scale = b.float_attr("scale")
    if sig.dtype != ir.DataType.FLOAT:
        scale = b.op("Cast", scale, to=sig.dtype)
    scaled = b.op("Mul", query, scale)
    if sig.kv_repeat:
        key, value = repeat_kv(b, key, query), repeat_kv(b, value, query)
    scores = b.op("MatMul", scaled, b.op("Transpose", key, perm=swap_last_two(sig.rank)))
    compute = sig.compute_dtype
    if compute != sig.dtype:
        scores = b.op("Cast", scores, to=compute)
    keep = None
    if sig.bias == "additive":
        scores = b.op("Add", scores, b.op("Cast", inputs[3], to=compute))
    elif sig.bias == "keep":
        keep = inputs[3]
    if sig.causal:
        allowed = causal_allowed(b, query, key, sig.window)
        keep = allowed if keep is None else b.op("And", keep, allowed)
    if keep is not None:
        scores = b.op("Where", keep, scores, b.lowest(compute))
    probs = b.op("Softmax", scores, axis=-1)
    if sig.nan_guard:
        zero = b.op("Cast", b.const(0.0, "float32"), to=compute)
        probs = b.op("Where", b.op("IsNaN", probs), zero, probs)
    if compute != sig.dtype:
        probs = b.op("Cast", probs, to=sig.dtype)
    return b.op("MatMul", probs, value)


BODY = MethodBody("ExactAttention", exact_body)
