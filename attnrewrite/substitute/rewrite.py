"""Apply matches: one `attnrewrite` node per attention, adapters for layouts, dead nodes out.

    before:  q -> Mul(s) -> MatMul(., Transpose(k)) -> Add(mask) -> Softmax -> MatMul(., v)
    after:   ExactAttention(q, k, v, mask) {scale=s}

The graph around each block is left as it was. A block whose rewrite fails is left
untouched (still exact) and reported; the others are still rewritten.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from attnrewrite.graphs import Scope, scopes
from attnrewrite.loading import default_opset
from attnrewrite.match import AttentionMatch, Bias, Bound, Layout, Operand
from attnrewrite.substitute.body import DOMAIN, DOMAIN_VERSION, build_function
from attnrewrite.substitute.methods import ResolvedMethod, get_method
from attnrewrite.substitute.signature import Signature

MIN_IR_VERSION = 10  # function overloads


@dataclass(frozen=True)
class HeadGroup:
    """Heads of one block that share a method (a per-head plan splits a block into groups)."""

    method: ResolvedMethod
    heads: tuple[int, ...]


@dataclass(frozen=True)
class Rewritten:
    match: AttentionMatch
    node: str
    overload: str
    output: str  # the block output's name, the same in the original and the rewritten model
    method: ResolvedMethod
    fallback: str | None = None  # why this block kept exact attention instead of the method
    groups: tuple[HeadGroup, ...] = ()  # per-head plan: one node per group

    def describe(self) -> dict[str, object]:
        """The block as rewrite.json records it, and the report reads it: the match, the node
        written (a per-head plan's prefix: group_node_name), the method and its parameters."""
        return {
            **self.match.describe(),
            "node": self.node,
            "overload": self.overload,
            "method": self.method.name if not self.groups else "per-head plan",
            "params": self.method.params,
            **({"fallback": self.fallback} if self.fallback else {}),
            **({"heads": [_group(g) for g in self.groups]} if self.groups else {}),
        }


def _group(group: HeadGroup) -> dict[str, object]:
    return {"heads": list(group.heads), "method": group.method.name, "params": group.method.params}


@dataclass(frozen=True)
class Failed:
    match: AttentionMatch
    reason: str


@dataclass(frozen=True)
class SubstituteResult:
    rewritten: tuple[Rewritten, ...]
    failed: tuple[Failed, ...]


def substitute(
    model: ir.Model,
    matches: Sequence[AttentionMatch],
    method: ResolvedMethod,
    plans: Mapping[int, Sequence[HeadGroup]] | None = None,
) -> SubstituteResult:
    """Rewrite `model` in place. A block the method cannot honour (a mask it cannot carry,
    an opset without the ops it needs, a body that fails to build) gets exact attention, with
    the reason; a block that cannot be rewritten at all is left as it was and reported.
    `plans` (match index -> head groups) gives blocks a method per group of heads instead.
    The matches' names are looked up before any block is rewritten."""
    opset = default_opset(model)
    exact = get_method("exact")
    graphs = scopes(model)
    done: list[Rewritten] = []
    failed: list[Failed] = []
    for position, match in enumerate(matches):
        groups = (plans or {}).get(position)
        outcome = _rewrite_block(model, match, graphs, method, groups, exact, opset)
        (done if isinstance(outcome, Rewritten) else failed).append(outcome)
    if done:
        model.opset_imports[DOMAIN] = DOMAIN_VERSION
        model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    return SubstituteResult(tuple(done), tuple(failed))


def _rewrite_block(
    model: ir.Model,
    match: AttentionMatch,
    graphs: Mapping[str, Scope],
    method: ResolvedMethod,
    groups: Sequence[HeadGroup] | None,
    exact: ResolvedMethod,
    opset: int,
) -> Rewritten | Failed:
    """The method (or the per-head plan) where it can, exact with the reason where not."""
    try:
        bound = match.bind(graphs[match.graph_name])
    except KeyError:
        return Failed(match, f"rewrite failed: the model has no graph '{match.graph_name}'")
    except ValueError as err:
        return Failed(match, f"rewrite failed: {err}")
    sig = Signature.of(match)
    if groups and len(groups) == 1 and sorted(groups[0].heads) == list(range(match.q_heads or 0)):
        method, groups = groups[0].method, None  # one method for every head: one plain node
    try:
        if groups:
            safe = [
                g if _limit(g.method, sig, opset) is None else HeadGroup(exact, g.heads)
                for g in groups
            ]
            return _rewrite_one(model, match, bound, exact, opset, groups=safe)
        reason = _limit(method, sig, opset)
        if reason is None:
            return _rewrite_one(model, match, bound, method, opset)
    except (ValueError, TypeError, KeyError) as err:
        reason = f"{'per-head plan' if groups else method.name} failed: {err}"
    try:
        return _rewrite_one(model, match, bound, exact, opset, fallback=reason)
    except (ValueError, TypeError, KeyError) as err:
        return Failed(match, f"rewrite failed: {err}")


def _limit(method: ResolvedMethod, sig: Signature, opset: int) -> str | None:
    if method.name == "exact":
        return None
    if opset < method.min_opset:
        return f"{method.name} needs opset >= {method.min_opset}, the model has {opset}"
    return method.limit(sig)


def _rewrite_one(
    model: ir.Model,
    match: AttentionMatch,
    bound: Bound,
    method: ResolvedMethod,
    opset: int,
    fallback: str | None = None,
    groups: Sequence[HeadGroup] | None = None,
) -> Rewritten:
    anchor = bound.output.producer()
    first = bound.nodes[0]
    if anchor is None or anchor.graph is None:
        raise ValueError(f"output '{match.output}' has no producer in a graph")
    graph = anchor.graph
    name = f"{match.anchor or match.output}/{'HeadPlan' if groups else method.op_type}"
    # q and k exist before Q.K^T: their adapters, and the shapes masks read, go there;
    # v and the bias may be computed later, so the rest goes just before the .V MatMul.
    early, late = ir.tape.Tape(), ir.tape.Tape()
    query = _to_canonical(early, bound.q, match.q)
    for value, divide in bound.runtime_factors:
        query = early.op("Div" if divide else "Mul", [query, value])
    key = _to_canonical(early, bound.k, match.k)
    rerouted = [(r, _scores_shape(early, r, query, key)) for r in bound.shape_readers]
    inputs = [query, key, _to_canonical(late, bound.v, match.v)]
    if match.bias is not None:
        inputs.append(_bias_value(late, match.bias, bound, query, key))
    signature = Signature.of(match)
    if groups is None:
        out = _attention_node(late, model, match, method, signature, inputs, opset, name)
    else:
        out = _grouped(late, model, match, signature, inputs, groups, opset, name)
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
    replaced = bound.output
    replaced.name = f"{match.output}__replaced"
    replaced.replace_all_uses_with(out, replace_graph_outputs=True)
    out.name = match.output
    out.type, out.shape = replaced.type, replaced.shape  # graph outputs need a type
    _remove_dead(graph, (*bound.nodes, *(reader for reader, _ in rerouted)))
    overload = "+".join(sorted({n.overload for n in late.nodes if n.domain == DOMAIN}))
    return Rewritten(match, name, overload, match.output, method, fallback, tuple(groups or ()))


def _attention_node(
    tape: ir.tape.Tape,
    model: ir.Model,
    match: AttentionMatch,
    method: ResolvedMethod,
    signature: Signature,
    inputs: Sequence[ir.Value],
    opset: int,
    name: str,
) -> ir.Value:
    """One attnrewrite node computing `method` on canonical inputs (its function added once)."""
    overload = _overload_for(model, match, method, signature)
    function_key = (DOMAIN, method.op_type, overload)
    if function_key not in model.functions:
        model.functions[function_key] = build_function(
            method.op_type,
            signature,
            opset,
            method.attributes(),
            method.build,
            method.params,
            overload,
            tuple(method.fitted),
        )
    fitted = [_fitted_input(model, match, f"{name}/{k}", a) for k, a in method.fitted.items()]
    attributes: dict[str, object] = {
        "scale": float(match.scale),
        "is_causal": int(match.mask.is_causal),
        **method.params,
    }
    if match.window is not None:
        attributes["window"] = int(match.window)
    if match.softcap is not None:
        attributes["softcap"] = float(match.softcap)
    return tape.op(
        method.op_type,
        [*inputs, *fitted],
        attributes=attributes,
        domain=DOMAIN,
        overload=overload,
        name=name,
    )


def _grouped(
    tape: ir.tape.Tape,
    model: ir.Model,
    match: AttentionMatch,
    signature: Signature,
    inputs: Sequence[ir.Value],
    groups: Sequence[HeadGroup],
    opset: int,
    name: str,
) -> ir.Value:
    """Heads split into groups, one node per group, outputs put back in head order.

    Each group reads only its own heads: its query heads, and (GQA) the key and value heads
    they share, taken from the unrepeated k and v (a group of whole kv groups gets those kv
    heads once and repeats them in its node; any other group one copy per query head). A mask
    with heads of its own (ALiBi) is split the same way, one whose head axis is 1 is read
    whole by every group.
    """
    if match.rank != 4 or not match.q_heads:
        raise ValueError("per-head plans need rank-4 attention with a known head count")
    query, key, value, *mask = inputs
    per_kv = 1
    if match.kv_repeat:
        if not match.kv_heads or match.q_heads % match.kv_heads:
            raise ValueError("per-head plans of grouped-query attention need static head counts")
        per_kv = match.q_heads // match.kv_heads
    split_mask = False
    if mask:
        mask[0], split_mask = _group_mask(tape, mask[0], signature, match.q_heads)
        if signature.keywise:  # its last row alone no longer hides future keys
            signature = dataclasses.replace(signature, causal_in_bias=False)
    outputs, order = [], []
    for index, group in enumerate(groups):
        heads = list(group.heads)  # the order of any fitted rows the method holds
        kv_heads, repeat = _kv_heads(heads, per_kv)
        group_sig = dataclasses.replace(signature, kv_repeat=repeat)
        picked = [
            _heads(tape, query, heads),
            _heads(tape, key, kv_heads),
            _heads(tape, value, kv_heads),
        ]
        if mask and split_mask:
            picked.append(_heads(tape, mask[0], heads))
        elif mask:
            picked.append(mask[0])
        group_name = group_node_name(name, index)
        outputs.append(
            _attention_node(tape, model, match, group.method, group_sig, picked, opset, group_name)
        )
        order.extend(heads)
    joined = tape.op("Concat", outputs, attributes={"axis": 1})
    inverse = [order.index(h) for h in range(len(order))]
    if inverse == list(range(len(order))):
        return joined
    return tape.op("Gather", [joined, _ints(tape, inverse)], attributes={"axis": 1})


def _kv_heads(heads: Sequence[int], per_kv: int) -> tuple[list[int], bool]:
    """The kv heads a group of query heads reads, and whether its node repeats them: whole kv
    groups in order (the planner's groups are ascending) need each kv head once; otherwise
    one per query head."""
    if per_kv == 1:
        return list(heads), False
    whole = len(heads) % per_kv == 0 and all(
        heads[i : i + per_kv] == list(range(heads[i], heads[i] + per_kv)) and heads[i] % per_kv == 0
        for i in range(0, len(heads), per_kv)
    )
    if whole:
        return [h // per_kv for h in heads[::per_kv]], True
    return [h // per_kv for h in heads], False


def _heads(tape: ir.tape.Tape, x: ir.Value, heads: Sequence[int]) -> ir.Value:
    """x's heads (axis 1) `heads`: a Slice when they are a contiguous run, else a Gather."""
    first = heads[0]
    if list(heads) == list(range(first, first + len(heads))):
        bounds = [_ints(tape, [first]), _ints(tape, [first + len(heads)]), _ints(tape, [1])]
        return tape.op("Slice", [x, *bounds])
    return tape.op("Gather", [x, _ints(tape, list(heads))], attributes={"axis": 1})


def _fitted_input(model: ir.Model, match: AttentionMatch, name: str, array: np.ndarray) -> ir.Value:
    """A calibrated node's fitted array, as an initializer of the main graph (calibration
    captures main-graph blocks only)."""
    if match.graph_name != "main":
        raise ValueError("fitted parameters are written for main-graph blocks only")
    value = ir.Value(
        name=name,
        type=ir.TensorType(ir.DataType.FLOAT),
        shape=ir.Shape(array.shape),
        const_value=ir.tensor(array),
    )
    model.graph.register_initializer(value)
    return value


def group_node_name(prefix: str, index: int) -> str:
    """The node of a per-head plan's group `index`; rewrite.json records the `prefix`."""
    return f"{prefix}/heads{index}"


def _group_mask(
    tape: ir.tape.Tape, mask: ir.Value, signature: Signature, q_heads: int
) -> tuple[ir.Value, bool]:
    """The mask the group nodes read (its last query row only when it is key-wise: that row is
    all the bodies read), and whether it is split by head: a [B, 1, S, S] mask is read whole
    by every group, since expanding it to every head copied the whole score-sized mask per
    block (the largest cost of SmolLM2's plans at 2048: 0.8 s of 4.4 s); others get a head
    axis of q_heads."""
    shape = mask.shape  # the head axis, which the key-wise Slice below keeps
    if signature.keywise:
        mask = tape.op("Slice", [mask, _ints(tape, [-1]), _ints(tape, [2**62]), _ints(tape, [-2])])
    if shape is not None and len(shape) == 4 and shape[1] in (1, q_heads):
        return mask, shape[1] != 1
    return tape.op("Expand", [mask, _ints(tape, [1, q_heads, 1, 1])]), True


def _overload_for(
    model: ir.Model, match: AttentionMatch, method: ResolvedMethod, sig: Signature
) -> str:
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


def _to_canonical(tape: ir.tape.Tape, value: ir.Value, operand: Operand) -> ir.Value:
    """Adapter from the operand's layout to [..., heads, seq, dim]."""
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
    shape = _scores_dims(tape, query, key)
    start = reader.attributes.get("start")
    end = reader.attributes.get("end")
    if start is None and end is None:
        return shape
    bounds = [
        _ints(tape, [start.value if start else 0]),
        _ints(tape, [end.value if end else 2**62]),
    ]
    return tape.op("Slice", [shape, *bounds])


def _scores_dims(tape: ir.tape.Tape, query: ir.Value, key: ir.Value) -> ir.Value:
    """The shape of q @ k^T for canonical q, k: [..., Sq] + [Skv]."""
    lead = tape.op("Slice", [tape.op("Shape", [query]), _ints(tape, [0]), _ints(tape, [-1])])
    kv_len = tape.op("Slice", [tape.op("Shape", [key]), _ints(tape, [-2]), _ints(tape, [-1])])
    return tape.op("Concat", [lead, kv_len], attributes={"axis": 0})


def _bias_value(
    tape: ir.tape.Tape, bias: Bias, bound: Bound, query: ir.Value, key: ir.Value
) -> ir.Value:
    """The bias tensor: as given, or the score steps replayed on a zero score (on zeros in
    the scores' shape, and back to it, when the steps reshape the scores)."""
    if bound.bias is not None:
        return bound.bias
    score_in = bound.bias_steps[0].inputs[bias.steps[0].score_input]
    zero = ir.tensor(
        np.zeros(1 if bias.reshapes else (), (score_in.dtype or ir.DataType.FLOAT).numpy())
    )
    if bias.reshapes:
        shape = _scores_dims(tape, query, key)
        current = tape.op("ConstantOfShape", [shape], attributes={"value": zero})
    else:
        current = tape.op("Constant", [], attributes={"value": zero})
    for step, node in zip(bias.steps, bound.bias_steps, strict=True):
        inputs = list(node.inputs)
        inputs[step.score_input] = current
        current = tape.op(step.op, inputs, attributes=dict(node.attributes))
    return tape.op("Reshape", [current, shape]) if bias.reshapes else current


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


def kept_exact_note(fallbacks: Iterable[str | None]) -> str:
    """' (N kept exact: count x reason; ...)' for the summary line, '' when none was."""
    reasons = Counter(f for f in fallbacks if f is not None)
    if not reasons:
        return ""
    why = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common())
    return f" ({reasons.total()} kept exact: {why})"
