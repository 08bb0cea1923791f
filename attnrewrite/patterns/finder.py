"""Find every softmax attention in a model: anchor, walk, evaluate, describe.

1. Anchor on each Softmax (or decomposed softmax) and on each fused attention op, in the
   main graph, control-flow bodies and model-local functions.
2. Walk up to Q.K^T and down to .V (`scores`, `probs`), recover q, k, v (`operands`).
3. Evaluate, in one run per size, every scale factor and mask value the candidates need
   (`evaluate`), and classify the masks (`masks`).
4. Emit one `AttentionMatch` per block, or a `Refusal` carrying the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from attnrewrite import evaluate as ev
from attnrewrite.loading import default_opset
from attnrewrite.match import (
    AttentionMatch,
    Bias,
    FindResult,
    Layout,
    MaskKind,
    Operand,
    Refusal,
    ScoreStep,
)
from attnrewrite.patterns import fused, masks
from attnrewrite.patterns.graph_utils import all_graphs, numpy_dtype, rank_of, static_dim
from attnrewrite.patterns.operands import (
    Factor,
    is_scalar,
    key_operand,
    strip_scale,
    ungroup_kv,
    upstream_scale,
)
from attnrewrite.patterns.probs import walk_probs
from attnrewrite.patterns.scores import walk_scores
from attnrewrite.patterns.softmax import SoftmaxAnchor, softmax_anchor

SIZES = (6, 9)  # sequence lengths at which scales and masks are evaluated
BATCHES = (2, 1)


@dataclass(frozen=True)
class Candidate:
    """A structural match whose scale and mask still need evaluating."""

    anchor: SoftmaxAnchor
    graph_name: str
    q: Operand
    k: Operand
    v: Operand
    qk: ir.Node
    pv: ir.Node
    factors: tuple[Factor, ...]
    upstream: tuple[Factor, ...]
    steps: tuple[ScoreStep, ...]
    nodes: tuple[ir.Node, ...]
    variant: tuple[str, ...]
    nan_guard: bool
    float32_softmax: bool
    shape_readers: tuple[ir.Node, ...]


@dataclass
class Evaluations:
    """Values of main-graph tensors at each size in SIZES (None where not evaluable)."""

    model: ir.Model
    wanted: list[ir.Value] = field(default_factory=list)
    results: list[dict[int, np.ndarray]] = field(default_factory=list)
    error: str = ""

    def can_evaluate(self, value: ir.Value) -> bool:
        if ev.constant_of(value) is not None:
            return True
        owner = value.producer().graph if value.producer() is not None else value.graph
        return owner is self.model.graph

    def want(self, value: ir.Value) -> None:
        if ev.constant_of(value) is None and self.can_evaluate(value):
            self.wanted.append(value)

    def run(self) -> None:
        unique = list({id(v): v for v in self.wanted}.values())
        if not unique:
            return
        for batch in BATCHES:  # some exported graphs only run at batch 1
            try:
                runs = [ev.evaluate(self.model, unique, seq_len, batch) for seq_len in SIZES]
            except Exception as err:  # onnxruntime raises many types; all mean "not evaluable"
                self.error = str(err).splitlines()[0]
                continue
            self.results = [dict(zip(map(id, unique), r, strict=True)) for r in runs]
            return

    def values(self, value: ir.Value) -> list[np.ndarray] | None:
        """The value at each size, or None."""
        const = ev.constant_of(value)
        if const is not None:
            return [const] * len(SIZES)
        if not self.results or id(value) not in self.results[0]:
            return None
        return [r[id(value)] for r in self.results]


def find_attention(model: ir.Model) -> FindResult:
    opset = default_opset(model)
    candidates: list[Candidate] = []
    fused_matches: list[AttentionMatch] = []
    matches: list[AttentionMatch] = []
    refusals: list[Refusal] = []
    for graph_name, graph in all_graphs(model):
        for node in list(graph):
            fused_result = fused.match_fused(node, graph_name)
            if isinstance(fused_result, Refusal):
                refusals.append(fused_result)
                continue
            if isinstance(fused_result, AttentionMatch):
                fused_matches.append(fused_result)
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
    for match in fused_matches:
        if match.bias is not None and match.bias.value is not None:
            for value in (match.bias.value, match.q.value, match.k.value):
                evaluations.want(value)
    evaluations.run()
    matches.extend(_classify_fused(match, evaluations) for match in fused_matches)
    for candidate in candidates:
        done = _finalize(candidate, evaluations)
        (matches if isinstance(done, AttentionMatch) else refusals).append(done)
    return FindResult(tuple(matches), tuple(refusals))


def _structural(anchor: SoftmaxAnchor, graph_name: str) -> Candidate | str:
    chain = walk_scores(anchor.scores, anchor.nodes)
    if isinstance(chain, str):
        return chain
    probs = walk_probs(anchor.probs)
    if isinstance(probs, str):
        return probs
    q_value, q_factors = strip_scale(chain.qk.inputs[0])
    k_operand, k_factors, k_tag = key_operand(chain.qk.inputs[1])
    v_value = probs.pv.inputs[1]
    variant = ["softmax:decomposed" if anchor.decomposed else "softmax", k_tag]
    k_grouped, v_grouped = ungroup_kv(k_operand.value), ungroup_kv(v_value)
    if k_operand.layout == Layout.BHSD and k_grouped and v_grouped:
        k_operand = Operand(k_grouped[0], Layout.BHSD)
        v_value = v_grouped[0]
        variant.append("kv:repeat")
    upstream = upstream_scale(q_value)
    if q_factors:
        variant.append("scale:on-q")
    if upstream:
        variant.append("scale:upstream-q")
    if k_factors:
        variant.append("scale:on-k")
    if chain.float32_upcast:
        variant.append("softmax:float32-upcast")
    if probs.nan_guard:
        variant.append("probs:nan-guard")
    if any(n.op_type == "Dropout" for n in probs.nodes):
        variant.append("probs:dropout")
    if rank_of(chain.qk.outputs[0]) == 3:
        variant.append("batched-3d")
    nodes = (chain.qk, *(s.node for s in chain.steps), *anchor.nodes, *probs.nodes, probs.pv)
    return Candidate(
        anchor=anchor,
        graph_name=graph_name,
        q=Operand(q_value, Layout.BHSD),
        k=k_operand,
        v=Operand(v_value, Layout.BHSD),
        qk=chain.qk,
        pv=probs.pv,
        factors=tuple(q_factors + k_factors),
        upstream=tuple(upstream),
        steps=chain.steps,
        nodes=nodes,
        variant=tuple(variant),
        nan_guard=probs.nan_guard,
        float32_softmax=chain.float32_upcast,
        shape_readers=chain.shape_readers,
    )


def _split_steps(steps: Sequence[ScoreStep]) -> tuple[list[Factor], list[ScoreStep]]:
    """Scalar scale steps (factors), and the bias steps: everything from the first mask step."""
    factors: list[Factor] = []
    first_mask = len(steps)
    for i, step in enumerate(steps):
        node = step.node
        side = node.inputs[1 - step.score_input] if node.op_type in ("Mul", "Div") else None
        if side is not None and is_scalar(side):
            factors.append(Factor(side, node.op_type == "Div", node))
        elif node.op_type not in ("Cast", "Identity"):
            first_mask = min(first_mask, i)
    return factors, list(steps[first_mask:])


def _side_inputs(steps: Sequence[ScoreStep]) -> list[ir.Value]:
    return [
        value
        for step in steps
        for j, value in enumerate(step.node.inputs)
        if j != step.score_input and value is not None
    ]


def _request(candidate: Candidate, evaluations: Evaluations) -> None:
    chain_factors, bias_steps = _split_steps(candidate.steps)
    for operand in (candidate.q, candidate.v):
        if _dim(operand.value, -3, 4) is None or _dim(operand.value, -1, 4) is None:
            evaluations.want(operand.value)
    for factor in (*candidate.factors, *candidate.upstream, *chain_factors):
        evaluations.want(factor.value)
    if bias_steps:
        for value in _side_inputs(bias_steps):
            evaluations.want(value)
        evaluations.want(candidate.qk.outputs[0])


def _finalize(candidate: Candidate, evaluations: Evaluations) -> AttentionMatch | Refusal:
    chain_factors, bias_steps = _split_steps(candidate.steps)
    scale = 1.0
    runtime: list[tuple[ir.Value, bool]] = []
    sources: set[str] = set()
    for factor in (*candidate.factors, *chain_factors):
        values = evaluations.values(factor.value)
        if values is None or not all(np.array_equal(values[0], v) for v in values[1:]):
            runtime.append((factor.value, factor.divide))
            sources.add("runtime")
            continue
        number = float(np.ravel(values[0])[0])
        scale = scale / number if factor.divide else scale * number
        sources.add("constant" if ev.constant_of(factor.value) is not None else "computed")
    scale_source = "+".join(sorted(sources)) if sources else "none"
    upstream = _constant_product(candidate.upstream, evaluations)

    kind, window, bias = MaskKind.NONE, None, None
    if bias_steps:
        classified = _classify(candidate, bias_steps, evaluations)
        if isinstance(classified, str):
            return _refuse(candidate, classified)
        kind, window = classified
        if kind.needs_tensor:
            bias = _bias_source(bias_steps)
    variant = (*candidate.variant, *(f"mask:{s.node.op_type.lower()}" for s in bias_steps[:1]))
    if bias_steps and evaluations.values(candidate.qk.outputs[0]) is None:
        variant = (*variant, "mask:unclassified")
    q_value = candidate.q.value
    rank = rank_of(candidate.qk.outputs[0]) or rank_of(q_value) or 4
    return AttentionMatch(
        anchor=candidate.anchor.node.name or "",
        graph_name=candidate.graph_name,
        variant=variant,
        q=candidate.q,
        k=candidate.k,
        v=candidate.v,
        output=candidate.pv.outputs[0],
        nodes=candidate.nodes,
        scale=scale,
        scale_source=scale_source,
        upstream_scale=upstream,
        mask=kind,
        bias=bias,
        window=window,
        q_heads=_dim(q_value, -3, rank, evaluations),
        kv_heads=_dim(candidate.v.value, -3, rank, evaluations),
        head_dim=_dim(q_value, -1, rank, evaluations),
        q_len=static_dim(q_value, -2),
        kv_len=static_dim(candidate.v.value, -2),
        rank=rank,
        kv_repeat="kv:repeat" in candidate.variant,
        shape_readers=candidate.shape_readers,
        runtime_factors=tuple(runtime),
        nan_guard=candidate.nan_guard,
        float32_softmax=candidate.float32_softmax,
    )


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
        return Bias(value=step.node.inputs[1 - step.score_input])
    return Bias(steps=tuple(steps))


def _classify(
    candidate: Candidate, steps: Sequence[ScoreStep], evaluations: Evaluations
) -> tuple[MaskKind, int | None] | str:
    side_values = {}
    for i, step in enumerate(steps):
        for j, value in enumerate(step.node.inputs):
            if j != step.score_input and value is not None:
                side_values[(i, j)] = evaluations.values(value)
    scores = evaluations.values(candidate.qk.outputs[0])
    if scores is None or any(v is None for v in side_values.values()):
        return MaskKind.BIAS, None  # not evaluable (inside a Loop body): kept as a tensor
    for (i, j), values in side_values.items():
        node = steps[i].node
        if node.op_type == "Mul" and not all(np.isin(v, (0, 1)).all() for v in values):
            return f"scores are multiplied by '{node.inputs[j].name}', which is not a 0/1 mask"
    zero_dtype = numpy_dtype(steps[0].node.inputs[steps[0].score_input])
    kinds = set()
    for size in range(len(SIZES)):
        bias = masks.replay_on_zero(steps, lambda i, j, s=size: side_values[(i, j)][s], zero_dtype)
        q_len, kv_len = scores[size].shape[-2:]
        kinds.add(masks.classify(bias, q_len, kv_len))
    kind, window = kinds.pop() if len(kinds) == 1 else (MaskKind.BIAS, None)
    graph = evaluations.model.graph
    data = {
        key
        for key, values in side_values.items()
        if ev.constant_of(value := steps[key[0]].node.inputs[key[1]]) is None
        and ev.data_inputs(value, graph)
    }
    if data and kind in (MaskKind.BIAS, MaskKind.CAUSAL_BIAS):
        keywise = _keywise_data_part(steps, side_values, data, scores, zero_dtype)
        if keywise is not None:
            return masks.with_padding(keywise[0]), keywise[1]
    return _with_data_part(kind, bool(data)), window


def _keywise_data_part(
    steps: Sequence[ScoreStep],
    side_values: dict[tuple[int, int], list[np.ndarray]],
    data: set[tuple[int, int]],
    scores: list[np.ndarray],
    dtype: np.dtype,
) -> tuple[MaskKind, int | None] | None:
    """The structural kind when every data input of the mask has one query row ([B, 1, 1,
    Skv]: it can only weigh keys, whatever it holds) and the rest is causal/window/none."""
    for key in data:
        if any(v.ndim >= 2 and v.shape[-2] != 1 for v in side_values[key]):
            return None
    kinds = set()
    for size in range(len(SIZES)):

        def side(i: int, j: int, s: int = size) -> np.ndarray:
            values = side_values[(i, j)][s]
            return np.zeros_like(values) if (i, j) in data else values

        bias = masks.replay_on_zero(steps, side, dtype)
        kinds.add(masks.classify(bias, *scores[size].shape[-2:]))
    if len(kinds) != 1:
        return None
    kind, window = kinds.pop()
    structural = (MaskKind.NONE, MaskKind.CAUSAL, MaskKind.SLIDING_WINDOW)
    return (kind, window) if kind in structural else None


def _with_data_part(kind: MaskKind, data_dependent: bool) -> MaskKind:
    """The final kind once we know whether the mask reads a data input (an attention mask)."""
    if kind == MaskKind.FULLY_MASKED:  # ones hide every key: the input means True = pad
        return MaskKind.PADDING if data_dependent else MaskKind.BIAS
    return masks.with_padding(kind) if data_dependent else kind


def _classify_fused(match: AttentionMatch, evaluations: Evaluations) -> AttentionMatch:
    """A fused op's mask input, classified like any other; shape-only masks become flags."""
    if match.bias is None or match.bias.value is None:
        return match
    value = match.bias.value
    masks_at = evaluations.values(value)
    q_at, k_at = evaluations.values(match.q.value), evaluations.values(match.k.value)
    if masks_at is None or q_at is None or k_at is None:
        return replace(match, variant=(*match.variant, "mask:unclassified"))
    kinds = set()
    for mask, q, k in zip(masks_at, q_at, k_at, strict=True):
        additive = np.where(mask, 0.0, -np.inf) if match.bias.boolean_keep else mask
        kinds.add(masks.classify(additive, q.shape[-2], k.shape[-2]))
    kind, window = kinds.pop() if len(kinds) == 1 else (MaskKind.BIAS, None)
    if match.mask.is_causal and kind in (MaskKind.NONE, MaskKind.BIAS):
        kind = MaskKind.CAUSAL if kind == MaskKind.NONE else MaskKind.CAUSAL_BIAS
    data = ev.constant_of(value) is None and bool(ev.data_inputs(value, evaluations.model.graph))
    kind = _with_data_part(kind, data)
    bias = match.bias if kind.needs_tensor else None
    return replace(match, mask=kind, window=window, bias=bias)


def _refuse(candidate: Candidate, reason: str) -> Refusal:
    node = candidate.anchor.node
    return Refusal(node.name or "", node.op_type, candidate.graph_name, reason)
