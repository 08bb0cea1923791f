"""`attnrewrite model.pt2 --method M`: rewrite a saved ExportedProgram (torch.export.save).

load (torch.export.load) -> rewrite (FX finder, method blocks) -> verify (exact: parity
with the original program on its example inputs; others: finite outputs)
-> OUTDIR/model.pt2 (the rewritten program, re-exported), OUTDIR/model.onnx (the same
attnrewrite nodes as the ONNX path, when the method has an ONNX body), OUTDIR/rewrite.json
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from attnrewrite import __version__
from attnrewrite.errors import AttnRewriteError, VerificationError
from attnrewrite.export import staged_directory
from attnrewrite.pipeline import RECORD_FILE
from attnrewrite.substitute.rewrite import kept_exact_note
from attnrewrite.torch import archive
from attnrewrite.torch.onnx_export import export_onnx
from attnrewrite.torch.rewrite import TorchRewrite, rewrite
from attnrewrite.torch.trace import ExampleInputs

PROGRAM_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
EXACT_TOLERANCE = 1e-5


def load_program(path: Path) -> torch.export.ExportedProgram:
    """The saved program, read without running anything it holds (torch/archive.py)."""
    if not path.is_file():
        raise AttnRewriteError(f"no such file: {path}")
    try:
        return archive.load_program(path)
    except AttnRewriteError:
        raise
    except Exception as err:  # zip, JSON and schema errors: all mean "not a program"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AttnRewriteError(f"{path} is not a readable ExportedProgram ({first})") from None


def inspect_pt2(path: Path) -> dict[str, object]:
    """What the FX finder sees in a saved program: `attnrewrite inspect model.pt2 --json`."""
    program = load_program(path)
    if program.example_inputs is None:
        raise AttnRewriteError(f"{path} holds no example inputs to classify masks with")
    found = rewrite(program, ExampleInputs(*program.example_inputs), "exact")
    return {
        "matches": [m.describe() for m in found.matches],
        "not_rewritten": [r.describe() for r in found.refusals],
    }


def rewrite_pt2(
    path: Path, method: str, params: dict[str, object], out_dir: Path, onnx: bool = True
) -> tuple[dict[str, object], str]:
    """Rewrite the program at `path` into `out_dir`; returns (rewrite.json content, summary)."""
    program = load_program(path)
    if program.example_inputs is None:
        raise AttnRewriteError(f"{path} holds no example inputs to trace and verify with")
    inputs = ExampleInputs(*program.example_inputs)
    fast = rewrite(program, inputs, method, **params)
    parity = _parity(program, fast, inputs)
    report: dict[str, object] = {
        "tool": {"name": "attnrewrite", "version": __version__, "torch": torch.__version__},
        "input": str(path),
        "output": PROGRAM_FILE,
        **fast.report(),
        "verification": {"max_relative_error": parity, "inputs": "the program's example inputs"},
    }
    with staged_directory(out_dir) as staging:
        try:
            again = torch.export.export(fast, tuple(inputs.args), dict(inputs.kwargs))
        except Exception as err:  # e.g. a method with data-dependent loops (binary recovery)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise AttnRewriteError(f"cannot re-export the rewritten program ({first})") from None
        torch.export.save(again, str(staging / PROGRAM_FILE))
        if onnx:
            try:
                report["onnx"] = {
                    "file": ONNX_FILE,
                    **export_onnx(fast, inputs, staging / ONNX_FILE),
                }
            except AttnRewriteError as err:
                report["onnx"] = {"error": str(err)}
        (staging / RECORD_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if method == "exact" and not parity <= EXACT_TOLERANCE:
        raise VerificationError(
            f"exact rewrite does not reproduce the program: max rel error {parity:.2e} > "
            f"{EXACT_TOLERANCE:.0e}; outputs kept in {out_dir} for inspection"
        )
    if parity != parity:  # NaN: non-finite outputs
        raise VerificationError(f"rewritten program produced non-finite outputs; see {out_dir}")
    return report, _summary(fast, parity, out_dir)


def _parity(
    program: torch.export.ExportedProgram, fast: TorchRewrite, inputs: ExampleInputs
) -> float:
    """Worst relative L2 error over the floating outputs (NaN when any is non-finite)."""
    with torch.no_grad():
        ref = torch.utils._pytree.tree_leaves(program.module()(*inputs.args, **inputs.kwargs))
        out = torch.utils._pytree.tree_leaves(fast(*inputs.args, **inputs.kwargs))
    worst = 0.0
    for r, o in zip(ref, out, strict=True):
        if not isinstance(r, torch.Tensor) or not r.is_floating_point():
            continue
        if not bool(torch.isfinite(o).all()):
            return float("nan")
        rel = (o.double() - r.double()).norm() / r.double().norm().clamp_min(1e-30)
        worst = max(worst, float(rel))
    return worst


def _summary(fast: TorchRewrite, parity: float, out_dir: Path) -> str:
    line = f"rewrote {len(fast.matches)} attention blocks with {fast.method}"
    line += kept_exact_note(m.fallback for m in fast.matches)
    if fast.refusals:
        line += f", {len(fast.refusals)} softmax op(s) not rewritten (see rewrite.json)"
    line += f"; max rel error {parity:.1e} on the program's example inputs"
    return f"{line} -> {out_dir / PROGRAM_FILE}"
