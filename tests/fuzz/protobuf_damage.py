"""Protobuf-level damage: a seed model parsed and changed field by field, so that it still
parses but is wrong (a removed node, a rewired input, a cycle, odd versions, types and dims,
bad initializers, external data pointing anywhere)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import onnx
from onnx import TensorProto, helper

from tests.fuzz.cases import Case, command, write_files
from tests.fuzz.seeds import onnx_seeds

Files = dict[str, bytes | str]
Mutation = Callable[[random.Random, onnx.ModelProto, Files], str]

ODD_DIMS = (0, -1, -7, 1, 3, 2**31, 2**40, 2**62)
ODD_VERSIONS = (0, 1, 2, 3, 7, 9, 10, 11, 12, 13, 17, 21, 23, 24, 25, 99, -1, 2**40)


def graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield g
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graphs(attr.g)
            for sub in attr.graphs:
                yield from graphs(sub)


def _graph(rng: random.Random, model: onnx.ModelProto) -> onnx.GraphProto:
    return rng.choice([g for g in graphs(model.graph) if g.node] or [model.graph])


def _node(rng: random.Random, model: onnx.ModelProto) -> onnx.NodeProto:
    g = _graph(rng, model)
    if not g.node:
        g.node.add(op_type="Identity", input=["x"], output=["y"])
    return rng.choice(g.node)


def _names(model: onnx.ModelProto) -> list[str]:
    return sorted({o for g in graphs(model.graph) for n in g.node for o in n.output} | {""})


def remove_node(rng, model, files) -> str:
    g = _graph(rng, model)
    if not g.node:  # an earlier mutation of this case emptied the graph
        return "remove nothing (no node left)"
    node = g.node[rng.randrange(len(g.node))]
    g.node.remove(node)
    return f"remove {node.op_type}"


def rewire_input(rng, model, files) -> str:
    node = _node(rng, model)
    if not node.input:
        node.input.append("")
    at = rng.randrange(len(node.input))
    node.input[at] = rng.choice([*_names(model), "nowhere", node.output[0] if node.output else ""])
    return f"rewire {node.op_type} input {at}"


def duplicate_output(rng, model, files) -> str:
    node = _node(rng, model)
    if node.output:
        node.output[0] = rng.choice(_names(model))
    return f"{node.op_type} output renamed to an existing name"


def shuffle_nodes(rng, model, files) -> str:
    g = _graph(rng, model)
    nodes = list(g.node)
    rng.shuffle(nodes)
    del g.node[:]
    g.node.extend(nodes)
    return "nodes shuffled"


def cycle(rng, model, files) -> str:
    g = _graph(rng, model)
    if len(g.node) >= 2:
        first, later = sorted(rng.sample(range(len(g.node)), 2))
        if g.node[first].input and g.node[later].output:
            g.node[first].input[0] = g.node[later].output[0]
    return "cycle"


def odd_ir_version(rng, model, files) -> str:
    model.ir_version = rng.choice([0, 1, 2, 3, 6, 12, 99, 2**40])
    return f"ir_version {model.ir_version}"


def odd_opset(rng, model, files) -> str:
    version = rng.choice(ODD_VERSIONS)
    roll = rng.random()
    if roll < 0.6:
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = version
    elif roll < 0.8:
        del model.opset_import[:]
    else:
        model.opset_import.add(
            domain=rng.choice(["ai.onnx", "com.microsoft", "x"]), version=version
        )
    return f"opset {version}"


def _value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    g = model.graph
    return [*g.input, *g.output, *g.value_info]


def elem_type(rng, model, files) -> str:
    new = rng.choice([0, 1, 2, 6, 7, 9, 10, 11, 16, 17, 21, 23, 99])
    if rng.random() < 0.5 and _value_infos(model):
        value = rng.choice(_value_infos(model))
        value.type.tensor_type.elem_type = new
        return f"{value.name} elem_type {new}"
    if model.graph.initializer:
        init = rng.choice(model.graph.initializer)
        init.data_type = new
        return f"initializer {init.name} data_type {new}"
    return "nothing to retype"


def odd_dims(rng, model, files) -> str:
    values = _value_infos(model)
    if not values:
        return "no value infos"
    value = rng.choice(values)
    dims = value.type.tensor_type.shape.dim
    roll = rng.random()
    if roll < 0.7 and len(dims):
        dim = dims[rng.randrange(len(dims))]
        if rng.random() < 0.8:
            dim.dim_value = rng.choice(ODD_DIMS)
        else:
            dim.dim_param = rng.choice(["", "batch+past", "ä", "S" * 300, "0", "-1"])
    elif roll < 0.85:
        dims.add().dim_value = rng.choice(ODD_DIMS)
    else:
        value.type.tensor_type.ClearField("shape")
    return f"{value.name} dims changed"


def softmax_axis(rng, model, files) -> str:
    softmaxes = [n for g in graphs(model.graph) for n in g.node if n.op_type == "Softmax"]
    if not softmaxes:
        return "no Softmax"
    node = rng.choice(softmaxes)
    del node.attribute[:]
    roll = rng.random()
    if roll < 0.7:
        node.attribute.append(helper.make_attribute("axis", rng.choice([-9, -5, 4, 7, 2**40])))
    elif roll < 0.85:
        node.attribute.append(helper.make_attribute("axis", 1.5))
    else:
        node.attribute.append(helper.make_attribute("axis", "last"))
    return "Softmax axis"


def bad_initializer(rng, model, files) -> str:
    if not model.graph.initializer:
        return "no initializer"
    init = rng.choice(model.graph.initializer)
    roll = rng.random()
    if roll < 0.3 and init.raw_data:
        init.raw_data = init.raw_data[: rng.randrange(len(init.raw_data) + 1)]
    elif roll < 0.5:
        init.raw_data = init.raw_data + rng.randbytes(rng.choice([1, 3, 8]))
    elif roll < 0.7 and init.dims:
        init.dims[rng.randrange(len(init.dims))] = rng.choice(ODD_DIMS)
    elif roll < 0.85:
        init.ClearField("raw_data")
        init.float_data.extend([1.0, 2.0, 3.0])
    else:
        model.graph.initializer.remove(init)
    return f"initializer {init.name} damaged"


def external_data(rng, model, files) -> str:
    """Move an initializer's bytes to a data file: valid, or a location that escapes."""
    inits = [i for i in model.graph.initializer if i.raw_data]
    if not inits:
        return "no raw initializer"
    init = rng.choice(inits)
    data = init.raw_data
    init.ClearField("raw_data")
    init.data_location = TensorProto.EXTERNAL
    kind = rng.choice(
        ["valid", "absolute", "escaping", "missing", "empty", "symlink", "folder", "offset",
         "length", "self", "secret-name", "dotdot-inside"]
    )  # fmt: skip
    location, entries = "weights.bin", {}
    files["weights.bin"] = data
    if kind == "absolute":
        location = "{outside}/secret.bin"
    elif kind == "escaping":
        location = "../outside/secret.bin"
    elif kind == "missing":
        del files["weights.bin"]
    elif kind == "empty":
        files["weights.bin"] = b""
    elif kind == "symlink":
        files["weights.bin"] = "{outside}/secret.bin"
    elif kind == "folder":
        location = "."
    elif kind == "offset":
        entries = {"offset": str(rng.choice([len(data) * 4, 2**40, -5]))}
    elif kind == "length":
        entries = {"length": str(rng.choice([len(data) * 4, 2**40, 0]))}
    elif kind == "self":
        location = "model.onnx"
    elif kind == "dotdot-inside":
        location = "sub/../weights.bin"
    elif kind == "secret-name":
        location = "../outside/../outside/secret.bin"
    init.external_data.add(key="location", value=location)
    for key, value in entries.items():
        init.external_data.add(key=key, value=value)
    return f"external data {kind}"


def graph_io(rng, model, files) -> str:
    g = model.graph
    roll = rng.random()
    if roll < 0.3 and g.input:
        g.input.remove(rng.choice(g.input))
        return "graph input removed"
    if roll < 0.5 and g.input:
        g.input.append(rng.choice(g.input))
        return "graph input duplicated"
    if roll < 0.7:
        del g.output[:]
        return "no graph outputs"
    if roll < 0.85 and g.initializer:
        init = rng.choice(g.initializer)
        g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        return "initializer also a graph input"
    g.input.add(name="", type=onnx.TypeProto())
    return "untyped input"


def op_type(rng, model, files) -> str:
    node = _node(rng, model)
    roll = rng.random()
    if roll < 0.4:
        node.op_type = rng.choice(["Softmax", "MatMul", "Transpose", "Frobnicate", "Attention"])
    elif roll < 0.7:
        node.domain = rng.choice(["com.microsoft", "unknown.domain", "attnrewrite"])
    else:
        del node.attribute[:]
    return f"{node.name or node.op_type} op changed"


def odd_attribute(rng, model, files) -> str:
    node = _node(rng, model)
    name = rng.choice(["perm", "axis", "to", "axes", "allowzero", "keepdims", "num_heads"])
    value = rng.choice([[5, 1, 0, 2], -1, 2**40, 999, [0], 1.0, "x", []])
    if value == []:
        value = [0]
    node.attribute.append(helper.make_attribute(name, value))
    return f"{node.op_type} attribute {name}"


def constant_value(rng, model, files) -> str:
    constants = [n for g in graphs(model.graph) for n in g.node if n.op_type == "Constant"]
    inits = list(model.graph.initializer)
    target = None
    if constants and rng.random() < 0.5:
        node = rng.choice(constants)
        del node.attribute[:]
        target = TensorProto()
        node.attribute.append(helper.make_attribute("value", target))
        label = "Constant"
    elif inits:
        target = rng.choice(inits)
        label = f"initializer {target.name}"
    if target is None:
        return "no constant"
    target.ClearField("raw_data")
    del target.dims[:]
    target.dims.extend(rng.choice([[2**40], [2**20, 2**20], [-3], [0], [3, 0, 2]]))
    target.data_type = rng.choice([1, 7])
    target.raw_data = rng.randbytes(rng.choice([0, 8]))
    return f"{label} with odd dims"


def junk_metadata(rng, model, files) -> str:
    model.doc_string = "x" * rng.choice([0, 10, 100_000])
    model.metadata_props.add(key="k" * 10, value="\u2603" * 100)
    model.producer_name = "\x00\xff".encode("latin-1").decode("latin-1")
    return "metadata"


def function_damage(rng, model, files) -> str:
    if model.functions:
        fn = rng.choice(model.functions)
        if fn.node:
            fn.node.remove(rng.choice(fn.node))
        fn.domain = rng.choice([fn.domain, "", "other"])
        return "function damaged"
    model.functions.add(name="f", domain="local", input=["a"], output=["b"])
    return "empty function added"


MUTATIONS: tuple[Mutation, ...] = (
    remove_node,
    rewire_input,
    duplicate_output,
    shuffle_nodes,
    cycle,
    odd_ir_version,
    odd_opset,
    elem_type,
    odd_dims,
    softmax_axis,
    bad_initializer,
    external_data,
    graph_io,
    op_type,
    odd_attribute,
    constant_value,
    junk_metadata,
    function_damage,
)


def make(rng: random.Random) -> Case:
    name = rng.choice(sorted(onnx_seeds()))
    model = onnx.ModelProto.FromString(onnx_seeds()[name])
    files: Files = {}
    done = [rng.choice(MUTATIONS)(rng, model, files) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    setup = _writer(model, files)
    return Case("protobuf", f"{name}: {', '.join(done)}", setup, command(rng))


def _writer(model: onnx.ModelProto, files: Files):
    """Writes the model, with {outside} in external-data locations filled in, and `files`."""
    write_extra = write_files(files)

    def setup(box) -> None:
        filled = onnx.ModelProto()
        filled.CopyFrom(model)
        for init in filled.graph.initializer:
            for entry in init.external_data:
                entry.value = box.fill(entry.value)
        (box.model_dir / "model.onnx").write_bytes(filled.SerializeToString())
        write_extra(box)

    return setup
