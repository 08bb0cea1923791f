"""Load an ONNX model for rewriting, refusing what the tool cannot read with one clear line.

The file is parsed and its external data read as protobuf (onnx's loader checks that every
location stays in the model's folder), then deserialized into onnx-ir, where the rest of
loading runs as passes: repairs, opset conversion, shape inference, contrib expansion.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import google.protobuf.message
import numpy as np
import onnx
import onnx.external_data_helper
import onnx.version_converter
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from attnrewrite.budget import array_bytes, check_bytes, size_text
from attnrewrite.errors import AttnRewriteError
from attnrewrite.graphs import all_graphs
from attnrewrite.repair import merge_constants, repair
from attnrewrite.substitute.contrib import MS_DOMAIN, RULES, expand_contrib_attention

MIN_OPSET = 11  # oldest opset read; older models are converted to REWRITE_OPSET on load
REWRITE_OPSET = 13  # Softmax reduces over one axis from here on; bodies read attribute refs
MAX_OPSET = onnx.defs.onnx_opset_version()
MAX_PROTO_BYTES = 2 << 30  # protobuf's limit for one message


def default_opset(model: ir.Model) -> int:
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if version is None:
        raise AttnRewriteError("model imports no default ONNX opset")
    return version


def load_model(path: Path, min_opset: int = REWRITE_OPSET) -> ir.Model:
    """Read and prepare the model file, refusing what is not a usable ONNX model."""
    return prepare_model(read_proto(path), str(path), min_opset)


def read_proto(path: Path) -> onnx.ModelProto:
    """The file as protobuf, its external data read in once its size is known to fit."""
    if not path.exists():
        raise AttnRewriteError(f"no such file: {path}")
    if not path.is_file():
        raise AttnRewriteError(f"not a file: {path}")
    if path.stat().st_size > MAX_PROTO_BYTES:
        raise AttnRewriteError(
            f"{path} is {size_text(path.stat().st_size)}: an ONNX protobuf is at most 2 GiB "
            "(larger weights live in external data files)"
        )
    try:
        proto = onnx.load(str(path), load_external_data=False)
        check_bytes(f"the external data of {path}", external_data_bytes(proto, path.parent))
        onnx.load_external_data_for_model(proto, str(path.parent))
    except (
        google.protobuf.message.DecodeError,
        onnx.checker.ValidationError,
        ValueError,
        OSError,
    ) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AttnRewriteError(f"{path} is not a readable ONNX model ({reason})") from err
    return proto


def external_data_bytes(proto: onnx.ModelProto, folder: Path) -> int:
    """What loading the external data would allocate: each tensor's length, or the rest of
    its file (onnx refuses locations outside `folder` and ranges past a file's end)."""
    total = 0
    for tensor in onnx.external_data_helper._get_all_tensors(proto):  # what onnx's loader reads
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        with contextlib.suppress(OSError, ValueError):
            offset = int(info.get("offset") or 0)
            rest = (folder / info.get("location", "")).stat().st_size - offset
            total += max(int(info["length"]) if "length" in info else rest, 0)
    return total


def _stored_tensors(model: ir.Model) -> Iterator[onnx.TensorProto]:
    """The protobuf of every tensor the file holds (initializers and attribute values, in
    subgraphs and functions too): onnx-ir reads it lazily, so its shape is unchecked."""
    tensors: list[ir.TensorProtocol | None] = [
        value.const_value for graph in model.graphs() for value in graph.initializers.values()
    ]
    for node in (node for _, graph in all_graphs(model) for node in graph):
        for attr in node.attributes.values():
            if isinstance(attr, ir.Attr) and attr.type == ir.AttributeType.TENSOR:
                tensors.append(attr.value)
            elif isinstance(attr, ir.Attr) and attr.type == ir.AttributeType.TENSORS:
                tensors.extend(attr.value)
    yield from (t.raw for t in tensors if isinstance(t, ir.serde.TensorProtoTensor))


_PACKED = {  # element types stored several to a byte: their raw sizes are not checked
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
    onnx.TensorProto.FLOAT4E2M1,
}
_COMPLEX = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
_STORED_TYPES = set(onnx.helper.get_all_tensor_dtypes()) - {onnx.TensorProto.UNDEFINED}


def check_tensor_sizes(model: ir.Model, label: str) -> None:
    """Refuse a tensor whose shape does not match the data it holds: shape inference and
    constant folding allocate what the shape declares (a dim of 2**40 on an 8-byte tensor
    took all the machine's memory)."""
    for tensor in _stored_tensors(model):
        dims = list(tensor.dims)
        held = _held(tensor)
        if any(d < 0 for d in dims) or (held is not None and held[0] != math.prod(dims)):
            holds = "" if held is None else f" but holds {held[1]}"
            raise AttnRewriteError(
                f"{label}: tensor {tensor.name or '(unnamed)'} declares shape {dims}{holds}"
            )


def check_value_shapes(model: ir.Model, label: str) -> None:
    """Refuse a graph input, output or value whose static dims alone exceed the memory
    budget: data propagation in shape inference allocates from them (a 1-D input of
    2**62 values took all the machine's memory)."""
    for graph in model.graphs():
        values = [*graph.inputs, *graph.outputs, *(v for node in graph for v in node.outputs)]
        for value in values:
            if not isinstance(value.type, ir.TensorType) or value.shape is None:
                continue
            dims = [d if isinstance(d, int) else 1 for d in value.shape]
            try:
                dtype = value.dtype.numpy()
            except (TypeError, ValueError):
                dtype = np.uint8
            name = f"{label}: value {value.name}"
            check_bytes(f"{name} of shape {dims}", array_bytes(name, dims, dtype))


def _held(tensor: onnx.TensorProto) -> tuple[int, str] | None:
    """How many values `tensor` holds and how to say it, or None where that is not checked
    here (external or segmented data, packed or unknown element types)."""
    kind = tensor.data_type
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.HasField("segment"):
        return None
    if kind == onnx.TensorProto.STRING:
        return len(tensor.string_data), str(len(tensor.string_data))
    if kind in _PACKED or kind not in _STORED_TYPES:
        return None
    if tensor.HasField("raw_data"):
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(kind)).itemsize
        whole, rest = divmod(len(tensor.raw_data), itemsize)
        if rest:
            return -1, f"{len(tensor.raw_data)} bytes, not a whole number of {itemsize}-byte values"
        return whole, str(whole)
    entries = len(getattr(tensor, onnx.helper.tensor_dtype_to_field(kind)))
    count = entries // 2 if kind in _COMPLEX else entries
    return count, str(count)


def prepare_model(
    proto: onnx.ModelProto, label: str = "model", min_opset: int = REWRITE_OPSET
) -> ir.Model:
    """The model in onnx-ir, checked, repaired, at opset `min_opset` or newer (a method
    body may need newer ops, e.g. DFT) and with shapes inferred so the finder knows ranks."""
    if proto.ir_version == 0 or not proto.graph.node:
        raise AttnRewriteError(f"{label} is not an ONNX model (no IR version or no graph nodes)")
    model = deserialize(merge_constants(proto, label), label)
    check_tensor_sizes(model, label)
    check_value_shapes(model, label)
    model = repair(model, label)
    opset = default_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise AttnRewriteError(
            f"{label} uses ONNX opset {opset}; supported opsets are {MIN_OPSET}-{MAX_OPSET}"
        )
    target = max(min_opset, REWRITE_OPSET)
    if opset < target:
        model = ConvertOpset(target, label)(model).model
    InferShapes()(model)
    if any(n.domain == MS_DOMAIN and n.op_type in RULES for n in model.graph):
        model = ExpandContribAttention()(model).model
    return model


def deserialize(proto: onnx.ModelProto, label: str = "model") -> ir.Model:
    """onnx-ir's model, or one line saying why it cannot read what is left."""
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as err:  # onnx-ir wraps what it meets in several types
        cause = err.__cause__ or err
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise AttnRewriteError(f"{label} is not a valid ONNX graph: {reason}") from None


class InferShapes(ir.passes.InPlacePass):
    """onnx-ir's shape inference, which infers on a copy without the weights. The finder copes
    with missing shapes: inference is a help, not a requirement (a failure changes nothing).

    The pass puts the initializers it left out back after the others: their order is kept,
    so the rewritten model is written as before."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        initializers = model.graph.initializers
        order = list(initializers.values())
        result = ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        if list(initializers.values()) != order:
            initializers.clear()
            for value in order:
                initializers.add(value)
        return ir.passes.PassResult(model, modified=result.modified)


class ConvertOpset(ir.passes.FunctionalPass):
    """onnx's version converter (onnx-ir has none), on the model as protobuf."""

    def __init__(self, target: int, label: str = "model") -> None:
        super().__init__()
        self.target, self.label = target, label

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        try:
            proto = onnx.version_converter.convert_version(ir.to_proto(model), self.target)
        except (RuntimeError, ValueError) as err:
            raise AttnRewriteError(
                f"{self.label} uses opset {default_opset(model)} and could not be converted to "
                f"opset {self.target}: {str(err).splitlines()[0]}"
            ) from err
        return ir.passes.PassResult(deserialize(proto, self.label), modified=True)


class ExpandContribAttention(ir.passes.FunctionalPass):
    """com.microsoft attention ops written out in standard ops (substitute.contrib, which
    works on protobuf), shapes inferred again for the values it gives."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        expanded = deserialize(expand_contrib_attention(ir.to_proto(model)))
        return ir.passes.PassResult(InferShapes()(expanded).model, modified=True)
