"""Load an ONNX model for rewriting, refusing what the tool cannot read with one clear line."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import google.protobuf.message
import numpy as np
import onnx
import onnx.shape_inference
import onnx.version_converter
import onnx_ir as ir

from attnrewrite.budget import array_bytes, check_bytes, size_text
from attnrewrite.errors import AttnRewriteError
from attnrewrite.protograph import graphs
from attnrewrite.repair import deserialize, repair
from attnrewrite.substitute.contrib import expand_contrib_attention

MIN_OPSET = 11  # oldest opset read; older models are converted to REWRITE_OPSET on load
REWRITE_OPSET = 13  # Softmax reduces over one axis from here on; bodies read attribute refs
MAX_OPSET = onnx.defs.onnx_opset_version()
MAX_PROTO_BYTES = 2 << 30  # protobuf's limit for one message


def default_opset(model: onnx.ModelProto | ir.Model) -> int:
    imports = (
        {o.domain: o.version for o in model.opset_import}
        if isinstance(model, onnx.ModelProto)
        else model.opset_imports
    )
    version = imports.get("", imports.get("ai.onnx"))
    if version is None:
        raise AttnRewriteError("model imports no default ONNX opset")
    return version


def load_proto(path: Path, min_opset: int = REWRITE_OPSET) -> onnx.ModelProto:
    """Read and prepare the model file, refusing what is not a usable ONNX model."""
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
    return prepare_proto(proto, str(path), min_opset)


def external_data_bytes(proto: onnx.ModelProto, folder: Path) -> int:
    """What loading the external data would allocate: each tensor's length, or the rest of
    its file (onnx refuses locations outside `folder` and ranges past a file's end)."""
    total = 0
    for tensor in _tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        with contextlib.suppress(OSError, ValueError):
            offset = int(info.get("offset") or 0)
            rest = (folder / info.get("location", "")).stat().st_size - offset
            total += max(int(info["length"]) if "length" in info else rest, 0)
    return total


def _tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a model holds: initializers and attribute values, in subgraphs and
    functions too."""
    nodes = [n for g in graphs(proto.graph) for n in g.node]
    nodes += [n for f in proto.functions for n in f.node]
    yield from (init for g in graphs(proto.graph) for init in g.initializer)
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


_PACKED = {  # element types stored several to a byte: their raw sizes are not checked
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
    onnx.TensorProto.FLOAT4E2M1,
}
_COMPLEX = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
_STORED_TYPES = set(onnx.helper.get_all_tensor_dtypes()) - {onnx.TensorProto.UNDEFINED}


def check_tensor_sizes(proto: onnx.ModelProto, label: str) -> None:
    """Refuse a tensor whose shape does not match the data it holds: shape inference and
    constant folding allocate what the shape declares (a dim of 2**40 on an 8-byte tensor
    took all the machine's memory)."""
    for tensor in _tensors(proto):
        dims = list(tensor.dims)
        held = _held(tensor)
        if any(d < 0 for d in dims) or (held is not None and held[0] != math.prod(dims)):
            holds = "" if held is None else f" but holds {held[1]}"
            raise AttnRewriteError(
                f"{label}: tensor {tensor.name or '(unnamed)'} declares shape {dims}{holds}"
            )


def check_value_shapes(proto: onnx.ModelProto, label: str) -> None:
    """Refuse a graph input, output or value whose static dims alone exceed the memory
    budget: data propagation in shape inference allocates from them (a 1-D input of
    2**62 values took all the machine's memory)."""
    for graph in graphs(proto.graph):
        for info in [*graph.input, *graph.output, *graph.value_info]:
            if not info.type.HasField("tensor_type"):
                continue
            tensor = info.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
            try:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            except KeyError:
                dtype = np.uint8
            name = f"{label}: value {info.name}"
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


def prepare_proto(
    proto: onnx.ModelProto, label: str = "model", min_opset: int = REWRITE_OPSET
) -> onnx.ModelProto:
    """Check the opset (converting older ones to `min_opset`: a method body may need newer
    ops, e.g. DFT) and infer shapes so the finder knows ranks."""
    if proto.ir_version == 0 or not proto.graph.node:
        raise AttnRewriteError(f"{label} is not an ONNX model (no IR version or no graph nodes)")
    check_tensor_sizes(proto, label)
    check_value_shapes(proto, label)
    proto = repair(proto, label)
    opset = default_opset(proto)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise AttnRewriteError(
            f"{label} uses ONNX opset {opset}; supported opsets are {MIN_OPSET}-{MAX_OPSET}"
        )
    target = max(min_opset, REWRITE_OPSET)
    if opset < target:
        try:
            proto = onnx.version_converter.convert_version(proto, target)
        except (RuntimeError, ValueError) as err:
            raise AttnRewriteError(
                f"{label} uses opset {opset} and could not be converted to opset "
                f"{target}: {str(err).splitlines()[0]}"
            ) from err
    proto = _infer_shapes(proto)
    expanded = expand_contrib_attention(proto)  # needs the ranks, and gives new values
    return proto if expanded is proto else _infer_shapes(expanded)


def _infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The finder copes with missing shapes: inference is a help, not a requirement."""
    with contextlib.suppress(onnx.shape_inference.InferenceError, ValueError):
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    return proto


def load_model(path: Path, min_opset: int = REWRITE_OPSET) -> ir.Model:
    return deserialize(load_proto(path, min_opset), str(path))
