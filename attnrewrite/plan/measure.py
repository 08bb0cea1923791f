"""Every candidate's node on every block's captured operands, in onnxruntime: the error it
makes on each head, and the time it takes.

Errors: the node the rewrite would write (substitute.standalone), run on the block's captured
q, k, v and mask, against the block's exact output; relative L2 per head over the batch. The
bodies match their float64 references to 1e-5 (tests/bodies), so this is the reference's error
as it will run, at a fraction of the reference's cost at long context.

Costs: the same node timed on operands of the block's shapes at the target length, over one
head and over all of them: time = fixed + per_head * heads, the fixed part being what a node
costs whatever its width (the split penalty of a per-head plan). A flop count predicted
conv-basis 30-80x too fast (onnxruntime's DFT) and said nothing of that overhead. Nodes are
timed with onnxruntime's memory arena, as onnxruntime runs a model by default and as the
planner's whole-model check (plan.speed) times plans: without it the approximations' nodes
paid 2-2.5x for their buffers and chunked exact nothing (SmolLM2's shapes at n = 2048: exact
in 16 chunks 20.0 / 20.7 ms, multipole block 128 25.6 / 10.3 ms, without / with), so the table
ranked chunked exact first where whole models ran multipole 1.3x faster. The whole-model check
keeps a plan only if it measures faster. Timings differ from run to run; a cost table kept in
a file (`--costs`) makes plans repeatable and spares the timing on a second run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from attnrewrite.errors import AttnRewriteError
from attnrewrite.methods import METHODS
from attnrewrite.plan.calibrate import BlockOperands
from attnrewrite.plan.candidates import Candidate
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.signature import Signature
from attnrewrite.substitute.standalone import input_names, node_model
from attnrewrite.timing import best_ms, cpu_options

REPEATS = 3


@dataclass(frozen=True)
class Cost:
    """Time of one node of a candidate over h heads of a block: fixed_ms + per_head_ms * h."""

    fixed_ms: float
    per_head_ms: float

    def ms(self, heads: int) -> float:
        return self.fixed_ms + self.per_head_ms * heads


class Bench:
    """Candidate nodes in onnxruntime, one session per (candidate, signature, scale, window,
    soft-cap)."""

    def __init__(self, opset: int, threads: int = 0, repeats: int = REPEATS) -> None:
        self.opset, self.threads, self.repeats = opset, threads, repeats
        self._sessions: dict[tuple, ort.InferenceSession] = {}
        self.costs: dict[str, Cost] = {}  # what cost() measured or loaded, by node and shapes
        self._timed_as = f"threads={threads} arena"  # how costs are timed: part of their keys

    def load(self, path: Path) -> None:
        """Costs measured earlier (a file `save` wrote): those nodes are not timed again."""
        try:
            table = json.loads(path.read_text())
            self.costs.update({k: Cost(**v) for k, v in table["costs"].items()})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise AttnRewriteError(
                f"{path} is not a cost table written by attnrewrite ({err})"
            ) from None

    def save(self, path: Path) -> None:
        """Write every cost known so far (atomically: a failed write leaves the old file)."""
        table = {"costs": {k: dataclasses.asdict(v) for k, v in sorted(self.costs.items())}}
        staging = path.with_name(f".{path.name}.tmp")
        staging.write_text(json.dumps(table, indent=1) + "\n")
        os.replace(staging, path)

    def _session(
        self,
        candidate: Candidate,
        sig: Signature,
        block: BlockOperands,
        mask: str,
        fitted: Mapping[str, np.ndarray],
        arena: bool,
    ) -> ort.InferenceSession:
        """The candidate's node as a one-node model; with `fitted`, the calibrated variant, its
        arrays inputs fed per block (one session serves them all). Arena-less sessions are
        built once per key and kept for the whole plan; a session with onnxruntime's arena is
        built for one timing and dropped after it, so its buffers never pile up."""
        key = (candidate.label, sig, block.scale, block.window, block.softcap, mask, tuple(fitted))
        if not arena and key in self._sessions:
            return self._sessions[key]
        method = get_method(candidate.method, candidate.params)
        if fitted:
            method = method.with_fitted(fitted)
        model = node_model(
            method,
            sig,
            scale=block.scale,
            window=block.window,
            softcap=block.softcap,
            opset=self.opset,
            mask_dtype=np.dtype(mask) if mask else None,
        )
        session = ort.InferenceSession(
            model.SerializeToString(), cpu_options(self.threads, arena), ["CPUExecutionProvider"]
        )
        if not arena:
            self._sessions[key] = session
        return session

    def _run(
        self,
        candidate: Candidate,
        block: BlockOperands,
        operands: Sequence[np.ndarray],
        sig: Signature,
        fitted: Mapping[str, np.ndarray] | None = None,
        arena: bool = False,
    ) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
        mask = str(operands[3].dtype) if len(operands) > 3 else ""
        fitted = fitted or {}
        session = self._session(candidate, sig, block, mask, fitted, arena)
        feeds = dict(zip(input_names(sig), operands, strict=True))
        return session, feeds | {k: np.asarray(v, np.float32) for k, v in fitted.items()}

    def errors(
        self,
        candidate: Candidate,
        block: BlockOperands,
        fitted: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Relative L2 error of each head's output against exact attention, [heads]; with
        `fitted`, of the calibrated variant reading those arrays ([heads, d])."""
        operands = [block.q, block.k, block.v] + ([block.mask] if block.mask is not None else [])
        session, feeds = self._run(candidate, block, operands, block.signature, fitted)
        out = session.run(None, feeds)[0].astype(np.float64)
        exact = block.exact.astype(np.float64)
        diff = np.linalg.norm((out - exact).transpose(1, 0, 2, 3).reshape(block.heads, -1), axis=1)
        norm = np.linalg.norm(exact.transpose(1, 0, 2, 3).reshape(block.heads, -1), axis=1)
        return np.where(norm > 0, diff / np.where(norm > 0, norm, 1.0), diff)

    def cost(self, candidate: Candidate, block: BlockOperands, seq_len: int) -> Cost:
        """The candidate's node timed over one head and over all heads of `block` at
        `seq_len` (batch 1, key and value heads repeated as a per-head plan feeds them).
        Blocks of the same shapes share the measurement."""
        mask = "none" if block.mask is None else f"{block.mask.dtype}/{block.mask.shape[-2] == 1}"
        key = (
            f"{candidate.label} {block.signature.overload} heads={block.heads} "
            f"d={block.q.shape[-1]}/{block.v.shape[-1]} mask={mask} n={seq_len} {self._timed_as}"
        )
        if key not in self.costs:
            self.costs[key] = self._timed(candidate, block, seq_len)
        return self.costs[key]

    def _timed(self, candidate: Candidate, block: BlockOperands, seq_len: int) -> Cost:
        sig = dataclasses.replace(block.signature, kv_repeat=False)
        times = []
        for heads in (1, block.heads):
            operands = _synthetic(block, heads, seq_len)
            fitted = {  # zeros cost what fitted points do: the same ops on the same shapes
                f.name: np.zeros((heads, block.q.shape[-1]), np.float32)
                for f in METHODS[candidate.method].fitted
                if candidate.fitted
            }
            session, feeds = self._run(candidate, block, operands, sig, fitted, arena=True)
            times.append(best_ms(lambda s=session, f=feeds: s.run(None, f), self.repeats))
        one, every = times
        per_head = max((every - one) / max(block.heads - 1, 1), 0.0)
        return Cost(max(one - per_head, 0.0), per_head)

    def split_cost(self, block: BlockOperands, seq_len: int) -> float:
        """ms that splitting `block` into two head groups adds at `seq_len`: each group's
        copies of its q, k and v heads, and the outputs concatenated back in head order (the
        copies substitute.rewrite writes; odd and even heads, so none is a contiguous run)."""
        heads, kv_heads = block.heads, block.k.shape[1]
        key = f"split heads={heads}/{kv_heads} {block.q.dtype} n={seq_len} {self._timed_as}"
        if key not in self.costs:
            operands = [
                np.zeros((1, h, seq_len, x.shape[-1]), block.q.dtype)
                for h, x in ((heads, block.q), (kv_heads, block.k), (kv_heads, block.v))
            ]
            session = ort.InferenceSession(
                _split_model(heads, kv_heads, block.q.dtype).SerializeToString(),
                cpu_options(self.threads, arena=True),
                ["CPUExecutionProvider"],
            )
            feeds = dict(zip(("q", "k", "v"), operands, strict=True))
            ms = best_ms(lambda: session.run(None, feeds), self.repeats)
            self.costs[key] = Cost(ms, 0.0)
        return self.costs[key].fixed_ms


def _split_model(heads: int, kv_heads: int, dtype: np.dtype) -> onnx.ModelProto:
    """q, k, v -> two groups of heads (even, odd) gathered from each, the groups' q
    concatenated and put back in head order (standing in for their outputs)."""
    per_kv = heads // kv_heads
    groups = [list(range(0, heads, 2)), list(range(1, heads, 2))]
    order = [h for g in groups for h in g]
    nodes, outputs, constants = [], [], {}

    def const(name: str, values: list[int]) -> str:
        constants[name] = onnx.numpy_helper.from_array(np.array(values, np.int64), name)
        return name

    for index, group in enumerate(groups):
        picks = {"q": group, "k": [h // per_kv for h in group], "v": [h // per_kv for h in group]}
        for name, heads_of in picks.items():
            out = f"{name}{index}"
            nodes.append(
                onnx.helper.make_node("Gather", [name, const(f"i{out}", heads_of)], [out], axis=1)
            )
            if name != "q":
                outputs.append(out)
    nodes.append(onnx.helper.make_node("Concat", ["q0", "q1"], ["joined"], axis=1))
    inverse = const("inverse", [order.index(h) for h in range(heads)])
    nodes.append(onnx.helper.make_node("Gather", ["joined", inverse], ["out"], axis=1))
    element = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = onnx.helper.make_graph(
        nodes,
        "split",
        [onnx.helper.make_tensor_value_info(n, element, None) for n in ("q", "k", "v")],
        [onnx.helper.make_tensor_value_info(n, element, None) for n in ("out", *outputs)],
        initializer=list(constants.values()),
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])


def _synthetic(block: BlockOperands, heads: int, seq_len: int) -> list[np.ndarray]:
    """Random operands shaped like the block's at `seq_len` (its mask all visible)."""
    rng = np.random.default_rng(0)
    d, dv = block.q.shape[-1], block.v.shape[-1]
    dtype = block.q.dtype
    q = rng.standard_normal((1, heads, seq_len, d)).astype(dtype)
    k = rng.standard_normal((1, heads, seq_len, d)).astype(dtype)
    v = rng.standard_normal((1, heads, seq_len, dv)).astype(dtype)
    if block.mask is None:
        return [q, k, v]
    rows = 1 if block.signature.keywise or block.mask.shape[-2] == 1 else seq_len
    mask = np.zeros((1, 1, rows, seq_len), dtype=block.mask.dtype)
    if block.mask.dtype == np.bool_:
        mask[:] = True
    return [q, k, v, mask]
