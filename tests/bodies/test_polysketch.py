"""The PolySketch body equals its float64 torch reference; blocks it cannot honour stay exact."""

from __future__ import annotations

import dataclasses
import functools
import io
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from torch import Tensor, nn

from attnrewrite import methods as references
from attnrewrite.layers import LayerSpec
from attnrewrite.loading import prepare_model
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import substitute
from attnrewrite.substitute.signature import Signature
from tests.bodies.harness import reference, relative_error, rewrite_layer, run_onnx, session

TOL = 1e-5
H = {"heads": 4, "kv_heads": 4}  # fewer heads than the layer's default keep the test fast
GQA = {"heads": 4, "kv_heads": 2}
SPECS = {  # the padding mask hides the last sequence's last quarter of keys
    "causal": LayerSpec(**H),
    "bidirectional_padding_gqa": LayerSpec(causal=False, mask="padding", **GQA),
    "causal_padding_gqa": LayerSpec(mask="padding", **GQA),
}
# (q_len, kv_len): one token, small odd, cross lengths both ways, a few hundred (crossing blocks)
LENGTHS = [(1, 1), (7, 7), (5, 9), (40, 33), (200, 200), (173, 301)]


@functools.cache
def rewritten(spec: LayerSpec, params: tuple, opset: int) -> onnx.ModelProto:
    proto, result = rewrite_layer(spec, "polysketch", dict(params), opset)
    (block,) = result.rewritten
    assert block.fallback is None, block.fallback
    assert block.overload.startswith("r4")
    return proto


def errors(spec: LayerSpec, params: dict, lengths, opset: int = 17) -> list[float]:
    """Relative errors against the float64 reference, one session for all lengths."""
    layer = session(rewritten(spec, tuple(sorted(params.items())), opset))
    out = []
    for q_len, kv_len in lengths:
        feeds = spec.inputs(2, q_len, kv_len, seed=q_len + kv_len)
        ref = reference(spec, "polysketch", params, feeds)
        out.append(relative_error(ref, layer.run(None, feeds)[0]))
    return out


@pytest.mark.parametrize("name", SPECS)
def test_default_body_matches_reference(name) -> None:
    """mixed + softmax_fit, block 64: lengths up to 301 cross several blocks."""
    errs = errors(SPECS[name], {"block": 64}, LENGTHS)
    assert max(errs) <= TOL, errs


@pytest.mark.parametrize(
    "params",
    [
        {"variant": "sketch", "block": 32, "sketch_size": 16},
        {"variant": "exact_poly", "block": 32},  # d = 64: the dense formula
        {"fit": "none", "block": 16},
        {"fit": "none", "variant": "sketch", "block": 16, "degree": 6, "seed": 3},
        {"variant": "mixed", "block": 16, "degree": 6, "sketch_size": 8},
    ],
)
@pytest.mark.parametrize("causal", [True, False])
def test_other_variants_and_fits_match_reference(params, causal) -> None:
    spec = LayerSpec(causal=causal, mask="padding", **GQA)
    assert max(errors(spec, params, [(150, 170)])) <= TOL


@pytest.mark.parametrize("causal", [True, False])
def test_tensor_power_features_match_reference(causal) -> None:
    """exact_poly on a narrow head: (d + 1)^p <= 4096 takes the tensor-power block scan."""
    spec = LayerSpec(causal=causal, mask="padding", head_dim=6, **GQA)
    params = {"variant": "exact_poly", "block": 8}
    assert max(errors(spec, params, [(1, 1), (45, 50), (50, 45)])) <= TOL


def test_opset_18_reduces_by_input() -> None:
    spec = LayerSpec(mask="padding", **GQA)
    assert max(errors(spec, {"block": 16}, [(1, 1), (37, 37), (20, 70)], 18)) <= TOL


def test_fp16_computes_in_fp32() -> None:
    """fp16 in and out: equal to the reference up to the output's own fp16 rounding."""
    spec = LayerSpec(mask="padding", dtype=torch.float16, **H)
    proto = rewritten(spec, (("block", 16),), 17)
    feeds = spec.inputs(2, 45, 45, seed=1)
    out = run_onnx(proto, feeds)
    assert out.dtype == np.float16
    ref = reference(spec, "polysketch", {"block": 16}, feeds)
    assert relative_error(ref.astype(np.float16), out) <= 1e-4
    assert relative_error(ref, out) <= 1e-3  # fp16's unit roundoff is 4.9e-4


class _Rank3(nn.Module):
    """Attention on [B*H, S, d] operands, as some exporters write it."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        scores = torch.matmul(query, key.transpose(-1, -2)) * 0.25
        q_len, kv_len = query.shape[-2], key.shape[-2]
        hidden = torch.arange(kv_len)[None, :] > torch.arange(q_len)[:, None] + (kv_len - q_len)
        scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
        return torch.matmul(torch.softmax(scores, dim=-1), value)


def test_rank3_operands() -> None:
    feeds = {n: torch.randn(6, 9, 16) for n in ("query", "key", "value")}
    buffer = io.BytesIO()
    axes = {n: {0: "bh", 1: f"{n}_len"} for n in feeds}
    axes["value"] = axes["key"] = {0: "bh", 1: "kv_len"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Rank3(),
            tuple(feeds.values()),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=list(feeds),
            output_names=["output"],
            dynamic_axes={**axes, "output": {0: "bh", 1: "q_len"}},
        )
    params = {"block": 8}
    chosen = get_method("polysketch", params)
    model = prepare_model(onnx.load_from_string(buffer.getvalue()))
    (match,) = find_attention(model).matches
    if match.head_dim is None:  # the finder infers head dims of rank-4 operands only
        assert "head dim" in chosen.limit(Signature.of(match))
        match = dataclasses.replace(match, head_dim=16)
    (block,) = substitute(model, [match], chosen).rewritten
    assert block.fallback is None and block.overload.startswith("r3"), block
    proto = ir.serde.serialize_model(model)
    gen = torch.Generator().manual_seed(0)
    for q_len, kv_len in [(1, 1), (21, 21), (13, 30)]:
        q = torch.randn(6, q_len, 16, generator=gen)
        k, v = torch.randn(2, 6, kv_len, 16, generator=gen)
        out = run_onnx(proto, {"query": q.numpy(), "key": k.numpy(), "value": v.numpy()})
        ref = references.get("polysketch")(
            *(t.double()[None] for t in (q, k, v)), scale=0.25, is_causal=True, **params
        )[0]
        assert relative_error(ref.numpy(), out) <= TOL, (q_len, kv_len)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (LayerSpec(mask="padding", window=5), "sliding window"),
        (LayerSpec(causal=False, mask="bias"), "key-wise"),
    ],
)
def test_unsupported_masks_stay_exact(spec, reason) -> None:
    proto, result = rewrite_layer(spec, "polysketch", None)
    (block,) = result.rewritten
    assert block.fallback is not None and reason in block.fallback, block.fallback
    assert block.method.name == "exact"
    feeds = spec.inputs(2, 11, 11)
    assert relative_error(reference(spec, "exact", None, feeds), run_onnx(proto, feeds)) <= 1e-6


FITTED = ("query_gain", "key_gain", "key_shift")


def _fitted_pairs(spec: LayerSpec, params: dict, arrays: dict[str, np.ndarray], cases) -> list:
    """(onnxruntime output, float64 reference) of the calibrated node on each (q_len, kv_len)."""
    proto, result = rewrite_layer(spec, "polysketch", params, fitted=arrays)
    (block,) = result.rewritten
    assert block.fallback is None and block.overload.endswith("_fitted")
    runner = session(proto)
    tensors = {name: torch.from_numpy(a).double() for name, a in arrays.items()}
    pairs = []
    for q_len, kv_len in cases:
        feeds = spec.inputs(2, q_len, kv_len, seed=q_len)
        expected = reference(spec, "polysketch", {**params, **tensors}, feeds)
        pairs.append((runner.run(None, feeds)[0], expected))
    return pairs


def _map(spec: LayerSpec, size: float) -> dict[str, np.ndarray]:
    gen = np.random.default_rng(0)
    shape = (spec.heads, spec.head_dim)
    return {name: (size * gen.standard_normal(shape)).astype(np.float32) for name in FITTED}


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize(
    "params",
    [{"block": 64}, {"variant": "exact_poly", "block": 32}, {"fit": "none", "block": 16}],
)
def test_fitted_body_matches_reference(name, params) -> None:
    """The calibrated overload (gains and shifts as the node's initializers) equals the
    reference with the same arrays, which differ from the plain method by O(1) here."""
    spec = SPECS[name]
    cases = [(1, 1), (40, 33), (173, 301)]
    pairs = _fitted_pairs(spec, params, _map(spec, 0.3), cases)
    for (out, expected), case in zip(pairs, cases, strict=True):
        assert relative_error(expected, out) <= TOL, case
    feeds = spec.inputs(2, 173, 301, seed=173)
    assert relative_error(reference(spec, "polysketch", params, feeds), pairs[-1][0]) > 0.1


@pytest.mark.parametrize("name", SPECS)
def test_zero_map_body_is_the_plain_body(name) -> None:
    spec = SPECS[name]
    zeros = {n: np.zeros((spec.heads, spec.head_dim), np.float32) for n in FITTED}
    plain = session(rewritten(spec, (("block", 64),), 17))
    cases = [(7, 7), (173, 301)]
    for (out, _), (q_len, kv_len) in zip(
        _fitted_pairs(spec, {"block": 64}, zeros, cases), cases, strict=True
    ):
        feeds = spec.inputs(2, q_len, kv_len, seed=q_len)
        assert relative_error(plain.run(None, feeds)[0], out) <= 1e-6, (q_len, kv_len)
