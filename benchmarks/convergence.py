"""Error of each approximate method against exact attention along its accuracy knob.

    python benchmarks/convergence.py            # prints the table, writes JSON
    python benchmarks/convergence.py --methods verticalslash window --out /tmp/vs.json

Three kinds of head, float64, causal, n = 256, d = 32, 4 heads: "random" (i.i.d. normal q, k at
scale 1/sqrt(d): content heads), "recency" (scores depend on distance: q_i . k_j ~ 8 cos(0.05
(i - j)), what conv-basis and multipole assume), and "trained" (q, k, v captured from layer 2 of
the trained example examples/tiny_lm at n = 256 on Python source). Error: relative Frobenius
norm of the attention output. Each knob ends where the method must be exact (k = n, block = n),
except PolySketch (block 16, so the far field is sketched), whose sketch converges to its
fitted polynomial kernel (variant exact_poly), not to softmax: its rows are measured against
both.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from rich.console import Console
from rich.table import Table

from attnrewrite import methods
from attnrewrite.loading import load_model
from attnrewrite.patterns import find_attention
from attnrewrite.plan.calibrate import capture
from attnrewrite.plan.workspace import Workspace
from attnrewrite.report.inputs import from_text

N, D, HEADS = 256, 32, 4
EXAMPLE = Path(__file__).parents[1] / "examples" / "tiny_lm" / "tiny-lm.onnx"
KNOBS = {
    "convbasis": ("bases", [4, 16, 64, 128, 256]),
    "multipole": ("block", [8, 16, 32, 64, 128, 256]),
    "window": ("width", [8, 16, 32, 64, 128, 256]),
    "polysketch": ("sketch_size", [8, 16, 32, 64, 128, 256, 512]),
    "verticalslash": ("slash", [8, 16, 32, 64, 128, 256]),
}
EXTRA = {
    "polysketch": {"block": 16},  # blocks smaller than n, so the far field is sketched
    "verticalslash": {"vertical": 8, "local": 8},  # 8 columns (4 sinks), 8 local diagonals
}


def heads(kind: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    if kind == "trained":
        model = load_model(EXAMPLE)
        found = find_attention(model)
        text = Path(json.__file__).with_name("decoder.py")
        feeds = from_text(ir.load(str(EXAMPLE)), text, "bytes", N, batch=1).feeds
        with Workspace(model, found.matches) as workspace:
            block = capture(workspace, feeds).blocks[2]
        scale = block.scale
        q, k, v = (torch.from_numpy(x).double() for x in (block.q, block.k, block.v))
        return q * (scale * math.sqrt(q.shape[-1])), k, v  # the model's scale, at 1/sqrt(d)
    v = torch.randn(1, HEADS, N, D, generator=gen, dtype=torch.float64)
    if kind == "random":
        q, k = (torch.randn(1, HEADS, N, D, generator=gen, dtype=torch.float64) for _ in "qk")
        return q, k, v
    pos = torch.arange(N, dtype=torch.float64)
    freq = 0.05 * torch.arange(1, D // 2 + 1, dtype=torch.float64) / (D // 2)
    ang = pos[:, None] * freq
    basis = torch.cat([ang.cos(), ang.sin()], -1) * math.sqrt(8 * math.sqrt(D) / (D // 2))
    return basis.expand(1, HEADS, N, D), basis.expand(1, HEADS, N, D), v


def error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/convergence.json"))
    parser.add_argument("--methods", nargs="+", choices=list(KNOBS), default=list(KNOBS))
    args = parser.parse_args()
    knobs = {name: KNOBS[name] for name in args.methods}
    rows = []
    for kind in ("random", "recency", "trained"):
        q, k, v = heads(kind)
        scale = 1 / math.sqrt(q.shape[-1])
        exact = methods.get("exact")(q, k, v, scale=scale, is_causal=True)
        fitted = methods.get("polysketch")(
            q, k, v, scale=scale, is_causal=True, variant="exact_poly", **EXTRA["polysketch"]
        )
        for name, (knob, values) in knobs.items():
            for value in values:
                params = {knob: value, **EXTRA.get(name, {})}
                out = methods.get(name)(q, k, v, scale=scale, is_causal=True, **params)
                row = {"heads": kind, "method": name, knob: value, "error": error(out, exact)}
                if name == "polysketch":
                    row["error_vs_fitted_kernel"] = error(out, fitted)
                rows.append(row)
    table = Table(title=f"relative error vs exact attention, causal, n={N} (float64)")
    for col in ("method", "knob", "value", "random", "recency", "trained"):
        table.add_column(col)
    for name, (knob, values) in knobs.items():
        for value in values:
            cells = {r["heads"]: r for r in rows if r["method"] == name and r[knob] == value}
            fmt = [
                f"{cells[h]['error']:.3g}"
                + (f" ({cells[h]['error_vs_fitted_kernel']:.2g})" if name == "polysketch" else "")
                for h in ("random", "recency", "trained")
            ]
            table.add_row(name, knob, str(value), *fmt)
    Console().print(table)
    Console().print("polysketch: (error against its own fitted polynomial kernel)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"n": N, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
