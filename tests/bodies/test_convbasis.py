"""The conv-basis ONNX body computes its torch reference (recovery="topk") in onnxruntime.

Exported layers (tests/bodies/harness.py) cover causal, bidirectional, key padding, GQA and
KV-cache / cross lengths at opset 17 and 20; signatures the exporter's layers do not produce
(a recognised causal window, rank-3 operands, fp16) are checked on a one-node model that calls
the function directly. Blocks the body cannot honour stay exact with a reason.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from attnrewrite import methods as references
from attnrewrite.errors import AttnRewriteError
from attnrewrite.layers import LayerSpec
from attnrewrite.substitute import convbasis as convbasis_body
from attnrewrite.substitute.body import DOMAIN, DOMAIN_VERSION, build_function
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.signature import Signature
from tests.bodies.harness import (
    body_error,
    layer_output,
    reference,
    relative_error,
    rewrite_layer,
    run_onnx,
    session,
)

TOL = 1e-5
TRANSFORMS = ("direct", "fft")
SMALL = {"heads": 4, "kv_heads": 4, "head_dim": 16}
SPECS = {
    "causal": LayerSpec(**SMALL),
    "bidirectional": LayerSpec(causal=False, **SMALL),
    "causal_padding": LayerSpec(mask="padding", **SMALL),
    "bidirectional_padding": LayerSpec(causal=False, mask="padding", **SMALL),
    "causal_padding_gqa": LayerSpec(mask="padding", heads=4, kv_heads=2, head_dim=16),
    "bidirectional_gqa": LayerSpec(causal=False, heads=4, kv_heads=1, head_dim=16),
}


def layer_error(
    spec: LayerSpec, params: dict, q_len: int, kv_len: int | None = None, opset: int = 17
) -> tuple[float, dict, np.ndarray]:
    feeds = spec.inputs(2, q_len, kv_len, seed=q_len)
    out = layer_output(spec, "convbasis", params, feeds, opset)
    return relative_error(reference(spec, "convbasis", params, feeds), out), feeds, out


CASES = [  # (layer, q_len, kv_len): every layer at one query, the others at odd and cross lengths
    *((name, 1, None) for name in SPECS),
    ("causal", 7, None),
    ("causal", 5, 9),  # KV cache: queries at the last key positions
    ("bidirectional", 9, 5),  # more queries than keys
    ("causal_padding", 9, 5),
    ("bidirectional_padding", 6, 11),
    ("causal_padding_gqa", 13, None),
    ("bidirectional_gqa", 1, 12),
]


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize(("name", "q_len", "kv_len"), CASES)
def test_layer_matches_reference(name, q_len, kv_len, transform) -> None:
    error, *_ = layer_error(SPECS[name], {"bases": 3, "transform": transform}, q_len, kv_len)
    assert error <= TOL


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize(("name", "q_len"), [("causal", 200), ("bidirectional_padding", 100)])
def test_a_few_hundred_tokens_default_bases(name, q_len, transform) -> None:
    error, *_ = layer_error(SPECS[name], {"transform": transform}, q_len)
    assert error <= TOL


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("name", ["causal_padding", "bidirectional", "causal_padding_gqa"])
def test_k_at_least_n_is_exact_attention(name, transform) -> None:
    spec = SPECS[name]
    error, feeds, out = layer_error(spec, {"bases": 40, "transform": transform}, 21, 30)
    assert error <= TOL
    assert relative_error(reference(spec, "exact", None, feeds), out) <= TOL


@pytest.mark.parametrize(("name", "opset"), [("causal_padding", 20), ("bidirectional_gqa", 21)])
def test_opset_20_signature_of_dft(name, opset) -> None:
    for q_len, kv_len in ((11, None), (4, 13)):
        params = {"bases": 4, "probe": 3, "transform": "fft"}
        error, *_ = layer_error(SPECS[name], params, q_len, kv_len, opset)
        assert error <= TOL


def test_parameters_are_read_at_run_time() -> None:
    """One overload per transform serves every bases/probe value: only the transform (which
    builds a different graph) is baked into the function."""
    method = get_method("convbasis", {"bases": 5, "probe": 2})
    assert method.method.onnx.structural == ("transform",)
    assert get_method("convbasis").overload(_sig()) == method.overload(_sig())
    assert get_method("convbasis", {"transform": "fft"}).overload(_sig()) != method.overload(_sig())


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("name", SPECS)
def test_fitted_centre_body_matches_reference(name, transform) -> None:
    """The calibrated overload (the centres as the node's initializer) equals the reference
    with the same centres, which differ from the plain method by O(1) here; zero centres are
    the plain method."""
    spec = SPECS[name]
    params = {"bases": 6, "transform": transform}
    shape = (spec.heads, spec.head_dim)
    centres = (0.5 * np.random.default_rng(0).standard_normal(shape)).astype(np.float32)
    outputs = {}
    for label, center in (("fitted", centres), ("zeros", np.zeros(shape, np.float32))):
        proto, result = rewrite_layer(spec, "convbasis", params, fitted={"center": center})
        (block,) = result.rewritten
        assert block.fallback is None and block.overload.endswith("_fitted")
        runner = session(proto)
        outputs[label] = [
            runner.run(None, spec.inputs(2, q_len, kv_len, seed=q_len))[0]
            for q_len, kv_len in ((1, 1), (40, 33), (73, 101))
        ]
    tensor = torch.from_numpy(centres).double()
    for (q_len, kv_len), fitted, zeros in zip(
        ((1, 1), (40, 33), (73, 101)), outputs["fitted"], outputs["zeros"], strict=True
    ):
        feeds = spec.inputs(2, q_len, kv_len, seed=q_len)
        expected = reference(spec, "convbasis", {**params, "center": tensor}, feeds)
        plain = reference(spec, "convbasis", params, feeds)
        assert relative_error(expected, fitted) <= TOL, (q_len, kv_len)
        assert relative_error(plain, zeros) <= TOL, (q_len, kv_len)
    assert relative_error(plain, fitted) > 0.1


def test_blocks_it_cannot_honour_stay_exact() -> None:
    for spec in (LayerSpec(causal=False, mask="bias", **SMALL),):
        _, result = rewrite_layer(spec, "convbasis", {})
        (block,) = result.rewritten
        assert block.fallback and "per-query" in block.fallback
    with pytest.raises(AttnRewriteError, match="binary"):
        get_method("convbasis", {"recovery": "binary"})


# ------------------------------------------------------------------ direct calls of the function


def _sig(**kw) -> Signature:
    base = {
        "rank": 4,
        "dtype": ir.DataType.FLOAT,
        "bias": "none",
        "keywise": False,
        "causal": True,
        "window": False,
        "kv_repeat": False,
        "nan_guard": False,
        "float32_softmax": False,
        "head_dim": 16,
    }
    return Signature(**{**base, **kw})


def direct_model(sig: Signature, params: dict, attrs: dict, opset: int) -> onnx.ModelProto:
    """One node of the method calling its function, inputs named like the layer's."""
    method = get_method("convbasis", params)
    overload = method.overload(sig)
    function = build_function(
        method.op_type,
        sig,
        opset,
        method.attributes(),
        method.build,
        method.params,
        overload,
    )
    names = ["query", "key", "value"] + (["mask"] if sig.bias != "none" else [])
    dims = lambda name: ir.Shape([f"{name}{i}" for i in range(sig.rank)])  # noqa: E731
    types = {n: sig.dtype for n in names} | (
        {"mask": ir.DataType.BOOL} if sig.bias == "keep" else {}
    )
    inputs = [ir.Value(name=n, type=ir.TensorType(types[n]), shape=dims(n)) for n in names]
    values = {**attrs, **method.params}
    node = ir.Node(
        DOMAIN,
        method.op_type,
        inputs,
        attributes=[ir.convenience.convert_attribute(k, v) for k, v in values.items()],
        overload=overload,
        name="attention",
    )
    node.outputs[0].name = "output"
    node.outputs[0].type = ir.TensorType(sig.dtype)
    node.outputs[0].shape = dims("output")
    graph = ir.Graph(
        inputs,
        node.outputs,
        nodes=[node],
        opset_imports={"": opset, DOMAIN: DOMAIN_VERSION},
        name="attention",
    )
    model = ir.Model(graph, ir_version=10, functions=[function])
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def direct_outputs(
    sig: Signature,
    params: dict,
    *,
    sq: int,
    skv: int,
    heads=(4, 4),
    window: int | None = None,
    pad: int = 0,
    opset: int = 17,
) -> tuple[np.ndarray, np.ndarray]:
    """(float64 reference, onnxruntime output) of the function on random inputs."""
    gen = torch.Generator().manual_seed(sq * 31 + skv)
    batch, d = 2, 16
    q = torch.randn(batch, heads[0], sq, d, generator=gen)
    k = torch.randn(batch, heads[1], skv, d, generator=gen)
    v = torch.randn(batch, heads[1], skv, d, generator=gen)
    bias = None
    if sig.keywise:
        bias = torch.zeros(batch, 1, 1, skv)
        bias[-1, ..., skv - pad :] = torch.finfo(torch.float32).min
        bias[0, ..., :pad] = torch.finfo(torch.float32).min  # left padding too
    dtype = sig.dtype.numpy()
    tensors = {"query": q, "key": k, "value": v} | ({"mask": bias} if bias is not None else {})
    if sig.rank == 3:  # [B*H, S, d]; the mask [B*H, 1, Skv], one row per head
        tensors["mask"] = bias.expand(batch, heads[0], 1, skv) if bias is not None else None
        tensors = {n: t.reshape(-1, *t.shape[2:]) for n, t in tensors.items() if t is not None}
    feeds = {n: t.numpy().astype(dtype) for n, t in tensors.items()}
    if sig.bias == "keep":  # boolean, True = attend
        feeds["mask"] = feeds["mask"] == 0
    attrs = {"scale": d**-0.5, "is_causal": int(sig.causal), "window": window or 0}
    out = run_onnx(direct_model(sig, params, attrs, opset), feeds)
    shapes = {"query": q.shape, "key": k.shape, "value": v.shape, "mask": (batch, -1, 1, skv)}
    as4 = {n: torch.from_numpy(a.astype(np.float64)).reshape(shapes[n]) for n, a in feeds.items()}
    if "mask" in as4:  # finfo(float32).min hides a key, also once the reference runs in float64
        hidden = as4["mask"] <= torch.finfo(torch.float32).min / 2
        if sig.bias == "keep":
            hidden = as4["mask"] == 0
        as4["mask"] = torch.zeros_like(as4["mask"]).masked_fill(hidden, -torch.inf)
    ref = references.get("convbasis")(
        as4["query"],
        as4["key"],
        as4["value"],
        scale=d**-0.5,
        is_causal=sig.causal,
        bias=as4.get("mask"),
        window=window,
        **params,
    )
    return ref.numpy().reshape(out.shape), out


def direct_error(sig: Signature, params: dict, **kw) -> float:
    return relative_error(*direct_outputs(sig, params, **kw))


@pytest.mark.parametrize(
    ("keywise", "sq", "skv"), [(False, 1, 1), (False, 13, 13), (True, 6, 17), (True, 1, 9)]
)
def test_window(keywise, sq, skv) -> None:
    sig = _sig(window=True, keywise=keywise, bias="additive" if keywise else "none")
    for bases, transform in itertools.product((3, 16), TRANSFORMS):
        params = {"bases": bases, "transform": transform}
        error = direct_error(
            sig, params, sq=sq, skv=skv, window=4, pad=min(2, skv // 3) if keywise else 0
        )
        assert error <= TOL


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize(("causal", "bias"), [(True, "additive"), (False, "keep")])
def test_rank3_operands_and_boolean_masks(causal, bias, transform) -> None:
    sig = _sig(rank=3, causal=causal, keywise=True, bias=bias)
    params = {"bases": 4, "transform": transform}
    assert direct_error(sig, params, sq=10, skv=10, pad=3) <= TOL


def test_fp16_inputs_compute_in_fp32() -> None:
    sig = _sig(dtype=ir.DataType.FLOAT16, causal=False, kv_repeat=True)
    error = direct_error(sig, {"bases": 5}, sq=12, skv=15, heads=(4, 2), opset=20)
    assert error <= 2e-3  # fp16 output rounding


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_every_key_padded_gives_zeros(transform) -> None:
    sig = _sig(keywise=True, bias="additive", causal=False)
    ref, out = direct_outputs(sig, {"bases": 3, "transform": transform}, sq=4, skv=6, pad=6)
    assert not ref.any() and not out.any()


@pytest.mark.parametrize(("q_len", "kv_len"), [(40, None), (203, None), (5, 9)])
def test_exported_window_with_padding_reads_each_keys_own_row(q_len, kv_len) -> None:
    """The exported mask also holds the window, so its last row hides old keys: the padding
    of key j must be read where query j sees it."""
    spec = LayerSpec(mask="padding", window=5)
    assert body_error(spec, "convbasis", {"bases": 8}, q_len, kv_len) <= 1e-5


@pytest.mark.parametrize(("causal", "sq", "skv"), [(True, 37, 37), (True, 5, 41), (False, 23, 29)])
def test_direct_chunks_capped_by_their_entries(monkeypatch, causal, sq, skv) -> None:
    """Long sequences take more, narrower column chunks (each chunk's gathered kernel rows are
    bounded); with the narrowest chunks (MIN_CHUNK_COLUMNS) the sums are the same."""
    monkeypatch.setattr(convbasis_body, "DIRECT_CHUNK_ENTRIES", 2 * (sq + skv) + 1)
    sig = _sig(causal=causal, keywise=True, bias="additive")
    assert direct_error(sig, {"bases": 5}, sq=sq, skv=skv, pad=3) <= TOL


@pytest.mark.parametrize(
    ("name", "probe", "q_len", "kv_len"),
    [
        ("causal", 40, 150, None),  # more probes than a band block's columns
        ("causal_padding_gqa", 3, 70, 130),  # KV cache: the first columns gather their rows
        ("bidirectional_padding", 33, 97, 61),  # upper triangle: the band from distance 1
    ],
)
def test_probe_band_any_block(name, probe, q_len, kv_len) -> None:
    """The probes come from blocked products (`_Triangle.band`) whatever the probe count, the
    sequence's remainder after whole blocks, or the offset of the queries."""
    params = {"bases": 6, "probe": probe}
    feeds = SPECS[name].inputs(2, q_len, kv_len, seed=probe)
    out = layer_output(SPECS[name], "convbasis", params, feeds, 17)
    assert relative_error(reference(SPECS[name], "convbasis", params, feeds), out) <= TOL
