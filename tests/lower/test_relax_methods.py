"""Conv-basis and multipole models built through Relax match onnxruntime on the same rewritten
model, at lengths where the methods approximate (so the outputs differ from exact attention);
our DFT converter and Loop unrolling against onnxruntime; conv-basis CUDA code for sm_80/sm_90."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tvm")

from attnrewrite.layers import LayerSpec, attention_layer
from attnrewrite.loading import prepare_model
from attnrewrite.lower import build, load
from attnrewrite.lower.errors import LowerError
from attnrewrite.lower.graph import UnrollLoops
from attnrewrite.lower.relax_import import compile_relax, prepare, to_relax
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import substitute
from tests.conftest import run
from tests.lower.nvcc import cuda_source, nvcc_compile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GPT2 = EXAMPLES / "tiny-gpt2.onnx"
TINY_LM = EXAMPLES / "tiny_lm" / "tiny-lm.onnx"
SEQ = 40  # > 2 x block 8 (a multipole far field) and > bases 4 (conv-basis approximates)


def rewrite(proto: onnx.ModelProto, method: str, params: dict) -> onnx.ModelProto:
    chosen = get_method(method, params)
    model = prepare_model(proto, min_opset=chosen.min_opset)
    result = substitute(model, find_attention(model).matches, chosen)
    assert result.rewritten and not any(block.fallback for block in result.rewritten)
    return ir.serde.serialize_model(model)


def feeds(batch: int, seq: int, mask: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {"input_ids": rng.integers(0, 90, (batch, seq))}
    if mask:
        out["attention_mask"] = np.ones((batch, seq), np.int64)
        out["attention_mask"][-1, :4] = 0
    return out


def relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def built(tmp_path_factory, proto: onnx.ModelProto, dims: dict[str, int]) -> Path:
    folder = tmp_path_factory.mktemp("model")
    onnx.save(proto, folder / "model.onnx")
    return build(folder / "model.onnx", "llvm", folder / "tvm", dims)


def assert_matches_and_approximates(artifact: Path, original: onnx.ModelProto, inputs: dict):
    """TVM matches onnxruntime on the rewritten model, which differs from the original (on
    the first sequence: the last one is left-padded, where the conventions for padded rows
    differ)."""
    got = load(artifact).run(inputs)[0]
    want = run(onnx.load(artifact.parent / "model.onnx"), inputs)[0]
    assert relative(got, want) <= 1e-4
    assert relative(want[0], run(original, inputs)[0][0]) > 5e-4


@pytest.fixture(scope="module")
def cli_convbasis(tmp_path_factory) -> Path:
    """`attnrewrite tiny-gpt2.onnx --method convbasis --bases 4 --target llvm`."""
    from attnrewrite.cli import main

    out = tmp_path_factory.mktemp("cli") / "out"
    args = [str(GPT2), "--method", "convbasis", "--bases", "4", "--target", "llvm"]
    assert main([*args, "--seq-len", str(SEQ), "--batch", "2", "-o", str(out)]) == 0
    return out


def test_convbasis_gpt2_from_the_command_line_matches_onnxruntime(cli_convbasis):
    import attnrewrite

    artifact = attnrewrite.load(cli_convbasis).folder  # OUTDIR/tvm-llvm-*, beside model.onnx
    assert artifact.parent == cli_convbasis
    assert_matches_and_approximates(artifact, onnx.load(GPT2), feeds(2, SEQ))


def test_a_loaded_library_runs_again_on_new_inputs(cli_convbasis):
    """Inputs go through buffers kept between runs: a second run sees its own inputs."""
    artifact = load(cli_convbasis)
    model = onnx.load(cli_convbasis / "model.onnx")
    first = feeds(2, SEQ)
    second = {**first, "input_ids": (first["input_ids"] * 7 + 3) % 90}
    for inputs in (first, second, first):
        assert relative(artifact.run(inputs)[0], run(model, inputs)[0]) <= 1e-4


def test_command_line_build_records_its_check_against_onnxruntime(cli_convbasis):
    """The CLI ran the library against onnxruntime on the rewritten model before reporting
    success, and kept the numbers beside the library."""
    import json

    (check_file,) = cli_convbasis.glob("tvm-*/check.json")
    check = json.loads(check_file.read_text())
    assert check["passed"] and 0 < check["max_relative_difference"] <= 1e-4
    assert [o["name"] for o in check["outputs"]] == ["logits"]
    assert check["tvm_ms"] > 0 and check["onnxruntime_ms"] > 0 and check["threads"] >= 1


def test_convbasis_trained_lm_matches_onnxruntime(tmp_path_factory):
    proto = rewrite(onnx.load(TINY_LM), "convbasis", {"bases": 4})
    artifact = built(tmp_path_factory, proto, {"batch": 1, "seq": SEQ})
    assert_matches_and_approximates(artifact, onnx.load(TINY_LM), feeds(1, SEQ, mask=False))


def test_multipole_layer_matches_onnxruntime(tmp_path_factory):
    spec = LayerSpec(heads=2, kv_heads=2, head_dim=8)
    layer = attention_layer(spec)
    proto = rewrite(layer, "multipole", {"block": 8})
    artifact = built(tmp_path_factory, proto, {"batch": 1, "q_len": SEQ, "kv_len": SEQ})
    assert_matches_and_approximates(artifact, layer, spec.inputs(1, SEQ))


def test_multipole_gpt2_without_far_field_matches_onnxruntime(tmp_path_factory):
    """At 12 <= 2 x block every key is in the near field: no far-field level, zero-extent
    summaries (what made relax.build fail), and exact attention."""
    proto = rewrite(onnx.load(GPT2), "multipole", {"block": 8})
    artifact = built(tmp_path_factory, proto, {"batch": 2, "seq": 12})
    inputs = feeds(2, 12)
    got = load(artifact).run(inputs)[0]
    want = run(onnx.load(artifact.parent / "model.onnx"), inputs)[0]
    assert relative(got, want) <= 1e-4
    assert relative(want[0], run(onnx.load(GPT2), inputs)[0][0]) < 1e-5


def dft_model(opset: int) -> onnx.ModelProto:
    """DFTs as the conv-basis body writes them and a few more: real and complex input,
    zero-padding, truncation, inverse, onesided, a signal axis that is not next to last."""
    f64 = TensorProto.DOUBLE
    nodes, outputs = [], []
    inits = [numpy_helper.from_array(np.array(n, np.int64), f"n{n}") for n in (64, 30)]

    def dft(x: str, length: str, axis: int, out: str, shape: list[int], **attrs) -> None:
        if opset >= 20:
            axis_name = f"axis_{out}"
            inits.append(numpy_helper.from_array(np.array(axis, np.int64), axis_name))
            nodes.append(helper.make_node("DFT", [x, length, axis_name], [out], **attrs))
        else:
            nodes.append(helper.make_node("DFT", [x, length], [out], axis=axis, **attrs))
        outputs.append(helper.make_tensor_value_info(out, f64, shape))

    dft("real", "n64", 2, "spec", [2, 3, 64, 2])
    dft("spec", "n64", 2, "back", [2, 3, 64, 2], inverse=1)
    dft("cplx", "n30", 1, "cut", [3, 30, 5, 2])  # along axis 1, truncated
    dft("real", "n64", 2, "half", [2, 3, 33, 2], onesided=1)
    inputs = [
        helper.make_tensor_value_info("real", f64, [2, 3, 40, 1]),
        helper.make_tensor_value_info("cplx", f64, [3, 40, 5, 2]),
    ]
    graph = helper.make_graph(nodes, "dft", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [17, 20])
def test_dft_converter_matches_onnxruntime(opset, tmp_path):
    model = dft_model(opset)
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(1)
    inputs = {
        "real": rng.standard_normal((2, 3, 40, 1)),
        "cplx": rng.standard_normal((3, 40, 5, 2)),
    }
    onnx.save(model, tmp_path / "dft.onnx")
    got = load(build(tmp_path / "dft.onnx", "llvm", tmp_path / "tvm", {})).run(inputs)
    want = run(model, inputs)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert relative(a, b) <= 1e-12


def test_dft_lowering_errors_are_one_line(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 8, 2])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)
    node = helper.make_node("DFT", ["x"], ["y"], axis=1, inverse=1, onesided=1)
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    with pytest.raises(LowerError, match=r"^DFT: an inverse with onesided=1 has no TVM lowering$"):
        to_relax(model)


def loop_model(condition_from_data: bool = False) -> onnx.ModelProto:
    """acc_{i+1} = acc_i * 0.5 + x[i] * w (x, w from the outer scope), 4 iterations."""
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    body_nodes = [
        helper.make_node("Gather", ["x", "it"], ["row"], axis=0),
        helper.make_node("Mul", ["row", "w"], ["term"]),
        helper.make_node("Mul", ["acc_in", "half"], ["decayed"]),
        helper.make_node("Add", ["decayed", "term"], ["acc_out"]),
        helper.make_node("Identity", ["cond_in"], ["cond_out"])
        if not condition_from_data
        else helper.make_node("Less", ["it", "three"], ["cond_out"]),
    ]
    body = helper.make_graph(
        body_nodes,
        "body",
        [
            helper.make_tensor_value_info("it", i64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", f32, [3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", f32, [3]),
        ],
        [
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(3, np.int64), "three"),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "go", "zeros"], ["acc"], name="sum", body=body)],
        "loop",
        [
            helper.make_tensor_value_info("x", f32, [4, 3]),
            helper.make_tensor_value_info("w", f32, [3]),
        ],
        [helper.make_tensor_value_info("acc", f32, [3])],
        [
            numpy_helper.from_array(np.array(4, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "go"),
            numpy_helper.from_array(np.zeros(3, np.float32), "zeros"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unrolled_loop_computes_the_same_numbers():
    model = loop_model()
    rng = np.random.default_rng(2)
    inputs = {"x": rng.standard_normal((4, 3), np.float32), "w": rng.standard_normal(3, np.float32)}
    want = run(model, inputs)[0]
    graph = ir.from_proto(model)
    assert UnrollLoops()(graph).modified
    unrolled = ir.to_proto(graph)
    onnx.checker.check_model(unrolled, full_check=True)
    assert "Loop" not in {n.op_type for n in unrolled.graph.node}
    expected = np.zeros(3, np.float32)
    for row in inputs["x"]:
        expected = expected * np.float32(0.5) + row * inputs["w"]
    assert np.array_equal(run(unrolled, inputs)[0], want)
    assert np.allclose(want, expected, rtol=1e-6)


def test_data_dependent_loop_is_a_lower_error():
    with pytest.raises(LowerError, match=r"^Loop 'sum': a data-dependent loop condition"):
        UnrollLoops()(ir.from_proto(loop_model(condition_from_data=True)))


CUDA_LAYER = LayerSpec(heads=2, kv_heads=2, head_dim=8)
CUDA_DIMS = {"batch": 1, "q_len": 24, "kv_len": 24}
CUDA_METHODS = {  # parameters at which each method approximates at n = 24
    "convbasis": {"bases": 4, "transform": "fft"},  # the formulation with FFT kernels
    "multipole": {"block": 8},
    "polysketch": {"block": 8},
}


@pytest.fixture(scope="module")
def cuda_layers(tmp_path_factory) -> dict[str, Path]:
    """A small causal layer rewritten with each method, saved once for the CUDA tests."""
    folder = tmp_path_factory.mktemp("cuda")
    out = {}
    for method, params in CUDA_METHODS.items():
        out[method] = folder / f"{method}.onnx"
        onnx.save(rewrite(attention_layer(CUDA_LAYER), method, params), out[method])
    return out


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("method", sorted(CUDA_METHODS))
def test_layer_cuda_code_compiles(cuda_layers, method, arch):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH")
    mod = to_relax(prepare(cuda_layers[method], CUDA_DIMS))
    executable = compile_relax(mod, f"cuda:{arch}")
    source = cuda_source(executable)
    assert "__global__" in source
    if method == "convbasis":
        # the converter's FFT stages are GPU kernels (the inverse shares the forward's later
        # stages: same shapes, its matrices are arguments)
        for stage in ("dft_dft1", "dft_twiddle", "dft_dft2", "idft_dft1"):
            assert f" {stage}_kernel(" in source
    (binary,) = nvcc_compile(executable, f"cuda:{arch}")
    assert len(binary) > 10_000


def has_gpu() -> bool:
    import tvm

    try:
        return bool(tvm.cuda().exist)
    except Exception:
        return False


@pytest.mark.skipif(not has_gpu(), reason="no CUDA GPU")
@pytest.mark.parametrize("method", sorted(CUDA_METHODS))
def test_layer_runs_on_the_gpu_and_matches_onnxruntime(cuda_layers, method, tmp_path):
    """The CUDA build of each rewritten layer, run on the GPU, against onnxruntime (CPU) on
    the same rewritten model."""
    artifact = build(cuda_layers[method], "cuda", tmp_path / "tvm", CUDA_DIMS)
    inputs = CUDA_LAYER.inputs(1, 24)
    got = load(artifact).run(inputs)[0]
    want = run(onnx.load(cuda_layers[method]), inputs)[0]
    assert relative(got, want) <= 1e-4
