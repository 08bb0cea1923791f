"""Load an ONNX model for rewriting, refusing what the tool cannot read with one clear line."""

from __future__ import annotations

import contextlib
from pathlib import Path

import google.protobuf.message
import onnx
import onnx.shape_inference
import onnx.version_converter
import onnx_ir as ir

from attnrewrite.errors import AttnRewriteError
from attnrewrite.repair import deserialize, repair
from attnrewrite.substitute.contrib import expand_contrib_attention

MIN_OPSET = 11  # oldest opset read; older models are converted to REWRITE_OPSET on load
REWRITE_OPSET = 13  # Softmax reduces over one axis from here on; bodies read attribute refs
MAX_OPSET = onnx.defs.onnx_opset_version()


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
    try:
        proto = onnx.load(str(path))
    except (google.protobuf.message.DecodeError, ValueError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AttnRewriteError(f"{path} is not a readable ONNX model ({reason})") from err
    return prepare_proto(proto, str(path), min_opset)


def prepare_proto(
    proto: onnx.ModelProto, label: str = "model", min_opset: int = REWRITE_OPSET
) -> onnx.ModelProto:
    """Check the opset (converting older ones to `min_opset`: a method body may need newer
    ops, e.g. DFT) and infer shapes so the finder knows ranks."""
    if proto.ir_version == 0 or not proto.graph.node:
        raise AttnRewriteError(f"{label} is not an ONNX model (no IR version or no graph nodes)")
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
