"""The mission's stages as one flat sequence:

    load -> find -> substitute -> export -> verify

`inspect` stops after find. Every stage lives in its own module (see README, Architecture).
"""

from __future__ import annotations

import json
import platform
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxruntime

from attnrewrite import __version__
from attnrewrite.defaults import VERIFY_SEQ_LEN
from attnrewrite.errors import AttnRewriteError, VerificationError
from attnrewrite.export import save_model, staged_directory
from attnrewrite.inputs import generate_inputs
from attnrewrite.loading import load_model
from attnrewrite.match import FindResult
from attnrewrite.patterns import find_attention
from attnrewrite.repair import repairs
from attnrewrite.substitute.methods import ResolvedMethod
from attnrewrite.substitute.rewrite import (
    HeadGroup,
    SubstituteResult,
    kept_exact_note,
    substitute,
)
from attnrewrite.verify import Parity, compare

MODEL_FILE = "model.onnx"
RECORD_FILE = "rewrite.json"  # the rewrite record: what was found, rewritten, refused, and why
VERIFY_BATCHES = (2, 1)


def inspect_model(path: Path) -> FindResult:
    return find_attention(load_model(path))


@dataclass(frozen=True)
class RewriteOutcome:
    out_dir: Path
    report: dict[str, object]
    summary: str


def rewrite_model(
    path: Path,
    method: ResolvedMethod,
    out_dir: Path,
    verify: bool = True,
    seq_len: int = VERIFY_SEQ_LEN,
    plans: Mapping[int, Sequence[HeadGroup]] | None = None,
    extra: Mapping[str, object] | None = None,
    min_opset: int | None = None,
) -> RewriteOutcome:
    """`plans` (match index -> head groups) and `extra` (added to rewrite.json) come from
    `--method auto`, which needs `min_opset` for every candidate's body."""
    if (out_dir / MODEL_FILE).resolve() == path.resolve():
        raise AttnRewriteError(f"output folder {out_dir} would overwrite the input model")
    model = load_model(path, min_opset=min_opset or method.min_opset)
    found = find_attention(model)
    if not found.matches:
        raise no_attention(path, found)
    result = substitute(model, found.matches, method, plans)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)  # the checker reads protobuf
    repaired = {"repaired_on_load": notes} if (notes := repairs(model)) else {}
    report = {**rewrite_report(path, method, found, result), **repaired, **(extra or {})}
    # exact everywhere must reproduce the original; approximations must stay finite
    strict = all(
        r.method.name == "exact" and all(g.method.name == "exact" for g in r.groups)
        for r in result.rewritten
    )
    parity = None
    with staged_directory(out_dir) as staging:
        save_model(model, staging / MODEL_FILE)
        if verify:
            parity = _verify(path, staging / MODEL_FILE, model, result, seq_len)
            report["verification"] = {"passed": _passed(parity, strict), **parity.describe()}
        (staging / RECORD_FILE).write_text(json.dumps(report, indent=2) + "\n")
    summary = _summary(report, parity, out_dir, strict, seq_len)
    if parity is not None and not _passed(parity, strict):
        raise VerificationError(_failure(parity, strict, out_dir))
    return RewriteOutcome(out_dir, report, summary)


def no_attention(path: Path, found: FindResult) -> AttnRewriteError:
    """The error for a model with nothing to rewrite, saying why its Softmaxes are not."""
    return AttnRewriteError(f"no softmax attention found in {path}: {_why_none(found)}")


def _why_none(found: FindResult) -> str:
    if not found.refusals:
        return "the model has no Softmax and no attention op"
    reasons = Counter(r.reason for r in found.refusals)
    top = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(2))
    return f"{len(found.refusals)} Softmax/attention op(s) not attention ({top})"


def _verify(
    original: Path, rewritten: Path, model: ir.Model, result: SubstituteResult, seq_len: int
) -> Parity:
    """Both models at `seq_len`, or beyond the widest window a block keeps (where the window
    changes anything); at `seq_len` if the models cannot run there. `model` is the rewritten
    one, in memory: it takes the original's inputs."""
    blocks = [r.output for r in result.rewritten if r.match.graph_name == "main"]
    widest = max((r.match.window or 0 for r in result.rewritten), default=0)
    error = ""
    for length in dict.fromkeys((max(seq_len, widest + 2), seq_len)):
        for batch in VERIFY_BATCHES:  # some exported graphs only run at batch 1
            feeds = generate_inputs(model, length, batch=batch)
            try:
                return compare(original, rewritten, model, feeds, blocks, length)
            except Exception as err:  # onnxruntime raises several types: "could not run"
                error = str(err).splitlines()[0]
    raise AttnRewriteError(
        f"verification could not run the models at sequence length {seq_len} ({error}); "
        "try --seq-len or --no-verify"
    )


def _passed(parity: Parity, strict: bool) -> bool:
    if strict:
        return parity.worst <= parity.tolerance
    return all(d.finite for d in parity.outputs)


def _failure(parity: Parity, strict: bool, out_dir: Path) -> str:
    block = parity.first_failing_block()
    where = (
        f"first at block '{block.name}' (rel {block.relative:.2e})" if block else "at the outputs"
    )
    if strict:
        return (
            f"exact rewrite does not reproduce the original: max rel error {parity.worst:.2e} > "
            f"{parity.tolerance:.0e}, {where}; outputs kept in {out_dir} for inspection"
        )
    return f"rewritten model produced non-finite outputs {where}; see {out_dir}"


def rewrite_report(
    path: Path, method: ResolvedMethod, found: FindResult, result: SubstituteResult
) -> dict[str, object]:
    """The content of rewrite.json: every match and everything not rewritten, with reasons."""
    rewritten = [r.describe() for r in result.rewritten]
    not_rewritten = [r.describe() for r in found.refusals] + [
        {
            "anchor": f.match.anchor,
            "op_type": "attention",
            "graph": f.match.graph_name,
            "reason": f.reason,
        }
        for f in result.failed
    ]
    return {
        "tool": {"name": "attnrewrite", "version": __version__},
        "environment": {
            "python": platform.python_version(),
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "input": str(path),
        "output": MODEL_FILE,
        "method": {"name": method.name, "params": method.params},
        "summary": {
            "attention_blocks": len(found.matches),
            "rewritten": len(result.rewritten),
            "kept_exact": sum(r.fallback is not None for r in result.rewritten),
            "failed": len(result.failed),
            "not_rewritten": len(not_rewritten),
            "variants": dict(Counter("+".join(m["variant"]) for m in rewritten)),
            "masks": dict(Counter(m["mask"] for m in rewritten)),
        },
        "matches": rewritten,
        "not_rewritten": not_rewritten,
    }


def _summary(report: dict, parity: Parity | None, out_dir: Path, strict: bool, asked: int) -> str:
    counts = report["summary"]
    line = (
        f"rewrote {counts['rewritten']}/{counts['attention_blocks']} attention blocks with "
        f"{report['method']['name']}"
    )
    line += kept_exact_note(m.get("fallback") for m in report["matches"])
    if report.get("repaired_on_load"):
        line += f" (input repaired on load: {'; '.join(report['repaired_on_load'])})"
    if counts["not_rewritten"]:
        line += (
            f", {counts['not_rewritten']} softmax/attention op(s) not rewritten (see rewrite.json)"
        )
    if parity is not None and strict:
        line += f"; verified at {_length(parity, asked)}: max rel error {parity.worst:.1e}"
    elif parity is not None:
        line += (
            f"; runs with finite outputs at {_length(parity, asked)} (rel error there "
            f"{parity.worst:.1e}; --report measures accuracy at your length)"
        )
    return f"{line} -> {out_dir / MODEL_FILE}"


def _length(parity: Parity, asked: int) -> str:
    """The length the blocks ran at, and why when it is not the one asked for."""
    if parity.seq_len == asked:
        return f"n={asked}"
    if parity.seq_len == parity.requested_seq_len:
        return f"n={parity.seq_len} (beyond the widest window; {asked} asked)"
    return f"n={parity.seq_len} (the model's own length; {asked} asked)"
