"""Parity of a method's ONNX body with its torch reference, on one exported attention layer.

The layer (attnrewrite.layers) is rewritten by the tool, run in onnxruntime, and compared with
the method's torch reference in float64 on the same inputs: the node must compute what the
reference defines, at sequence lengths unlike the export length.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch

from attnrewrite import methods as references
from attnrewrite.layers import LayerSpec, attention_layer
from attnrewrite.loading import prepare_model
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.methods import ResolvedMethod, get_method
from attnrewrite.substitute.rewrite import SubstituteResult, substitute
from attnrewrite.substitute.signature import Signature
from attnrewrite.substitute.standalone import node_model

SMALL = {"heads": 2, "kv_heads": 2, "head_dim": 8}  # layers small enough for many lengths
SMALL_SPECS = {
    "causal": LayerSpec(**SMALL),
    "bidirectional": LayerSpec(causal=False, **SMALL),
    "causal_padding": LayerSpec(mask="padding", **SMALL),
    "bidirectional_padding_gqa": LayerSpec(
        causal=False, mask="padding", heads=4, kv_heads=2, head_dim=8
    ),
    "causal_gqa": LayerSpec(heads=4, kv_heads=1, head_dim=8),
}


def rewrite_layer(
    spec: LayerSpec,
    method: str,
    params: dict | None = None,
    opset: int = 17,
    fitted: dict[str, np.ndarray] | None = None,
) -> tuple[onnx.ModelProto, SubstituteResult]:
    """The layer rewritten with `method` (reading `fitted` arrays); checked by onnx.checker."""
    chosen = get_method(method, params)
    if fitted:
        chosen = chosen.with_fitted(fitted)
    model = prepare_model(attention_layer(spec, opset), min_opset=chosen.min_opset)
    found = find_attention(model)
    assert len(found.matches) == 1, found
    result = substitute(model, found.matches, chosen)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto, result


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    """An onnxruntime session on the model, warnings off."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options)


def run_onnx(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return session(proto).run(None, feeds)[0]


def reference(
    spec: LayerSpec, method: str, params: dict | None, feeds: dict[str, np.ndarray]
) -> np.ndarray:
    """The torch reference in float64 on the layer's inputs (window and mask as the layer).

    The mask keeps its own dtype, so its finfo.min entries count as masked (-inf), as in the
    model's dtype, rather than as large finite logits.
    """
    q, k, v = (torch.from_numpy(feeds[n]).double() for n in ("query", "key", "value"))
    bias = torch.from_numpy(feeds["mask"]) if "mask" in feeds else None
    out = references.get(method)(
        q,
        k,
        v,
        scale=spec.scale,
        is_causal=spec.causal,
        bias=bias,
        window=spec.window,
        **(params or {}),
    )
    return out.numpy()


def relative_error(reference_out: np.ndarray, candidate: np.ndarray) -> float:
    """Relative Frobenius error (the measure the method tests use)."""
    ref = reference_out.astype(np.float64)
    return float(np.linalg.norm(candidate.astype(np.float64) - ref) / np.linalg.norm(ref))


@functools.cache
def _layer_session(spec: LayerSpec, method: str, params: tuple, opset: int) -> ort.InferenceSession:
    """The layer rewritten with `method` (no fallback), one session for many lengths."""
    proto, result = rewrite_layer(spec, method, dict(params), opset)
    (block,) = result.rewritten
    assert block.fallback is None, block.fallback
    assert block.method.name == method
    return session(proto)


def layer_output(
    spec: LayerSpec, method: str, params: dict | None, feeds: dict, opset: int = 17
) -> np.ndarray:
    """The rewritten layer's output on `feeds` in onnxruntime."""
    key = tuple(sorted((params or {}).items()))
    return _layer_session(spec, method, key, opset).run(None, feeds)[0]


def body_error(
    spec: LayerSpec,
    method: str,
    params: dict | None,
    q_len: int,
    kv_len: int | None = None,
    batch: int = 2,
    seed: int = 0,
    opset: int = 17,
) -> float:
    """Relative error of the rewritten layer in onnxruntime against the float64 reference."""
    feeds = spec.inputs(batch, q_len, kv_len, seed=seed)
    out = layer_output(spec, method, params, feeds, opset)
    return relative_error(reference(spec, method, params, feeds), out)


def function_model(method: ResolvedMethod, sig: Signature, opset: int = 18) -> onnx.ModelProto:
    """One node of the method over graph inputs query/key/value[/mask], through its function
    (scale 0.3)."""
    return node_model(method, sig, scale=0.3, opset=opset)


def rank3_error(method: str, params: dict, causal: bool, mask: str) -> float:
    """Relative error of the method's function on [B*H, S, d] operands, as some exporters write
    them, against its float64 reference: no mask ("none"), or a boolean one (True = attend)
    per query ("keep") or per key ("keep_keys")."""
    chosen = get_method(method, params)
    bias, keywise = ("none", False) if mask == "none" else ("keep", mask == "keep_keys")
    sig = Signature(3, ir.DataType.FLOAT, bias, keywise, causal, False, False, False, False)
    model = function_model(chosen, sig)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, n, 8, generator=gen) for n in (21, 50, 50))
    feeds = {"query": q.numpy(), "key": k.numpy(), "value": v.numpy()}
    keep = None
    if mask != "none":
        keep = torch.rand(3, 1 if keywise else 21, 50, generator=gen) > 0.3
        feeds["mask"] = keep.numpy()
    ref = references.get(method)(
        *(x[None].double() for x in (q, k, v)),
        scale=0.3,
        is_causal=causal,
        bias=None if keep is None else keep[None],
        **params,
    )[0]
    return relative_error(ref.numpy(), run_onnx(model, feeds))
