"""Shared fixtures: models are exact-rewritten in memory and run in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from attnrewrite.loading import prepare_model
from attnrewrite.match import FindResult
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import SubstituteResult, substitute
from attnrewrite.verify import difference


def find_and_rewrite(
    proto: onnx.ModelProto,
) -> tuple[FindResult, SubstituteResult, onnx.ModelProto]:
    model = prepare_model(proto)
    found = find_attention(model)
    result = substitute(model, found.matches, get_method("exact"))
    rewritten = ir.serde.serialize_model(model)
    onnx.checker.check_model(rewritten, full_check=True)
    return found, result, rewritten


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options)
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in wanted})


def max_relative_error(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    assert len(reference) == len(candidate)
    return max(
        difference(str(i), r, c).relative
        for i, (r, c) in enumerate(zip(reference, candidate, strict=True))
    )
