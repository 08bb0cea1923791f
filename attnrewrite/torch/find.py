"""Find softmax attention in an FX graph (torch.export), in the ONNX finder's vocabulary.

Rules, each small and declarative:

- fused:      aten.scaled_dot_product_attention and its flash / efficient / math / cpu-flash
              variants (SDPA_OPS: where each reads its mask, dropout, is_causal, scale);
- decomposed: matmul(q, k^T) -> [scale | soft-cap | add | sub | masked_fill | where | cast]*
              -> softmax -> [cast | inactive dropout]* -> matmul(., v): the ONNX finder's walk down
              (rules.probs), reshapes not followed;
- operands:   scale on q, k or k^T, K^T, grouped-query repeat: the ONNX finder's rules
              (rules.operands), read through the FX view (torch.view);
- scores:     the ONNX finder's walk from softmax to Q.K^T (rules.scores), the bias steps made
              replayable `Step`s (rules.replay: the table the ONNX finder replays too).

A structural match becomes an `FxCandidate` (the record the ONNX finder makes too, with what the
block needs); its mask kind is decided later, from what the mask computes on the example
inputs (rewrite.classify). Everything else is a `Refusal` with a reason.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import fx

from attnrewrite.match import Refusal
from attnrewrite.rules.candidate import Candidate, structure_variant
from attnrewrite.rules.operands import (
    Factor,
    Layout,
    attention_operands,
    constant_scalar,
    ungroup_kv,
    upstream_scale,
)
from attnrewrite.rules.probs import PASS_THROUGH, walk_probs
from attnrewrite.rules.replay import Step
from attnrewrite.rules.scores import RESHAPES, Link, score_path, split_steps
from attnrewrite.rules.softmax import decomposed_softmax
from attnrewrite.rules.variants import Variant
from attnrewrite.torch.view import FX, bound, const_scalar, op_name

aten = torch.ops.aten


@dataclass(frozen=True)
class Sdpa:
    """Where a fused SDPA op keeps its arguments (schema names) and its output."""

    mask: str | None = "attn_mask"
    gqa: str | None = None
    tuple_output: bool = True


SDPA_OPS: dict[object, Sdpa] = {
    aten.scaled_dot_product_attention.default: Sdpa(gqa="enable_gqa", tuple_output=False),
    aten._scaled_dot_product_flash_attention.default: Sdpa(mask=None),
    aten._scaled_dot_product_flash_attention_for_cpu.default: Sdpa(),
    aten._scaled_dot_product_efficient_attention.default: Sdpa(mask="attn_bias"),
    aten._scaled_dot_product_attention_math.default: Sdpa(gqa="enable_gqa"),
}
SOFTMAX_OPS = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}
FX_LAYOUTS = (Layout.BHSD, Layout.BHDS)  # K as the block takes it (bhds: it transposes K)
FX_THROUGH = PASS_THROUGH - RESHAPES  # the block computes in the scores' shape


@dataclass(frozen=True, kw_only=True)
class FxCandidate(Candidate[fx.Node, fx.Node]):
    """A structural match with what the block needs: the scale (constants only), the bias
    steps to replay and the tensors they read; the mask kind is settled on the example
    inputs (torch.rewrite)."""

    scale: float
    scale_source: str
    upstream_scale: float = 1.0  # a scalar already applied to q before its reshape (OPT)
    steps: tuple[Step, ...] = ()
    side: tuple[fx.Node, ...] = ()
    is_causal: bool = False
    softcap: float | None = None  # logit soft-cap c: scores c * tanh(s / c) before the mask


class NoMatch(Exception):
    """A rule's reason for not matching (becomes a Refusal)."""


def find(graph: fx.Graph) -> tuple[list[FxCandidate], list[Refusal]]:
    found: list[FxCandidate] = []
    refused: list[Refusal] = []
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        rule: Callable[[fx.Node], FxCandidate] | None = None
        if node.target in SDPA_OPS:
            rule = match_sdpa
        elif node.target in SOFTMAX_OPS:
            rule = match_decomposed
        elif FX.op(node) == "Div" and decomposed_softmax(FX, node) is not None:
            rule = match_inlined_softmax
        if rule is None:
            continue
        try:
            found.append(rule(node))
        except NoMatch as why:
            refused.append(Refusal(node.name, op_name(node), "main", str(why)))
    return found, refused


def shape(node: fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise NoMatch(f"no shape recorded for {node.name}")
    return tuple(val.shape)


def sole_user(node: fx.Node, what: str) -> fx.Node:
    us = FX.consumers(node)
    if len(us) != 1:
        raise NoMatch(f"{what} ({node.name}) has {len(us)} consumers; the rewrite would drop them")
    return us[0]


# --- fused SDPA ------------------------------------------------------------------------------


def match_sdpa(node: fx.Node) -> FxCandidate:
    """sdpa(q, repeat(k), repeat(v), mask, causal, scale) -> block(q, k, v, mask)."""
    spec = SDPA_OPS[node.target]
    args = bound(node)
    if args.get("dropout_p", 0.0):
        raise NoMatch(f"attention dropout p={args['dropout_p']} (no method implements dropout)")
    output = node
    nodes = [node]
    if spec.tuple_output:
        getters = FX.consumers(node)
        if any(u.target is not operator.getitem for u in getters):
            raise NoMatch("the op's output tuple is used as a whole")
        if any(u.args[1] != 0 and FX.consumers(u) for u in getters):
            raise NoMatch("uses the op's log-sum-exp or other secondary outputs")
        firsts = [u for u in getters if u.args[1] == 0]
        if len(firsts) != 1:
            raise NoMatch("the op's output is read more than once")
        output = firsts[0]
        nodes[:0] = getters
    q, k, v = args["query"], args["key"], args["value"]
    qs, ks = shape(q), shape(k)
    if len(qs) not in (3, 4) or len(ks) != len(qs):
        raise NoMatch(f"rank-{len(qs)} q: only [B, H, S, d] and [B*H, S, d] are handled")
    is_causal = bool(args.get("is_causal", False))
    if is_causal and qs[-2] != ks[-2]:
        raise NoMatch(
            f"SDPA is_causal with q length {qs[-2]} != kv length {ks[-2]} is top-left aligned;"
            " methods use bottom-right (KV-cache) alignment"
        )
    scale = args.get("scale")
    source = "attribute"
    if scale is None:
        scale, source = 1.0 / math.sqrt(qs[-1]), "default 1/sqrt(d)"
    mask = args.get(spec.mask) if spec.mask else None
    variant = [
        Variant.SDPA if node.target is aten.scaled_dot_product_attention.default else op_name(node)
    ]
    ungrouped = ungroup_kv(FX, k, v)
    if ungrouped is not None:
        k, v = ungrouped
        variant.append(Variant.KV_REPEAT)
    if spec.gqa and args.get(spec.gqa):
        variant.append(Variant.ENABLE_GQA)
    return FxCandidate(
        anchor=node,
        output=output,
        q=q,
        k=k,
        k_layout=Layout.BHSD,
        v=v,
        scale=float(scale),
        scale_source=source,
        steps=(Step("Mask", 0, (None, None)),) if isinstance(mask, fx.Node) else (),
        side=(mask,) if isinstance(mask, fx.Node) else (),
        is_causal=is_causal,
        kv_repeat=ungrouped is not None,
        float32_softmax=False,
        variant=tuple(variant),
        nodes=tuple(nodes),
    )


# --- decomposed matmul -> softmax -> matmul ----------------------------------------------------


def match_decomposed(softmax: fx.Node) -> FxCandidate:
    """matmul(q, k^T) -> score steps -> softmax -> casts, dropout -> matmul(., v)."""
    rank = len(shape(softmax))
    dim = softmax.args[1]
    if dim not in (-1, rank - 1):
        raise NoMatch(f"softmax over axis {dim}, not the last (key) axis")
    fp32 = softmax.target is aten.softmax.int and len(softmax.args) > 2 and bool(softmax.args[2])
    return _attention(softmax, softmax.args[0], (), fp32)


def match_inlined_softmax(div: fx.Node) -> FxCandidate:
    """The same with the softmax written out: exp(x - amax(x)) / sum(exp(...)) (rules.softmax)."""
    inlined = decomposed_softmax(FX, div)
    assert inlined is not None  # find() anchors here only when it matches
    return _attention(div, inlined.scores, inlined.values[:-1], False)


def _attention(
    softmax: fx.Node, scores: fx.Node, inside: tuple[object, ...], fp32: bool
) -> FxCandidate:
    """The block around a softmax (`inside`: the nodes of one written out, data-flow order)."""
    rank = len(shape(softmax))
    if rank not in (3, 4):
        raise NoMatch(f"rank-{rank} scores: only [B, H, S, S] and [B*H, S, S] are handled")
    probs = walk_probs(FX, softmax, FX_THROUGH)
    if isinstance(probs, str):
        raise NoMatch(probs)
    for node in probs.values:
        if node.target is aten.dropout.default and node.args[1] and node.args[2]:
            raise NoMatch(f"attention dropout p={node.args[1]} in training mode")
    down = [softmax, *probs.values]
    output, v = probs.pv, probs.pv.args[1]
    if len(shape(v)) != rank:
        raise NoMatch(f"probabilities of rank {rank} multiply a rank-{len(shape(v))} V")
    walked = walk_scores(scores)
    chain, matmul = walked.chain, walked.matmul
    found = attention_operands(FX, matmul.args[0], matmul.args[1], v, FX_LAYOUTS)
    q, key, k, v = found.q, found.key, found.key.value, found.v
    q_scale, k_scale = _product(found.q_factors), _product(key.factors)
    scales = (("q", q_scale), ("k", k_scale), ("scores", walked.scale))
    sources = [name for name, s in scales if s != 1.0]
    upstream = upstream_scale(FX, q)
    variant = structure_variant(
        FX,
        decomposed=bool(inside),  # the nodes of a softmax written out
        qk=matmul,
        scores=chain,
        probs=probs,
        operands=found,
        upstream=upstream,
        float32=fp32,
    )
    return FxCandidate(
        anchor=softmax,
        output=output,
        q=q,
        k=k,
        k_layout=key.layout,
        v=v,
        scale=walked.scale * q_scale * k_scale,
        scale_source="+".join(sources) or "none",
        upstream_scale=_product(upstream),
        steps=walked.steps,
        side=walked.side,
        softcap=walked.softcap,
        kv_repeat=found.kv_repeat,
        float32_softmax=fp32,
        variant=variant,
        nodes=(
            output,
            *reversed(down),
            *reversed(inside),
            *chain,
            matmul,
            *(f.product for f in found.q_factors),
            *key.through,
        ),
    )


def _product(factors: tuple[Factor, ...] | list[Factor]) -> float:
    """What constant scale factors multiply the scores by."""
    product = 1.0
    for factor in factors:
        number = constant_scalar(FX, factor.value)
        assert number is not None  # FxView counts only constants as scalars
        product = product / number if factor.divide else product * number
    return product


@dataclass(frozen=True)
class Scores:
    """The walk from a softmax input up to Q.K^T: the bias steps the block replays and the
    tensors they read, the nodes walked through (last first), the scale, the logit soft-cap
    and the Q.K^T matmul."""

    steps: tuple[Step, ...]
    side: tuple[fx.Node, ...]
    chain: list[fx.Node]
    scale: float
    softcap: float | None
    matmul: fx.Node


def walk_scores(node: fx.Node) -> Scores:
    """From the softmax input up to Q.K^T (rules.scores). The constant factors make the scale
    (a soft-cap's c among them, see rules.softcap); the steps from the first that reads a mask
    are what the block replays (rules.replay) on the side tensors."""
    path = score_path(FX, node)
    if isinstance(path, str):
        raise NoMatch(path)
    matmul, links = path
    for link in links:
        if link.value is not node:
            sole_user(link.value, "attention scores")
        if FX.op(link.value) in RESHAPES:  # the block computes in q's shape
            raise NoMatch(f"{FX.label(link.value)} between Q.K^T and softmax")
    split = split_steps(FX, links)
    if isinstance(split, str):
        raise NoMatch(split)
    steps: list[Step] = []
    side: list[fx.Node] = []
    for link in links[split.first :]:
        found = _step(link)
        if found is not None:
            steps.append(found[0])
            side.extend(found[1])
    chain = [link.value for link in reversed(links)]
    return Scores(tuple(steps), tuple(side), chain, _product(split.factors), split.softcap, matmul)


def _step(link: Link) -> tuple[Step, tuple[fx.Node, ...]] | None:
    """The replayable form of one bias step and the tensors it reads (None for a cast):

    Mul(s, c) | Mul(c, s) | Div(s, c)   -> the same, c a constant scalar
    Add(s, t) | Add(t, s) | Sub(s, t)   -> the same, t read by the block
    Where(m, s, c) | Where(m, c, s)     -> the same, m read by the block, c a constant scalar
    """
    node, at = link.value, link.score_input
    op, args = FX.op(node), FX.inputs(node)
    if op in ("Cast", "Identity"):
        return None
    other = args[1 - at] if op in ("Mul", "Div", "Add", "Sub") else args[3 - at]
    constants: list[float | None] = [None] * len(args)
    if op in ("Mul", "Div") and (c := const_scalar(other)) is not None:
        constants[1 - at] = c
        return Step(op, at, tuple(constants)), ()
    if op in ("Add", "Sub") and isinstance(other, fx.Node):
        return Step(op, at, tuple(constants)), (other,)
    if op == "Where" and isinstance(args[0], fx.Node) and (c := const_scalar(other)) is not None:
        constants[3 - at] = c
        return Step(op, at, tuple(constants)), (args[0],)
    raise NoMatch(f"{FX.label(node)} between Q.K^T and softmax")
