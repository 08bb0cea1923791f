"""Valid but unusual models and runs: deep chains, every seed with every method, old and new
opsets and IR versions, odd value names and dimension names, external data, float16 and
float64 graphs, sequence lengths of 1 and 2, and report inputs with masked or infinite rows."""

from __future__ import annotations

import io
import random

import numpy as np
import onnx
import onnx.version_converter

from tests.corpus.chain import chained_layers
from tests.fuzz.cases import METHODS, OUT, Case, command, pick, write_files
from tests.fuzz.seeds import onnx_seeds


def _case(label: str, files: dict[str, bytes | str], argv) -> Case:
    return Case("unusual", label, write_files(files), tuple(argv))


def deep_chain(rng: random.Random) -> Case:
    n = rng.choices([1, 4, 8, 16, 32, 64, 128, 1000], [8, 8, 8, 8, 8, 4, 2, 1])[0]
    model = chained_layers(n, seed=rng.randrange(1000)).SerializeToString()
    argv = ["{model}", "--method", *rng.choice(METHODS), *OUT]
    if rng.random() < 0.3:
        argv.append("--no-verify")
    return _case(f"chain of {n}", {"model.onnx": model}, argv)


def any_seed_any_method(rng: random.Random) -> Case:
    name = rng.choice(sorted(onnx_seeds()))
    return _case(f"{name}", {"model.onnx": onnx_seeds()[name]}, command(rng))


def other_opset(rng: random.Random) -> Case:
    name = rng.choice(sorted(onnx_seeds()))
    model = onnx.ModelProto.FromString(onnx_seeds()[name])
    version = rng.choice([11, 12, 13, 14, 17, 19, 21])
    try:
        model = onnx.version_converter.convert_version(model, version)
    except Exception:
        version = 0
    model.ir_version = rng.choice([model.ir_version, 7, 8, 9, 10])
    label = f"{name} at opset {version}, IR {model.ir_version}"
    return _case(label, {"model.onnx": model.SerializeToString()}, command(rng))


def renamed_values(rng: random.Random) -> Case:
    """Every value renamed: unicode, slashes, colons, spaces, very long names."""
    name = rng.choice(sorted(onnx_seeds()))
    model = onnx.ModelProto.FromString(onnx_seeds()[name])
    style = rng.choice(["unicode", "path", "long", "spaces", "numeric"])
    mapping: dict[str, str] = {}

    def rename(value: str) -> str:
        if not value:
            return value
        if value not in mapping:
            index = len(mapping)
            mapping[value] = {
                "unicode": f"välue☃{index}",
                "path": f"/model/layers.{index}/attn:0",
                "long": f"{'n' * 200}{index}",
                "spaces": f"value {index} here",
                "numeric": str(index),
            }[style]
        return mapping[value]

    g = model.graph
    for value in [*g.input, *g.output, *g.value_info]:
        value.name = rename(value.name)
    for init in g.initializer:
        init.name = rename(init.name)
    for node in g.node:
        node.input[:] = [rename(i) for i in node.input]
        node.output[:] = [rename(o) for o in node.output]
    return _case(f"{name} values renamed ({style})", {"model.onnx": model.SerializeToString()},
                 command(rng))  # fmt: skip


def dimension_names(rng: random.Random) -> Case:
    name = rng.choice(sorted(onnx_seeds()))
    model = onnx.ModelProto.FromString(onnx_seeds()[name])
    new = rng.choice(["batch", "sequence_length", "past_sequence_length + 1", "ä", "N", "1x"])
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = new
    label = f"{name} dims named {new!r}"
    return _case(label, {"model.onnx": model.SerializeToString()}, command(rng))


def external_weights(rng: random.Random) -> Case:
    name = rng.choice(sorted(onnx_seeds()))
    model = onnx.ModelProto.FromString(onnx_seeds()[name])
    buffer = bytearray()
    for init in model.graph.initializer:
        if init.raw_data and len(init.raw_data) > 64:
            init.external_data.add(key="location", value="weights.bin")
            init.external_data.add(key="offset", value=str(len(buffer)))
            init.external_data.add(key="length", value=str(len(init.raw_data)))
            buffer += init.raw_data
            init.ClearField("raw_data")
            init.data_location = onnx.TensorProto.EXTERNAL
    files = {"model.onnx": model.SerializeToString(), "weights.bin": bytes(buffer)}
    return _case(f"{name} with external weights", files, command(rng))


def short_sequences(rng: random.Random) -> Case:
    name = rng.choice(["gqa_expand", "legacy_gpt2_where", "rotary_qknorm", "sliding_window",
                       "bert_padding_sub_mul", "chain2", "llama_eager_ts17"])  # fmt: skip
    length = str(rng.choice([1, 2, 3]))
    argv = ["{model}", "--method", *rng.choice(METHODS), "--verify-seq-len", length, *OUT]
    if rng.random() < 0.5:
        argv += ["--report", "--seq-len", length, "--batch", rng.choice(["1", "2"]),
                 "--repeats", "1"]  # fmt: skip
    return _case(f"{name} at length {length}", {"model.onnx": onnx_seeds()[name]}, argv)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def extreme_report_inputs(rng: random.Random) -> Case:
    kind = rng.choice(["all-masked", "one-token", "large", "inf", "zeros"])
    if kind in ("all-masked", "one-token"):
        name = "bert_padding_sub_mul"
        mask = np.zeros((2, 6), dtype=np.int64)
        if kind == "one-token":
            mask[:, 0] = 1
        arrays = {"x": np.ones((2, 6, 32), np.float32), "attention_mask": mask}
    else:
        name = "gqa_expand"
        value = {"large": 1e30, "inf": np.inf, "zeros": 0.0}[kind]
        arrays = {"x": np.full((2, 6, 32), value, np.float32)}
    files = {"model.onnx": onnx_seeds()[name], "in.npz": _npz(arrays)}
    method = rng.choice(METHODS)
    argv = ["{model}", "--method", *method, "--report", "--inputs", "{dir}/in.npz",
            "--repeats", "1", *OUT]  # fmt: skip
    return _case(f"{name} report on {kind} inputs", files, argv)


def float_types(rng: random.Random) -> Case:
    name = rng.choice(["fp16_cast_softmax", "hw_fp16_dynamo18"])
    return _case(name, {"model.onnx": onnx_seeds()[name]}, command(rng))


SCENARIOS = (
    (deep_chain, 3),
    (any_seed_any_method, 6),
    (other_opset, 3),
    (renamed_values, 2),
    (dimension_names, 2),
    (external_weights, 2),
    (short_sequences, 2),
    (extreme_report_inputs, 2),
    (float_types, 1),
)


def make(rng: random.Random) -> Case:
    return pick(SCENARIOS, rng)
