"""How well each approximate method's reference maths fits the trained model's heads.

Captures q, k, v (q and k after rotary) of every layer on a validation batch, then compares, per
layer and head, the output of ``attnrewrite.methods.get(name)`` with exact attention:
relative Frobenius error ||approx - exact|| / ||exact|| over the batch. No retraining, and each
layer sees the exact model's inputs (errors do not compound through layers here).

    python examples/tiny_lm/measure_methods.py            # n = 512, 4 validation windows
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from attnrewrite import methods

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import Attention, build_corpus, load, val_windows

CONFIGS = [
    ("convbasis k=16", "convbasis", {"bases": 16}),
    ("convbasis k=64", "convbasis", {"bases": 64}),
    ("polysketch (defaults)", "polysketch", {}),
    ("multipole block=64", "multipole", {"block": 64}),
    ("window w=64 s=4", "window", {"width": 64, "sinks": 4}),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per head: ||a - b||_F / ||b||_F over batch, queries and features. a, b: [B, H, T, d]."""
    return (a - b).pow(2).sum((0, 2, 3)).sqrt() / b.pow(2).sum((0, 2, 3)).sqrt()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, ckpt = load()
    t = ckpt["train"]
    _, val, _ = build_corpus(t["cap"], t["val_every"])
    x, _ = val_windows(val, args.n, args.batch)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    for a in attns:
        a.capture = []
    with torch.no_grad():
        model(x)
    hd = model.cfg.d_model // model.cfg.n_head
    scale = 1.0 / math.sqrt(hd)
    exact = methods.get("exact")
    rows = []
    for layer, a in enumerate(attns):
        q, k, v, y = (z.double() for z in a.capture[0])
        ref = exact(q, k, v, scale=scale, is_causal=True)
        check = rel_err(y, ref).max().item()  # the model's own attention vs the reference
        # How local each head is: attention mass inside the window baseline's pattern.
        s = (q @ k.transpose(-2, -1)) * scale
        pos = torch.arange(args.n)
        rel = pos[:, None] - pos[None, :]
        s = s.masked_fill(rel < 0, float("-inf")).softmax(-1)
        local = ((rel < 64) | (pos[None, :] < 4)) & (rel >= 0)
        mass = (s * local).sum(-1).mean((0, 2))
        ent = -(s * s.clamp_min(1e-300).log()).sum(-1).mean((0, 2)) / math.log(2)
        errs = [
            rel_err(methods.get(name)(q, k, v, scale=scale, is_causal=True, **kw), ref)
            for _, name, kw in CONFIGS
        ]
        for h in range(q.shape[1]):
            rows.append((layer, h, mass[h].item(), ent[h].item(), [e[h].item() for e in errs]))
        print(f"layer {layer}: model attention vs reference exact: {check:.1e}", file=sys.stderr)
    head = ["layer.head", "mass in w=64+s=4", "entropy (bits)"] + [c[0] for c in CONFIGS]
    print(f"n = {args.n}, batch {args.batch} validation windows, float64 references")
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---:" if i else "---" for i in range(len(head))) + "|")
    for layer, h, mass, ent, errs in rows:
        cells = [f"{layer}.{h}", f"{mass:.3f}", f"{ent:.2f}"] + [f"{e:.4f}" for e in errs]
        print("| " + " | ".join(cells) + " |")
    means = [sum(r[4][i] for r in rows) / len(rows) for i in range(len(CONFIGS))]
    mean_mass = sum(r[2] for r in rows) / len(rows)
    mean_ent = sum(r[3] for r in rows) / len(rows)
    cells = ["mean", f"{mean_mass:.3f}", f"{mean_ent:.2f}"] + [f"{e:.4f}" for e in means]
    print("| " + " | ".join(f"**{c}**" for c in cells) + " |")


if __name__ == "__main__":
    main()
