"""Our converters for TVM's ONNX frontend, installed only while we import.

The frontend has no argument for custom converters: ``onnx_frontend._get_convert_map()`` builds
its op table on every use (the unsupported-op check and every conversion call it). ``installed``
wraps that function for the duration of one import and restores it afterwards, so TVM's own
table is untouched outside our imports and its converters for every other op are used as they
are. A converter is an ``OnnxOpConverter`` subclass: ``_impl_vN(bb, inputs, attr, params)``
returns the Relax expression of the node (``bb`` is the frontend's BlockBuilder, ``inputs`` its
converted inputs, constants as ``tvm.ir.GenericConst``).

``DFT`` (the frontend has none) becomes the complex four-step FFT of ``attnrewrite.lower.dft``
(``emit_dft``: two dense DFT matmuls and a twiddle, PrimFuncs that dlight and meta_schedule
schedule), in the input's dtype: the conv-basis body casts to float64 before its transforms,
which keeps the TVM build within 1e-4 of onnxruntime on the first causal rows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from attnrewrite.lower.dft import emit_dft
from attnrewrite.lower.errors import LowerError
from attnrewrite.lower.kernel import DTYPES


def _constant(value, what: str) -> np.ndarray:
    if not isinstance(value, tvm.ir.GenericConst):
        raise LowerError(f"DFT: the {what} must be a constant for a TVM build")
    return value.value.numpy()


def _static_shape(x) -> list[int]:
    shape = getattr(x.ty, "shape", None)
    values = getattr(shape, "values", None)
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise LowerError(
            f"DFT: the input shape must be static for a TVM build, got {shape}"
        ) from None


def convert_dft(bb, x, length, axis: int, inverse: bool, onesided: bool):
    """ONNX DFT of ``x`` [..., C] (C = 1 real, 2 complex) along ``axis`` -> [..., n, 2]."""
    shape = _static_shape(x)
    rank = len(shape)
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank - 1 or shape[-1] not in (1, 2):
        raise LowerError(f"DFT: axis {axis} of a [{shape}] input is not a signal axis")
    if onesided and inverse:
        raise LowerError("DFT: an inverse with onesided=1 has no TVM lowering")
    n = shape[axis] if length is None else int(_constant(length, "length").reshape(()))
    dtype = str(x.ty.dtype)
    if dtype not in DTYPES:
        raise LowerError(f"DFT: {dtype} input has no TVM lowering (float32, float64)")
    order = [d for d in range(rank - 1) if d != axis] + [axis, rank - 1]
    if order != list(range(rank)):
        x = bb.emit(relax.op.permute_dims(x, order))
    outer = [shape[d] for d in order[:-2]]
    rows = bb.emit(relax.op.reshape(x, [math.prod(outer), shape[axis], shape[-1]]))
    y = emit_dft(bb, rows, n, bool(inverse), dtype, "idft" if inverse else "dft")
    y = bb.emit(relax.op.reshape(y, [*outer, n, 2]))
    if order != list(range(rank)):
        y = bb.emit(relax.op.permute_dims(y, [order.index(d) for d in range(rank)]))
    if onesided:
        y = bb.emit(relax.op.strided_slice(y, [axis], [0], [n // 2 + 1]))
    return y


class DFT(onnx_frontend.OnnxOpConverter):
    """ONNX DFT: axis an attribute (opset 17) or an input (opset 20)."""

    @classmethod
    def _impl_v17(cls, bb, inputs, attr, params):
        length = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
        return convert_dft(
            bb,
            inputs[0],
            length,
            int(attr.get("axis", 1)),
            attr.get("inverse", 0),
            attr.get("onesided", 0),
        )

    @classmethod
    def _impl_v20(cls, bb, inputs, attr, params):
        length = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
        axis = -2 if len(inputs) < 3 or inputs[2] is None else int(_constant(inputs[2], "axis"))
        return convert_dft(
            bb, inputs[0], length, axis, attr.get("inverse", 0), attr.get("onesided", 0)
        )


CONVERTERS = {"DFT": DFT}


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """TVM's ONNX frontend with ``CONVERTERS`` added (ops it lacks) for the ``with`` block."""
    original = onnx_frontend._get_convert_map

    def extended():
        return {**original(), **CONVERTERS}

    onnx_frontend._get_convert_map = extended
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
