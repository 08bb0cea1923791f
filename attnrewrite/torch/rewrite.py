"""Rewrite every softmax attention of a torch module into an attnrewrite method, trainably.

    trace (torch.export) -> find (FX rules) -> substitute (AttentionBlock submodules)
    -> probe (one run on the example inputs) -> classify masks -> try the method per block

The result is an nn.Module over the exported graph; its parameters are the original model's
(shared, not copied), so training it trains the model's weights.
"""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from onnx_ir.tensor_adapters import from_torch_dtype
from torch import Tensor, fx, nn

from attnrewrite import methods as references
from attnrewrite.errors import AttnRewriteError
from attnrewrite.match import AttentionMatch, Bias, Layout, MaskKind, Operand, Refusal
from attnrewrite.methods.exact import as_4d, bias_logits, positions_mask
from attnrewrite.patterns import masks
from attnrewrite.torch.block import AttentionBlock, fold_causal
from attnrewrite.torch.find import FxCandidate, find, shape
from attnrewrite.torch.trace import AUTO, ExampleInputs, split_inputs, trace
from attnrewrite.torch.view import IGNORED_USERS

GRAPH = "main"


@dataclass(frozen=True)
class FxAttention:
    """One rewritten attention: its match (the record the ONNX finder makes too, match.py,
    naming FX nodes), the block that replaced it and the method it runs."""

    match: AttentionMatch
    block: str
    is_causal: bool  # the block's own causal flag (a causal mask may be folded into it)
    method: str
    params: dict[str, object] = field(default_factory=dict)
    fallback: str | None = None

    def describe(self) -> dict[str, object]:
        """The keys of AttentionMatch.describe(), plus the block and the method it runs."""
        return {
            **self.match.describe(),
            "is_causal": self.is_causal,
            "block": self.block,
            "method": self.method,
            "params": dict(self.params),
            **({"fallback": self.fallback} if self.fallback else {}),
        }


class TorchRewrite(nn.Module):
    """The rewritten model: call it like the original (same arguments, same output structure).

    ``matches`` / ``refusals`` say what was rewritten and why other softmaxes were not. The
    train/eval flag does not reach the graph: dropout behaves as in the mode the model was
    traced in (trace in eval mode, as usual for fine-tuning with attention dropout off).
    """

    def __init__(
        self,
        graph_module: fx.GraphModule,
        matches: tuple[FxAttention, ...],
        refusals: tuple[Refusal, ...],
        method: str,
        params: dict[str, object],
        signature: inspect.Signature | None = None,
    ) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.signature = signature  # the original forward's: names the inputs of an export
        self.matches = matches
        self.refusals = refusals
        self.method = method
        self.params = params

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.graph_module(*args, **kwargs)

    def train(self, mode: bool = True) -> TorchRewrite:
        self.training = mode  # exported graphs refuse train(); their dropout mode is fixed
        return self

    def blocks(self) -> dict[str, AttentionBlock]:
        return {
            name: m
            for name, m in self.graph_module.named_children()
            if isinstance(m, AttentionBlock)
        }

    def report(self) -> dict[str, object]:
        """rewrite.json's shape: summary, every match, everything not rewritten."""
        matches = [m.describe() for m in self.matches]
        return {
            "method": {"name": self.method, "params": dict(self.params)},
            "summary": {
                "attention_blocks": len(self.matches),
                "rewritten": len(self.matches),
                "kept_exact": sum(m.fallback is not None for m in self.matches),
                "not_rewritten": len(self.refusals),
                "variants": dict(Counter("+".join(m.match.variant) for m in self.matches)),
                "masks": dict(Counter(m.match.mask.value for m in self.matches)),
            },
            "matches": matches,
            "not_rewritten": [r.describe() for r in self.refusals],
        }


def rewrite(
    model: nn.Module,
    example_inputs: Any = None,
    method: str = "exact",
    *,
    strict: bool | None = None,
    dynamic_shapes: Any = AUTO,
    **params: object,
) -> TorchRewrite:
    """Trace `model` on `example_inputs` (a dict of keyword arguments, a tuple of positional
    ones, or one tensor) and replace each softmax attention by `method` (parameters as in
    ``attnrewrite.methods``). A block whose mask the method cannot honour runs exact attention
    and says why (``matches[i].fallback``).

    ``dynamic_shapes`` (torch.export's): by default every axis of every tensor input is
    dynamic where the model allows (see trace.py), so the result runs at any sequence length
    and batch size; None traces the example's shapes only.

    Masks stay exact at any input: one computed from the inputs (padding) is always passed on
    as a tensor (folded to its key-wise part when causal); one computed from shapes alone is
    replaced by is_causal / window only when every shape is static (otherwise it is kept as
    a tensor too). Whether the method can run a block is decided on the example:
    a mask that is key-wise there but varies per query at another input makes a method without
    full-bias support raise ValueError at that call (loudly, never a silent approximation)."""
    try:
        resolved = references.get(method).resolve(params)
    except ValueError as err:
        raise AttnRewriteError(str(err)) from None
    if isinstance(model, torch.export.ExportedProgram):
        program = model
        if example_inputs is None and model.example_inputs is not None:
            example_inputs = ExampleInputs(*model.example_inputs)
        if example_inputs is None:
            raise AttnRewriteError("the ExportedProgram holds no example inputs: pass some")
    else:
        program = trace(model, example_inputs, strict, dynamic_shapes)
    gm = program.module()
    candidates, refusals = find(gm.graph)
    if not candidates:
        why = "; ".join(sorted({r.reason for r in refusals})[:2]) or "the graph has no softmax"
        raise AttnRewriteError(f"no softmax attention found in {type(model).__name__}: {why}")
    placed = [_substitute(gm, i, c) for i, c in enumerate(candidates)]
    gm.graph.lint()
    gm.recompile()
    records = _probe(gm, [(p.name, p.block) for p in placed], example_inputs)
    dynamic = bool(program.range_constraints)  # some input axis stayed symbolic
    matches = tuple(
        _settle(block, cand, rec, method, resolved, dynamic)
        for block, cand, rec in zip(placed, candidates, records, strict=True)
    )
    signature = None if isinstance(model, torch.export.ExportedProgram) else _signature(model)
    return TorchRewrite(gm, matches, tuple(refusals), method, resolved, signature)


def _signature(model: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Placed:
    """A block put in the graph, and what the report names of the nodes it replaced (read
    before they went)."""

    name: str
    block: AttentionBlock
    names: tuple[str, str, str, str, str]  # anchor, q, k, v, output
    nodes: tuple[str, ...]
    data_dependent: bool  # the mask reads the model's inputs


def _substitute(gm: fx.GraphModule, index: int, c: FxCandidate) -> Placed:
    """output = block(q, k, v, *side); the matched nodes go when nothing else reads them."""
    block = AttentionBlock(
        scale=c.scale,
        is_causal=c.is_causal,
        steps=c.steps,
        k_transposed=c.k_layout == Layout.BHDS,
        rank=len(shape(c.q)),
        softcap=c.softcap,
    )
    name = f"attnrewrite_{index}"
    gm.add_submodule(name, block)
    placed = Placed(
        name,
        block,
        (c.anchor.name, c.q.name, c.k.name, c.v.name, c.output.name),
        tuple(n.name for n in c.nodes),
        any(_reads_inputs(s) for s in c.side),
    )
    with gm.graph.inserting_before(c.output):
        call = gm.graph.call_module(name, (c.q, c.k, c.v, *c.side))
    call.meta["val"] = c.output.meta.get("val")
    c.output.replace_all_uses_with(call)
    for node in c.nodes:  # consumers first
        for user in list(node.users):
            if user.target in IGNORED_USERS:
                gm.graph.erase_node(user)
        if not node.users:
            gm.graph.erase_node(node)
    return placed


def _reads_inputs(node: fx.Node) -> bool:
    """Whether a value depends on the model's inputs (not only on shapes and weights)."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            return True
        if n.op == "call_function" and not isinstance(n.meta.get("val"), torch.Tensor):
            continue  # a size (sym_size of an input): shape, not content
        todo.extend(n.all_input_nodes)
    return False


def _probe(
    gm: fx.GraphModule, blocks: list[tuple[str, AttentionBlock]], example_inputs: Any
) -> list[tuple[Tensor, ...]]:
    """Run once on the example inputs (exact attention, raw masks), recording block inputs."""
    for _, block in blocks:
        block.probe = []
    args, kwargs = split_inputs(example_inputs)
    try:
        with torch.no_grad():
            gm(*args, **kwargs)
        records = []
        for name, block in blocks:
            if len(block.probe or []) != 1:
                raise AttnRewriteError(f"{name} ran {len(block.probe or [])} times on one call")
            records.append(block.probe[0])
    finally:
        for _, block in blocks:
            block.probe = None
    return records


@dataclass(frozen=True)
class MaskPlan:
    kind: MaskKind
    mode: str  # AttentionBlock.mask_mode
    is_causal: bool
    window: int | None = None


def classify(bias: Tensor | None, sq: int, skv: int, causal_flag: bool, data_dep: bool) -> MaskPlan:
    """What the mask computes at the example, and how the block passes it to the method.

    A causal pattern becomes is_causal (+ a window when the visible band is narrower than the
    keys); the rest of the mask is kept as a tensor: folded to its key-wise part when causal
    (exact: the causal flag hides the entries that fold changes), as is otherwise.
    """
    if bias is None:
        return MaskPlan(MaskKind.CAUSAL if causal_flag else MaskKind.NONE, "none", causal_flag)
    logits = bias_logits(as_4d(bias), torch.float64)
    logits = logits.expand(*logits.shape[:-2], sq, skv)
    visible = ~masks.hidden(logits)
    values = torch.where(visible, logits, 0.0)
    has_values = bool((values != 0).any())
    causal = positions_mask(sq, skv, True, None, logits.device)
    hides_future = bool((~causal).any()) and not bool((visible & ~causal).any())
    if causal_flag or hides_future:
        if not has_values and not data_dep:
            shown = visible & causal if causal_flag else visible
            pattern = torch.zeros(shown.shape, dtype=torch.float64).masked_fill(~shown, -torch.inf)
            kind, window = masks.classify(pattern.numpy(), sq, skv)
            if kind in (MaskKind.CAUSAL, MaskKind.SLIDING_WINDOW):
                return MaskPlan(kind, "none", True, window)
        folded = fold_causal(logits, sq, skv)
        keywise = bool((folded == folded[..., :1, :]).all())
        kind = MaskKind.CAUSAL_PADDING if keywise and data_dep and not has_values else None
        return MaskPlan(kind or MaskKind.CAUSAL_BIAS, "fold", True)
    if not has_values and bool(visible.all()) and not data_dep:
        return MaskPlan(MaskKind.NONE, "none", False)
    keywise = bool((logits == logits[..., :1, :]).all())
    padding = keywise and data_dep and not has_values
    return MaskPlan(MaskKind.PADDING if padding else MaskKind.BIAS, "full", False)


def _settle(
    placed: Placed,
    cand: FxCandidate,
    record: tuple[Tensor, ...],
    method: str,
    params: dict[str, object],
    dynamic: bool = False,
) -> FxAttention:
    """Fix the block's mask handling from its example inputs, then try the method on them."""
    block = placed.block
    q, k, v, raw = record
    sq, skv = q.shape[-2], k.shape[-2]
    plan = classify(raw, sq, skv, cand.is_causal, placed.data_dependent)
    if dynamic and raw is not None and plan.mode == "none":  # read at one length only: keep it
        plan = MaskPlan(
            plan.kind, "fold" if plan.is_causal else "full", plan.is_causal, plan.window
        )
    block.is_causal, block.window, block.mask_mode = plan.is_causal, plan.window, plan.mode
    reference = references.get("exact")(
        q, k, v, scale=block.scale, is_causal=cand.is_causal, bias=raw, softcap=block.softcap
    )
    planned = _block_bias(block, raw, sq, skv)
    if not torch.allclose(_run(block, "exact", {}, q, k, v, planned), reference, atol=1e-5):
        plan = MaskPlan(
            MaskKind.CAUSAL_BIAS if cand.is_causal else MaskKind.BIAS, "full", cand.is_causal
        )
        block.is_causal, block.window, block.mask_mode = plan.is_causal, None, "full"
        planned = raw
    fallback = None
    try:
        _run(block, method, params, q, k, v, planned)
        block.method, block.params = method, dict(params)
    except ValueError as err:
        fallback = f"{method} cannot run this block: {err}"
    anchor, qn, kn, vn, out = placed.names
    (_, hq, _, d), (_, hkv, _, _) = q.shape, k.shape
    match = AttentionMatch(
        anchor=anchor,
        graph_name=GRAPH,
        variant=cand.variant,
        q=Operand(qn, heads=hq),
        k=Operand(kn, layout=cand.k_layout, heads=hkv),  # K^T where the model transposed it
        v=Operand(vn, heads=hkv),
        output=out,
        nodes=placed.nodes,
        scale=block.scale,
        scale_source=cand.scale_source,
        upstream_scale=cand.upstream_scale,
        mask=plan.kind,
        bias=Bias(steps=cand.steps) if plan.mode != "none" else None,
        window=plan.window,
        softcap=block.softcap,
        q_heads=hq,
        kv_heads=hkv,
        head_dim=d,
        q_len=sq,
        kv_len=skv,
        rank=q.dim(),
        kv_repeat=cand.kv_repeat,
        float32_softmax=cand.float32_softmax,
        dtype=from_torch_dtype(q.dtype),
    )
    return FxAttention(
        match, placed.name, plan.is_causal, block.method, dict(block.params), fallback
    )


def _block_bias(block: AttentionBlock, raw: Tensor | None, sq: int, skv: int) -> Tensor | None:
    if block.mask_mode == "none" or raw is None:
        return None
    return fold_causal(raw, sq, skv) if block.mask_mode == "fold" else raw


def _run(
    block: AttentionBlock,
    method: str,
    params: dict[str, object],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
) -> Tensor:
    with torch.no_grad():
        return references.get(method)(
            q,
            k,
            v,
            scale=block.scale,
            is_causal=block.is_causal,
            bias=bias,
            window=block.window,
            softcap=block.softcap,
            **params,
        )
