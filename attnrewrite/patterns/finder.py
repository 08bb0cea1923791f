"""Find every softmax attention in a model: anchor, walk, evaluate, describe.

0. Name every node that has no name of its own (attnrewrite.graphs): matches address nodes
   by name.
1. Anchor on each Softmax (or decomposed softmax) and on each fused attention op, in the
   main graph, control-flow bodies and model-local functions.
2. Walk up to Q.K^T and down to .V (`scores`, `probs`), recover q, k, v (`operands`).
3. Evaluate, in one run per size, every scale factor and mask value the candidates need
   (`evaluate`), and classify the masks (`masks`).
4. Emit one `AttentionMatch` per block, or a `Refusal` carrying the reason.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx_ir as ir

from attnrewrite import evaluate as ev
from attnrewrite.graphs import Scope, all_graphs, name_nodes
from attnrewrite.loading import default_opset
from attnrewrite.match import (
    FUSED_FROM,
    RESHAPES,
    AttentionMatch,
    Bias,
    Bound,
    FindResult,
    Layout,
    MaskKind,
    Operand,
    Refusal,
)
from attnrewrite.patterns import fused, masks
from attnrewrite.patterns.evaluations import Evaluations, LongSample
from attnrewrite.patterns.graph_utils import (
    consumers,
    element_type,
    numpy_dtype,
    one_query_row,
    rank_of,
    static_dim,
)
from attnrewrite.patterns.probs import merged_heads
from attnrewrite.patterns.scores import ScoreStep, walk_scores
from attnrewrite.patterns.softmax import SoftmaxAnchor, softmax_anchor
from attnrewrite.patterns.view import ONNX
from attnrewrite.rules.candidate import Candidate, structure_variant
from attnrewrite.rules.operands import Factor, attention_operands, upstream_scale
from attnrewrite.rules.probs import walk_probs
from attnrewrite.rules.replay import Step
from attnrewrite.rules.scores import Link, split_steps
from attnrewrite.rules.variants import Variant, mask_tag


@dataclass(frozen=True, kw_only=True)
class OnnxCandidate(Candidate[ir.Value, ir.Node]):
    """A structural match whose scale and mask still need evaluating."""

    graph_name: str
    qk: ir.Node
    pv: ir.Node
    factors: tuple[Factor, ...]
    upstream: tuple[Factor, ...]
    steps: tuple[ScoreStep, ...]
    chain_factors: tuple[Factor, ...]  # scalar steps on the scores (a soft-cap's c among them)
    bias_steps: tuple[ScoreStep, ...]  # the steps from the first that reads a mask
    softcap: float | None
    nan_guard: bool
    shape_readers: tuple[ir.Node, ...]
    reshaped: tuple[ir.Value, ...]  # reshape outputs between Q.K^T and .V: keep the key axis
    output_layout: Layout


def find_attention(model: ir.Model) -> FindResult:
    """Every attention block of the model, and every Softmax or attention op that is not one,
    with the reason. Names the model's unnamed nodes (the only change it makes)."""
    name_nodes(model)
    opset = default_opset(model)
    candidates: list[OnnxCandidate] = []
    fused_matches: list[tuple[AttentionMatch, Bound]] = []
    matches: list[AttentionMatch] = []
    refusals: list[Refusal] = []
    for graph_name, graph in all_graphs(model):
        scope = None  # the graph's names, once a fused op needs its values
        for node in list(graph):
            fused_result = fused.match_fused(node, graph_name)
            if isinstance(fused_result, Refusal):
                refusals.append(fused_result)
                continue
            if isinstance(fused_result, AttentionMatch):
                scope = scope or Scope(graph)
                fused_matches.append((fused_result, fused_result.bind(scope)))
                continue
            anchor = softmax_anchor(node, opset)
            if anchor is None:
                continue
            found = anchor if isinstance(anchor, str) else _structural(anchor, graph_name)
            if isinstance(found, str):
                refusals.append(Refusal(node.name or "", node.op_type, graph_name, found))
            else:
                candidates.append(found)
    evaluations = Evaluations(model)
    for candidate in candidates:
        _request(candidate, evaluations)
    for _, bound in fused_matches:
        if bound.bias is not None:
            evaluations.want_mask([bound.bias])
            evaluations.want(bound.q)
            evaluations.want(bound.k)
    evaluations.run()
    matches.extend(_classify_fused(match, bound, evaluations) for match, bound in fused_matches)
    for candidate in candidates:
        done = _finalize(candidate, evaluations)
        (matches if isinstance(done, AttentionMatch) else refusals).append(done)
    return FindResult(tuple(matches), tuple(refusals))


def _structural(anchor: SoftmaxAnchor, graph_name: str) -> OnnxCandidate | str:
    chain = walk_scores(anchor.scores, anchor.nodes)
    if isinstance(chain, str):
        return chain
    links = [Link(step.node.outputs[0], step.score_input, step.cap) for step in chain.steps]
    split = split_steps(ONNX, links)
    if isinstance(split, str):
        return split
    probs = walk_probs(ONNX, anchor.probs)
    if isinstance(probs, str):
        return probs
    pv = probs.pv.producer()
    prob_nodes = tuple(value.producer() for value in probs.values)
    found = attention_operands(ONNX, chain.qk.inputs[0], chain.qk.inputs[1], pv.inputs[1])
    q_value, key = found.q, found.key
    upstream = upstream_scale(ONNX, q_value)
    variant = structure_variant(
        ONNX,
        decomposed=anchor.decomposed,
        qk=chain.qk.outputs[0],
        scores=[step.node.outputs[0] for step in chain.steps],
        probs=probs,
        operands=found,
        upstream=upstream,
        float32=chain.float32_upcast,
    )
    reshaped = (*chain.reshaped, *(n.outputs[0] for n in prob_nodes if n.op_type in RESHAPES))
    nodes = (chain.qk, *(s.node for s in chain.steps), *anchor.nodes, *prob_nodes, pv)
    output, output_layout = probs.pv, Layout.BHSD
    fused_from = anchor.node.metadata_props.get(FUSED_FROM)
    merged = merged_heads(pv) if fused_from else None
    if fused_from:  # written out on load from a com.microsoft op: its output is the block's
        variant = (fused_from, *variant)
    if merged:
        nodes, output, output_layout = (*nodes, *merged), merged[1].outputs[0], Layout.BS_HD
    steps = [step.node for step in chain.steps]
    for reader in chain.reshaped_readers:
        if _outlives(reader, nodes, steps):  # q and k cannot give it: it is not their shape
            return f"the shape of reshaped scores is read by '{reader.name}' outside the block"
    return OnnxCandidate(
        anchor=anchor.node,
        graph_name=graph_name,
        q=q_value,
        k=key.value,
        k_layout=key.layout,
        v=found.v,
        kv_repeat=found.kv_repeat,
        qk=chain.qk,
        pv=pv,
        factors=(*found.q_factors, *key.factors),
        upstream=tuple(upstream),
        steps=chain.steps,
        chain_factors=split.factors,
        bias_steps=chain.steps[split.first :],
        softcap=split.softcap,
        nodes=nodes,
        variant=variant,
        nan_guard=probs.nan_guard,
        float32_softmax=chain.float32_upcast,
        shape_readers=chain.shape_readers,
        reshaped=reshaped,
        output=output,
        output_layout=output_layout,
    )


def _side_inputs(steps: Sequence[ScoreStep]) -> list[ir.Value]:
    return [
        value
        for step in steps
        for j, value in enumerate(step.node.inputs)
        if j != step.score_input and value is not None
    ]


def _request(candidate: OnnxCandidate, evaluations: Evaluations) -> None:
    chain_factors, bias_steps = candidate.chain_factors, candidate.bias_steps
    for operand in (candidate.q, candidate.v):
        if _dim(operand, -3, 4) is None or _dim(operand, -1, 4) is None:
            evaluations.want(operand)
    for factor in (*candidate.factors, *candidate.upstream, *chain_factors):
        evaluations.want(factor.value)
    if bias_steps:
        evaluations.want_mask(_side_inputs(bias_steps))
    if bias_steps or _unproven_reshapes(candidate):
        evaluations.want(candidate.qk.outputs[0])
    for value in _unproven_reshapes(candidate):
        evaluations.want(value)


def _finalize(candidate: OnnxCandidate, evaluations: Evaluations) -> AttentionMatch | Refusal:
    reshape_problem = _reshape_problem(candidate, evaluations)
    if reshape_problem:
        return _refuse(candidate, reshape_problem)
    chain_factors, bias_steps = candidate.chain_factors, candidate.bias_steps
    scale = 1.0
    runtime: list[tuple[str, bool]] = []
    sources: set[str] = set()
    for factor in (*candidate.factors, *chain_factors):
        values = evaluations.values(factor.value)
        if values is None or not all(np.array_equal(values[0], v) for v in values[1:]):
            runtime.append((factor.value.name or "", factor.divide))
            sources.add("runtime")
            continue
        number = float(np.ravel(values[0])[0])
        scale = scale / number if factor.divide else scale * number
        sources.add("constant" if ev.constant_of(factor.value) is not None else "computed")
    scale_source = "+".join(sorted(sources)) if sources else "none"
    upstream = _constant_product(candidate.upstream, evaluations)

    kind, window, bias, checks = MaskKind.NONE, None, None, ()
    if bias_steps:
        classified = _classify(candidate, bias_steps, evaluations)
        if isinstance(classified, str):
            return _refuse(candidate, classified)
        kind, window, checks = classified
        if kind.needs_tensor:
            bias = _bias_source(bias_steps)
    variant = (*candidate.variant, *(mask_tag(s.node.op_type) for s in bias_steps[:1]))
    variant = (*variant, *checks)
    if bias_steps and evaluations.values(candidate.qk.outputs[0]) is None:
        variant = (*variant, Variant.MASK_UNCLASSIFIED)
    q_value = candidate.q
    rank = rank_of(candidate.qk.outputs[0]) or rank_of(q_value) or 4
    return AttentionMatch(
        anchor=candidate.anchor.name or "",
        graph_name=candidate.graph_name,
        variant=variant,
        q=Operand(candidate.q.name or ""),
        k=Operand(candidate.k.name or "", candidate.k_layout),
        v=Operand(candidate.v.name or ""),
        output=candidate.output.name or "",
        output_layout=candidate.output_layout,
        nodes=tuple(node.name or "" for node in candidate.nodes),
        scale=scale,
        scale_source=scale_source,
        upstream_scale=upstream,
        mask=kind,
        bias=bias,
        window=window,
        softcap=candidate.softcap,
        q_heads=_dim(q_value, -3, rank, evaluations),
        kv_heads=_dim(candidate.v, -3, rank, evaluations),
        head_dim=_dim(q_value, -1, rank, evaluations),
        q_len=static_dim(q_value, -2),
        kv_len=static_dim(candidate.v, -2),
        rank=rank,
        kv_repeat=candidate.kv_repeat,
        shape_readers=_still_read(candidate, bias_steps if bias is not None else ()),
        runtime_factors=tuple(runtime),
        nan_guard=candidate.nan_guard,
        float32_softmax=candidate.float32_softmax,
        causal_in_bias=bias is not None and kind.is_causal,  # the bias replays every step
        dtype=element_type(candidate.q, candidate.v),
    )


def _unproven_reshapes(candidate: OnnxCandidate) -> list[ir.Value]:
    """Reshape outputs whose key axis shape inference does not show to be the scores'."""
    if not candidate.reshaped:
        return []
    scores = candidate.qk.outputs[0]
    last = static_dim(scores, -1)
    unproven = [v for v in candidate.reshaped if last is None or static_dim(v, -1) != last]
    probs_in = candidate.pv.inputs[0]
    same = rank_of(probs_in) is not None and rank_of(probs_in) == rank_of(scores)
    if not same or any(
        static_dim(probs_in, axis) is None or static_dim(probs_in, axis) != static_dim(scores, axis)
        for axis in range(rank_of(scores) or 0)
    ):
        unproven.append(probs_in)
    return unproven


def _reshape_problem(candidate: OnnxCandidate, evaluations: Evaluations) -> str:
    """Why the reshapes between Q.K^T and .V are not mere regroupings of whole key rows
    (each keeps the key axis, and .V reads the probabilities in the scores' shape), or ""."""
    unproven = _unproven_reshapes(candidate)
    if not unproven:
        return ""
    scores = evaluations.values(candidate.qk.outputs[0])
    if scores is None:
        return "the scores are reshaped where the shapes cannot be evaluated"
    probs_in = candidate.pv.inputs[0]
    for value in unproven:
        evaluated = evaluations.values(value)
        if evaluated is None:
            return "the scores are reshaped where the shapes cannot be evaluated"
        for at, reference in zip(evaluated, scores, strict=True):
            if value is probs_in and at.shape != reference.shape:
                return f"the probabilities reach .V as {at.shape}, not in the scores' shape"
            if at.shape[-1:] != reference.shape[-1:]:
                return f"reshape to '{value.name}' does not keep the key axis"
    return ""


def _still_read(candidate: OnnxCandidate, kept: Sequence[ScoreStep]) -> tuple[str, ...]:
    """Shape readers of the scores whose result outlives the rewrite (a mask used elsewhere,
    or one the new node reads): they are re-routed to q and k. The others (a reshape target
    inside the block) go with the block."""
    return tuple(
        reader.name or ""
        for reader in candidate.shape_readers
        if _outlives(reader, candidate.nodes, [step.node for step in kept])
    )


def _outlives(reader: ir.Node, block: Sequence[ir.Node], kept: Sequence[ir.Node]) -> bool:
    """Whether what `reader` computes reaches a graph output or a `kept` node other than
    through the `block`'s nodes (which the rewrite removes)."""
    inside = {id(node) for node in block}
    kept_ids = {id(node) for node in kept}
    stack, seen = [reader], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for out in node.outputs:
            users = consumers(out)
            if out.is_graph_output() or any(id(u) in kept_ids for u in users):
                return True
            stack.extend(u for u in users if id(u) not in inside)
    return False


def _constant_product(factors: Sequence[Factor], evaluations: Evaluations) -> float:
    product = 1.0
    for factor in factors:
        values = evaluations.values(factor.value)
        if values is None:
            return 1.0  # not a constant: nothing reliable to report
        number = float(np.ravel(values[0])[0])
        product = product / number if factor.divide else product * number
    return product


def _dim(
    value: ir.Value, axis: int, rank: int, evaluations: Evaluations | None = None
) -> int | None:
    """A static head count or head size: from shape inference, else the same at every
    evaluated size (so not a batch or sequence axis). Rank-3 operands ([B*H, S, d]) only
    show their head size."""
    if rank != 4 and not (rank == 3 and axis == -1):
        return None
    dim = static_dim(value, axis)
    if isinstance(dim, int):
        return dim
    evaluated = evaluations.values(value) if evaluations is not None else None
    if evaluated is None or evaluated[0].ndim != rank:
        return None
    sizes = {int(a.shape[axis]) for a in evaluated}
    return sizes.pop() if len(sizes) == 1 else None


def _bias_source(steps: Sequence[ScoreStep]) -> Bias:
    """The bias as a value when the only step adds it; otherwise steps to replay on zero."""
    if len(steps) == 1 and steps[0].node.op_type == "Add":
        step = steps[0]
        value = step.node.inputs[1 - step.score_input]
        return Bias(value.name, one_row=one_query_row(value))
    return Bias(steps=tuple(masks.replayable(step) for step in steps))


def _classify(
    candidate: OnnxCandidate, steps: Sequence[ScoreStep], evaluations: Evaluations
) -> tuple[MaskKind, int | None, tuple[str, ...]] | str:
    """Kind, window and variant tags of the mask the steps add, or why it is no mask."""
    sides = {
        (i, j): value
        for i, step in enumerate(steps)
        for j, value in enumerate(step.node.inputs)
        if j != step.score_input and value is not None
    }
    side_values = {key: evaluations.values(value) for key, value in sides.items()}
    scores = candidate.qk.outputs[0]
    evaluated = evaluations.values(scores)
    if evaluated is None or any(v is None for v in side_values.values()):
        return MaskKind.BIAS, None, ()  # not evaluable (inside a Loop body): kept as a tensor
    shapes = [a.shape for a in evaluated]
    long = evaluations.at_length(list(sides.values()))
    long_shape = _long_shape(long, scores, evaluations)
    if long is not None and long_shape is not None:
        side_values = {
            key: [*values, at_long]
            for (key, values), at_long in zip(side_values.items(), long.values, strict=True)
        }
        shapes.append(long_shape)
    for (i, j), values in side_values.items():
        node = steps[i].node
        if node.op_type == "Mul" and not all(np.isin(v, (0, 1)).all() for v in values):
            return f"scores are multiplied by '{node.inputs[j].name}', which is not a 0/1 mask"
    zero_dtype = numpy_dtype(steps[0].node.inputs[steps[0].score_input])
    replayed = [masks.replayable(step) for step in steps]
    found = []
    for sample, shape in enumerate(shapes):
        side = functools.partial(_side_at, side_values, sample)
        bias = masks.replay_on_zero(replayed, side, zero_dtype, shape)
        found.append((*masks.classify(bias, *shape[-2:]), shape[-1]))
    kind, window = masks.merge(found)
    graph = evaluations.model.graph
    data = {
        key
        for key, value in sides.items()
        if ev.constant_of(value) is None and ev.data_inputs(value, graph)
    }
    keywise = None
    per_query = _per_query_data([sides[key] for key in data], graph)
    if data and not per_query and kind in (MaskKind.BIAS, MaskKind.CAUSAL_BIAS):
        keywise = _keywise_data_part(replayed, side_values, data, shapes, zero_dtype)
    if keywise is not None:
        kind, window = masks.with_padding(keywise[0]), keywise[1]
    else:
        kind, window = _with_data_part(kind, window, bool(data), per_query)
    return _unless_unchecked(kind, window, long, long_shape)


def _side_at(
    side_values: dict[tuple[int, int], list[np.ndarray]], sample: int, i: int, j: int
) -> np.ndarray:
    return side_values[(i, j)][sample]


def _long_shape(
    long: LongSample | None, value: ir.Value, evaluations: Evaluations
) -> tuple[int, ...] | None:
    if long is None or long.reason:
        return None
    return evaluations.shape_at(value, long.length)


def _unless_unchecked(
    kind: MaskKind, window: int | None, long: LongSample | None, long_shape: object
) -> tuple[MaskKind, int | None, tuple[str, ...]]:
    """The kind, or, when a window the mask may hold could not be looked for, the whole mask
    as a tensor: exact stays exact, and no method reads a window into it that is not there."""
    if long is None or long_shape is not None or kind not in UNCHECKED_AS:
        return kind, window, ()
    return UNCHECKED_AS[kind], None, (Variant.MASK_WINDOW_UNCHECKED,)


UNCHECKED_AS = {
    MaskKind.NONE: MaskKind.BIAS,
    MaskKind.PADDING: MaskKind.BIAS,
    MaskKind.CAUSAL: MaskKind.CAUSAL_BIAS,
    MaskKind.SLIDING_WINDOW: MaskKind.CAUSAL_BIAS,
    MaskKind.CAUSAL_PADDING: MaskKind.CAUSAL_BIAS,
}


def _keywise_data_part(
    steps: Sequence[Step],
    side_values: dict[tuple[int, int], list[np.ndarray]],
    data: set[tuple[int, int]],
    shapes: list[tuple[int, ...]],
    dtype: np.dtype,
) -> tuple[MaskKind, int | None] | None:
    """The structural kind when every data input of the mask has one query row ([B, 1, 1,
    Skv]: it can only weigh keys, whatever it holds) and the rest is causal/window/none."""
    for key in data:
        if any(v.ndim >= 2 and v.shape[-2] != 1 for v in side_values[key]):
            return None
    found = []
    for sample, shape in enumerate(shapes):

        def side(i: int, j: int, s: int = sample) -> np.ndarray:
            values = side_values[(i, j)][s]
            return np.zeros_like(values) if (i, j) in data else values

        bias = masks.replay_on_zero(steps, side, dtype, shape)
        found.append((*masks.classify(bias, *shape[-2:]), shape[-1]))
    kind, window = masks.merge(found)
    structural = (MaskKind.NONE, MaskKind.CAUSAL, MaskKind.SLIDING_WINDOW)
    return (kind, window) if kind in structural else None


def _with_data_part(
    kind: MaskKind, window: int | None, data_dependent: bool, per_query: bool = False
) -> tuple[MaskKind, int | None]:
    """The final kind once we know whether the mask reads a data input: an attention mask
    over keys is padding on top of what the mask computes when it is all ones; an input
    with a query axis ([B, S, T]) can hide anything, so the mask is a tensor."""
    if per_query:
        return (MaskKind.CAUSAL_BIAS if kind.is_causal else MaskKind.BIAS), None
    if kind == MaskKind.FULLY_MASKED:  # ones hide every key: the input means True = pad
        return (MaskKind.PADDING if data_dependent else MaskKind.BIAS), window
    return (masks.with_padding(kind) if data_dependent else kind), window


def _per_query_data(values: Sequence[ir.Value], graph: ir.Graph) -> bool:
    """Whether the data inputs the values read include one with a query axis: rank 3 or
    more, its next-to-last axis not 1 ([B, S, T] is, [B, 1, 1, T] is not)."""
    names = {name for value in values for name in ev.data_inputs(value, graph)}
    return any(
        v.name in names and v.shape is not None and len(v.shape) >= 3 and v.shape[-2] != 1
        for v in graph.inputs
    )


def _classify_fused(
    match: AttentionMatch, bound: Bound, evaluations: Evaluations
) -> AttentionMatch:
    """A fused op's mask input, classified like any other; shape-only masks become flags."""
    if match.bias is None or bound.bias is None:
        return match
    value = bound.bias
    masks_at = evaluations.values(value)
    q_at, k_at = evaluations.values(bound.q), evaluations.values(bound.k)
    if masks_at is None or q_at is None or k_at is None:
        return replace(match, variant=(*match.variant, Variant.MASK_UNCLASSIFIED))
    lengths = [(q.shape[-2], k.shape[-2]) for q, k in zip(q_at, k_at, strict=True)]
    long = evaluations.at_length([value])
    q_long = _long_shape(long, bound.q, evaluations)
    k_long = _long_shape(long, bound.k, evaluations)
    if long is not None and q_long is not None and k_long is not None:
        masks_at = [*masks_at, long.values[0]]
        lengths.append((q_long[-2], k_long[-2]))
    found = []
    for mask, (q_len, kv_len) in zip(masks_at, lengths, strict=True):
        additive = np.where(mask, 0.0, -np.inf) if match.bias.boolean_keep else mask
        found.append((*masks.classify(additive, q_len, kv_len), kv_len))
    kind, window = masks.merge(found)
    hides_future = kind.is_causal  # in the mask's own values, not only the op's flag
    if match.mask.is_causal and kind in (MaskKind.NONE, MaskKind.BIAS):
        kind = MaskKind.CAUSAL if kind == MaskKind.NONE else MaskKind.CAUSAL_BIAS
    graph = evaluations.model.graph
    data = ev.constant_of(value) is None and bool(ev.data_inputs(value, graph))
    kind, window = _with_data_part(kind, window, data, data and _per_query_data([value], graph))
    kind, window, checks = _unless_unchecked(kind, window, long, q_long and k_long)
    bias = match.bias if kind.needs_tensor else None
    return replace(
        match,
        mask=kind,
        window=window,
        bias=bias,
        variant=(*match.variant, *checks),
        causal_in_bias=bias is not None and hides_future and kind.is_causal,
    )


def _refuse(candidate: OnnxCandidate, reason: str) -> Refusal:
    node = candidate.anchor
    return Refusal(node.name or "", node.op_type, candidate.graph_name, reason)
