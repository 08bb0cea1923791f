"""Every method on the half-precision forms of the corpus: fp16 models as exported (scores
upcast to float32 for softmax, a float32 mask added there), and fp16 conversions of
exported models (onnxruntime's float16 converter). Each rewrite passes the checker and runs
with finite outputs; exact stays within fp16 rounding of the original."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnxruntime.transformers.float16 import convert_float_to_float16

from attnrewrite.inputs import generate_inputs
from attnrewrite.loading import prepare_model
from attnrewrite.methods import METHODS
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import substitute
from attnrewrite.verify import FP16_TOLERANCE
from tests.conftest import max_relative_error, run
from tests.corpus.handbuilt import all_cases

CORPUS = Path(__file__).parent / "corpus" / "exported"
EXPORTED_FP16 = ("hw_fp16_dynamo18", "hw_fp16_ts17", "hw_fp16_mask_dynamo18", "hw_fp16_mask_ts17")
CONVERTED = ("gpt2_eager_ts17", "hw_sdpa_float_bias_ts17")  # the latter: unsorted, repaired
CONVERTED_SLOW = ("bert_eager_dynamo18", "llama_sdpa_dynamo18", "t5_eager_dynamo18")
# parameters at which no method is exact at n = 11, so the approximation itself runs
PARAMS = {
    "exact": {},
    "convbasis": {"bases": 4},
    "polysketch": {"sketch_size": 8, "block": 4},
    "multipole": {"block": 4},
    "window": {"width": 4, "sinks": 1},
    "verticalslash": {"vertical": 2, "slash": 3, "last": 4, "sinks": 1, "local": 2},
}


@functools.cache
def _form(name: str) -> onnx.ModelProto:
    cases = {case.name: case for case in all_cases()}
    if name in cases:
        return cases[name].model
    if name in EXPORTED_FP16:
        return onnx.load(str(CORPUS / f"{name}.onnx"))
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    return convert_float_to_float16(onnx.load(str(CORPUS / f"{name}.onnx")), keep_io_types=True)


FORMS = (
    "fp16_cast_softmax",
    *EXPORTED_FP16,
    *CONVERTED,
    *(pytest.param(name, marks=pytest.mark.slow) for name in CONVERTED_SLOW),
)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("form", FORMS)
def test_every_method_on_fp16_forms(form: str, method: str) -> None:
    proto = _form(form)
    chosen = get_method(method, PARAMS[method])
    model = prepare_model(proto, min_opset=chosen.min_opset)
    found = find_attention(model)
    assert found.matches, [r.reason for r in found.refusals]
    result = substitute(model, found.matches, chosen)
    assert not result.failed
    rewritten = ir.serde.serialize_model(model)
    onnx.checker.check_model(rewritten, full_check=True)
    feeds = generate_inputs(ir.from_proto(proto), 11)
    outputs = run(rewritten, feeds)
    assert all(np.isfinite(o).all() for o in outputs)
    if method == "exact":
        assert max_relative_error(run(proto, feeds), outputs) <= FP16_TOLERANCE
