"""Apply matches: one `attnrewrite` node per attention, adapters for layouts, dead nodes out.

    before:  q -> Mul(s) -> MatMul(., Transpose(k)) -> Add(mask) -> Softmax -> MatMul(., v)
    after:   ExactAttention(q, k, v, mask) {scale=s}

The graph around each block is left as it was. A block whose rewrite fails is left
untouched (still exact) and reported; the others are still rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from attnrewrite.loading import default_opset
from attnrewrite.match import AttentionMatch, Bias, Layout, Operand
from attnrewrite.substitute.body import DOMAIN, DOMAIN_VERSION, build_function
from attnrewrite.substitute.methods import Method, get_method
from attnrewrite.substitute.signature import Signature

MIN_IR_VERSION = 10  # function overloads


@dataclass(frozen=True)
class Rewritten:
    match: AttentionMatch
    node: str
    overload: str
    output: str  # the block output's name, the same in the original and the rewritten model
    method: Method
    fallback: str | None = None  # why this block kept exact attention instead of the method


@dataclass(frozen=True)
class Failed:
    match: AttentionMatch
    reason: str


@dataclass(frozen=True)
class SubstituteResult:
    rewritten: tuple[Rewritten, ...]
    failed: tuple[Failed, ...]


def substitute(
    model: ir.Model, matches: Sequence[AttentionMatch], method: Method
) -> SubstituteResult:
    """Rewrite `model` in place. A block the method cannot honour (a mask it cannot carry,
    an opset without the ops it needs, a body that fails to build) gets exact attention, with
    the reason; a block that cannot be rewritten at all is left as it was and reported."""
    opset = default_opset(model)
    exact = get_method("exact")
    done: list[Rewritten] = []
    failed: list[Failed] = []
    for match in matches:
        reason = _limit(method, Signature.of(match), opset)
        if reason is None:
            try:
                done.append(_rewrite_one(model, match, method, opset))
                continue
            except (ValueError, TypeError, KeyError) as err:
                reason = f"{method.name} body failed: {err}"
        try:
            done.append(_rewrite_one(model, match, exact, opset, fallback=reason))
        except (ValueError, TypeError, KeyError) as err:
            failed.append(Failed(match, f"rewrite failed: {err}"))
    if done:
        model.opset_imports[DOMAIN] = DOMAIN_VERSION
        model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    return SubstituteResult(tuple(done), tuple(failed))


def _limit(method: Method, sig: Signature, opset: int) -> str | None:
    if method.name == "exact":
        return None
    if opset < method.body.min_opset:
        return f"{method.name} needs opset >= {method.body.min_opset}, the model has {opset}"
    return method.limit(sig)


def _rewrite_one(
    model: ir.Model,
    match: AttentionMatch,
    method: Method,
    opset: int,
    fallback: str | None = None,
) -> Rewritten:
    anchor = match.output.producer()
    first = match.nodes[0]
    if anchor is None or anchor.graph is None:
        raise ValueError(f"output '{match.output.name}' has no producer in a graph")
    graph = anchor.graph
    name = f"{match.anchor or match.output.name}/{method.op_type}"
    # q and k exist before Q.K^T: their adapters, and the shapes masks read, go there;
    # v and the bias may be computed later, so the rest goes just before the .V MatMul.
    early, late = ir.tape.Tape(), ir.tape.Tape()
    query = _to_canonical(early, match.q)
    for value, divide in match.runtime_factors:
        query = early.op("Div" if divide else "Mul", [query, value])
    key = _to_canonical(early, match.k)
    rerouted = [(r, _scores_shape(early, r, query, key)) for r in match.shape_readers]
    inputs = [query, key, _to_canonical(late, match.v)]
    if match.bias is not None:
        inputs.append(_bias_value(late, match.bias))
    signature = Signature.of(match)
    overload = _overload_for(model, match, method, signature)
    function_key = (DOMAIN, method.op_type, overload)
    if function_key not in model.functions:
        model.functions[function_key] = build_function(
            method.op_type,
            signature,
            opset,
            method.attributes(),
            method.body.build,
            method.params,
            overload,
        )
    attributes: dict[str, object] = {
        "scale": float(match.scale),
        "is_causal": int(match.mask.is_causal),
        **method.params,
    }
    if match.window is not None:
        attributes["window"] = int(match.window)
    out = late.op(
        method.op_type,
        inputs,
        attributes=attributes,
        domain=DOMAIN,
        overload=overload,
        name=name,
    )
    if match.output_layout == Layout.BS_HD:
        out = late.op("Transpose", [out], attributes={"perm": [0, 2, 1, 3]})
        out = late.op("Reshape", [out, _ints(late, [0, 0, -1])])
    if graph is not model.graph:  # a function body declares the domains it calls
        graph.opset_imports[DOMAIN] = DOMAIN_VERSION
    for tape, where, part in ((early, first, "in"), (late, anchor, "out")):
        _name_nodes(tape, f"{name}/{part}")
        graph.insert_before(where, tape.nodes)
    for reader, shape in rerouted:
        reader.outputs[0].replace_all_uses_with(shape, replace_graph_outputs=True)
    old_name = match.output.name
    match.output.name = f"{old_name}__replaced"
    match.output.replace_all_uses_with(out, replace_graph_outputs=True)
    out.name = old_name
    out.type, out.shape = match.output.type, match.output.shape  # graph outputs need a type
    _remove_dead(graph, (*match.nodes, *(reader for reader, _ in rerouted)))
    return Rewritten(match, name, overload, old_name or "", method, fallback)


def _overload_for(model: ir.Model, match: AttentionMatch, method: Method, sig: Signature) -> str:
    """The method's overload; "" inside functions, where onnxruntime resolves no overloads."""
    overload = method.overload(sig)
    if not match.graph_name.startswith("function "):
        return overload
    existing = model.functions.get((DOMAIN, method.op_type, ""))
    if existing is not None and existing.doc_string != overload:
        raise ValueError(
            f"a second attention variant ({overload}) inside a model-local function: "
            "onnxruntime resolves no function overloads there"
        )
    return ""


def _name_nodes(tape: ir.tape.Tape, prefix: str) -> None:
    for index, node in enumerate(tape.nodes):
        if node.name is None:
            node.name = f"{prefix}/{node.op_type}_{index}"
        for value in node.outputs:
            value.name = value.name or f"{node.name}_out"


def _ints(tape: ir.tape.Tape, values: list[int]) -> ir.Value:
    return tape.op("Constant", [], attributes={"value": ir.tensor(np.array(values, np.int64))})


def _to_canonical(tape: ir.tape.Tape, operand: Operand) -> ir.Value:
    """Adapter from the operand's layout to [..., heads, seq, dim]."""
    value = operand.value
    if operand.layout == Layout.BHSD:
        return value
    if operand.layout == Layout.BHDS:
        rank = len(value.shape) if value.shape is not None else 4
        return tape.op(
            "Transpose", [value], attributes={"perm": [*range(rank - 2), rank - 1, rank - 2]}
        )
    if operand.layout == Layout.BS_HD:
        if operand.heads is None:
            raise ValueError(f"'{value.name}' merges heads into hidden, head count unknown")
        value = tape.op("Reshape", [value, _ints(tape, [0, 0, operand.heads, -1])])
    return tape.op("Transpose", [value], attributes={"perm": [0, 2, 1, 3]})


def _scores_shape(tape: ir.tape.Tape, reader: ir.Node, query: ir.Value, key: ir.Value) -> ir.Value:
    """What `reader` (a Shape of the scores) computes, from q and k: [..., Sq] + [Skv]."""
    lead = tape.op("Slice", [tape.op("Shape", [query]), _ints(tape, [0]), _ints(tape, [-1])])
    kv_len = tape.op("Slice", [tape.op("Shape", [key]), _ints(tape, [-2]), _ints(tape, [-1])])
    shape = tape.op("Concat", [lead, kv_len], attributes={"axis": 0})
    start = reader.attributes.get("start")
    end = reader.attributes.get("end")
    if start is None and end is None:
        return shape
    bounds = [
        _ints(tape, [start.value if start else 0]),
        _ints(tape, [end.value if end else 2**62]),
    ]
    return tape.op("Slice", [shape, *bounds])


def _bias_value(tape: ir.tape.Tape, bias: Bias) -> ir.Value:
    """The bias tensor: as given, or the score steps replayed on a zero score."""
    if bias.value is not None:
        return bias.value
    first = bias.steps[0]
    score_in = first.node.inputs[first.score_input]
    dtype = (score_in.dtype or ir.DataType.FLOAT).numpy()
    current = tape.op("Constant", [], attributes={"value": ir.tensor(np.zeros((), dtype))})
    for step in bias.steps:
        inputs = list(step.node.inputs)
        inputs[step.score_input] = current
        current = tape.op(step.node.op_type, inputs, attributes=dict(step.node.attributes))
    return current


def _remove_dead(graph: ir.Graph | ir.Function, seeds: Sequence[ir.Node]) -> None:
    """Remove the seeds, and what fed only them, once nothing reads their outputs."""
    work = list(seeds)
    while work:
        node = work.pop()
        if node.graph is not graph:
            continue
        if any(out.uses() or out.is_graph_output() for out in node.outputs):
            continue
        producers = [v.producer() for v in node.inputs if v is not None and v.producer()]
        graph.remove(node, safe=True)
        work.extend(p for p in producers if p is not None)
