"""One attention node as a model of its own: the unit the planner times and measures.

    query, key, value[, mask][, fitted] -> MultipoleAttention{scale, is_causal, window, softcap,
                                                               params}
      -> output

The node and its function are what the rewrite writes into a model for a block of this
signature, so running this model on a block's captured operands gives what that block would
compute, and timing it gives what it would cost, without the rest of the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir

from attnrewrite.substitute.body import DOMAIN, DOMAIN_VERSION, build_function
from attnrewrite.substitute.methods import ResolvedMethod
from attnrewrite.substitute.signature import Signature

INPUTS = ("query", "key", "value", "mask")


def input_names(sig: Signature) -> list[str]:
    return list(INPUTS if sig.bias != "none" else INPUTS[:3])


def node_model(
    method: ResolvedMethod,
    sig: Signature,
    *,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
    opset: int = 18,
    mask_dtype: np.dtype | None = None,
) -> onnx.ModelProto:
    """A model of one `method` node over inputs query/key/value[/mask] of signature `sig`
    (dynamic shapes), then the calibrated variant's fitted arrays (float32 inputs named as
    they are, so one model serves every block); the mask's element type is `mask_dtype`, else
    bool for a keep-mask and the operands' type otherwise."""
    overload = method.overload(sig)
    fitted = list(method.fitted)
    function = build_function(
        method.op_type,
        sig,
        opset,
        method.attributes(),
        method.build,
        method.params,
        overload,
        fitted,
    )
    names = input_names(sig) + fitted
    attributes: dict[str, object] = {"scale": float(scale), "is_causal": int(sig.causal)}
    if window is not None:
        attributes["window"] = int(window)
    if softcap is not None:
        attributes["softcap"] = float(softcap)
    node = onnx.helper.make_node(
        method.op_type, names, ["output"], domain=DOMAIN, **attributes, **method.params
    )
    node.overload = overload
    operand = int(sig.dtype)
    types: Mapping[str, int] = {
        "mask": _mask_type(sig, mask_dtype),
        **dict.fromkeys(fitted, onnx.TensorProto.FLOAT),
    }
    graph = onnx.helper.make_graph(
        [node],
        method.op_type,
        [onnx.helper.make_tensor_value_info(n, types.get(n, operand), None) for n in names],
        [onnx.helper.make_tensor_value_info("output", operand, None)],
    )
    return onnx.helper.make_model(
        graph,
        opset_imports=[
            onnx.helper.make_opsetid("", opset),
            onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION),
        ],
        functions=[ir.serde.serialize_function(function)],
        ir_version=10,
    )


def _mask_type(sig: Signature, dtype: np.dtype | None) -> int:
    if dtype is not None:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return onnx.TensorProto.BOOL if sig.bias == "keep" else int(sig.dtype)
