"""com.microsoft attention ops (as onnxruntime's optimizers write them) under every method:
written out on load, found, rewritten; the rewritten model passes the checker and runs with
finite outputs, and exact reproduces onnxruntime's own kernels (the present KV outputs too).
A block a method cannot honour keeps exact attention, with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from attnrewrite.inputs import generate_inputs
from attnrewrite.loading import prepare_model
from attnrewrite.methods import METHODS
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import substitute
from tests.conftest import max_relative_error, run
from tests.corpus.handbuilt import all_cases

CORPUS = Path(__file__).parent / "corpus" / "exported"
CASES = {case.name: case for case in all_cases()}
FORMS = (
    "ms_attention_lengths_past",
    "ms_mha_bias_past_causal",
    "ms_groupqueryattention_past",
    "bert_eager_ts17_ortattention",
    "distilbert_eager_ts12_ortmha",
)
PARAMS = {
    "convbasis": {"bases": 4},
    "polysketch": {"block": 4},
    "multipole": {"block": 4},
    "verticalslash": {"vertical": 2, "slash": 3, "local": 2, "sinks": 1},
}


def _form(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    if name in CASES:
        return CASES[name].model, CASES[name].feeds(11)
    proto = onnx.load(str(CORPUS / f"{name}.onnx"))
    return proto, generate_inputs(ir.from_proto(proto), 11)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("form", FORMS)
def test_every_method_on_contrib_ops(form: str, method: str) -> None:
    proto, feeds = _form(form)
    chosen = get_method(method, PARAMS.get(method))
    model = prepare_model(proto, min_opset=chosen.min_opset)
    found = find_attention(model)
    assert found.matches and all(m.variant[0].startswith("com.microsoft:") for m in found.matches)
    result = substitute(model, found.matches, chosen)
    assert not result.failed
    assert all(r.fallback for r in result.rewritten if r.method.name != method)
    rewritten = ir.serde.serialize_model(model)
    onnx.checker.check_model(rewritten, full_check=True)
    assert not [
        n for n in rewritten.graph.node if n.domain == "com.microsoft" and "Attention" in n.op_type
    ]
    outputs = run(rewritten, feeds)
    assert all(np.isfinite(o).all() for o in outputs)
    if method == "exact":
        assert max_relative_error(run(proto, feeds), outputs) <= 1e-5
