"""Train a tiny byte-level causal LM on Python's own standard library, save it, export to ONNX.

Self-contained: torch (and onnxruntime for the export check) only, no downloads. The corpus is
the `.py` sources of the running interpreter's standard library, so rebuilding needs nothing
but Python itself (the exact bytes depend on the Python version; see README.md).

    python examples/tiny_lm/train.py                 # train (~5 min on 2 cores), save, export
    python examples/tiny_lm/train.py --export-only   # re-export tiny-lm.onnx from tiny_lm.pt

The model is a plain pre-LayerNorm GPT: byte vocabulary 256, 4 layers, 4 heads, d_model 128
(head dim 32), rotary positions computed from the sequence length (no position table, so any
length exports and runs; trained at 512), GELU MLP, embedding tied to the output layer.
Attention is written out by hand (q @ k^T * scale, causal masked_fill, softmax, @ v) so the
exported ONNX has the standard decomposed pattern; training alone runs the same maths through
F.scaled_dot_product_attention(is_causal=True), which is several times faster on CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
CKPT = HERE / "tiny_lm.pt"
ONNX = HERE / "tiny-lm.onnx"
LN2 = math.log(2.0)

# Standard-library folders left out of the corpus: tests, IDLE, installed packages.
SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"}


@dataclass
class Config:
    vocab: int = 256
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int = 512
    rope_base: float = 10000.0


# --------------------------------------------------------------------------------------------
# Corpus


def is_val(rel: str, every: int) -> bool:
    """Held-out files are chosen by a hash of their path, not by position, so that a module
    is on the same side of the split under every Python version (the stdlib differs)."""
    return zlib.crc32(rel.encode()) % every == 0


def stdlib_root() -> Path:
    return Path(os.path.dirname(os.__file__))


def build_corpus(cap: int, val_every: int, root: Path | None = None) -> tuple[Tensor, Tensor, int]:
    """The stdlib's .py files in sorted relative-path order, up to ``cap`` bytes in all,
    split into (train bytes, validation bytes) by file; also returns the file count."""
    root = root or stdlib_root()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    size = count = 0
    for path in files:
        data = path.read_bytes()
        if size + len(data) > cap:
            continue
        parts[is_val(path.relative_to(root).as_posix(), val_every)].append(data)
        size += len(data)
        count += 1

    def tensor(chunks: list[bytes]) -> Tensor:
        return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8).long()

    return tensor(parts[False]), tensor(parts[True]), count


# --------------------------------------------------------------------------------------------
# Model


def rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        # Set to a list to record (q, k, v, y) per call, q/k after rotary: [B, H, T, hd].
        self.capture: list[tuple[Tensor, Tensor, Tensor, Tensor]] | None = None
        # True while training (set by train()); export and evaluation use the written-out form.
        self.fused = False

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)
        q = q.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.fused and self.capture is None:
            # Training only: the same maths through PyTorch's fused kernel (fast on CPU).
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.proj(y.transpose(1, 2).reshape(b, t, c))
        scale = 1.0 / math.sqrt(self.head_dim)
        att = (q @ k.transpose(-2, -1)) * scale
        pos = torch.arange(t, device=x.device)
        future = pos[None, :] > pos[:, None]  # [T, T], True above the diagonal
        att = att.masked_fill(future, torch.finfo(att.dtype).min)
        att = F.softmax(att, dim=-1)
        y = att @ v
        if self.capture is not None:
            self.capture.append((q.detach(), k.detach(), v.detach(), y.detach()))
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model)
        )

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x), cos, sin)
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        hd = cfg.d_model // cfg.n_head
        inv = 1.0 / cfg.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        self.register_buffer("inv_freq", inv, persistent=False)
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, input_ids: Tensor) -> Tensor:
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, hd]
        cos, sin = emb.cos(), emb.sin()
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.ln_f(x))


# --------------------------------------------------------------------------------------------
# Training


def batch(data: Tensor, bsz: int, seq: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    ix = torch.randint(0, len(data) - seq - 1, (bsz,), generator=gen)
    x = torch.stack([data[i : i + seq] for i in ix.tolist()])
    y = torch.stack([data[i + 1 : i + seq + 1] for i in ix.tolist()])
    return x, y


def val_windows(val: Tensor, seq: int, count: int) -> tuple[Tensor, Tensor]:
    """``count`` evenly spaced, fixed windows of the validation slice."""
    starts = torch.linspace(0, len(val) - seq - 2, count).long().tolist()
    x = torch.stack([val[i : i + seq] for i in starts])
    y = torch.stack([val[i + 1 : i + seq + 1] for i in starts])
    return x, y


@torch.no_grad()
def bits_per_byte(model: TinyLM, x: Tensor, y: Tensor, chunk: int = 16) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(x), chunk):
        logits = model(x[i : i + chunk])
        flat = logits.flatten(0, 1)
        total += F.cross_entropy(flat, y[i : i + chunk].flatten(), reduction="sum").item()
    model.train()
    return total / y.numel() / LN2


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    root = Path(args.stdlib) if args.stdlib else stdlib_root()
    train_data, val_data, n_files = build_corpus(args.cap, args.val_every, root)
    n_bytes = len(train_data) + len(val_data)
    print(
        f"corpus: {n_bytes:,} bytes from {n_files} .py files under {root} (running Python "
        f"{sys.version.split()[0]}); train {len(train_data):,}, val {len(val_data):,}",
        flush=True,
    )
    cfg = Config()
    model = TinyLM(cfg)
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused = True
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters, {asdict(cfg)}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(args.seed)
    vx, vy = val_windows(val_data, args.seq, args.val_windows)
    t0 = time.time()
    smooth = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        x, y = batch(train_data, args.batch, args.seq, gen)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bpb = loss.item() / LN2
        smooth = bpb if smooth is None else 0.95 * smooth + 0.05 * bpb
        last = step == args.steps - 1
        if step % args.eval_every == 0 or last:
            val = bits_per_byte(model, vx, vy)
            print(
                f"step {step:5d}  train {smooth:.3f} bpb  val {val:.3f} bpb  "
                f"lr {opt.param_groups[0]['lr']:.2e}  {time.time() - t0:6.1f}s",
                flush=True,
            )
    elapsed = time.time() - t0
    print(f"trained {args.steps} steps in {elapsed:.1f}s", flush=True)
    finals = {}
    for n in (256, 512, 1024):
        ex, ey = val_windows(val_data, n, max(4, args.val_windows * args.seq // n))
        finals[n] = bits_per_byte(model, ex, ey)
        print(f"final val at length {n}: {finals[n]:.3f} bits/byte", flush=True)
    torch.save(
        {
            "config": asdict(cfg),
            "state_dict": model.state_dict(),
            "train": {
                **vars(args),
                "python": sys.version.split()[0],
                "corpus_bytes": n_bytes,
                "corpus_files": n_files,
                "seconds": round(elapsed, 1),
                "val_bpb": {str(k): round(v, 4) for k, v in finals.items()},
            },
        },
        CKPT,
    )
    print(f"saved {CKPT} ({CKPT.stat().st_size / 1e6:.2f} MB)", flush=True)


# --------------------------------------------------------------------------------------------
# Export


def load(path: Path = CKPT) -> tuple[TinyLM, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = TinyLM(Config(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def export(lengths: tuple[int, ...] = (64, 300)) -> None:
    import numpy as np
    import onnxruntime as ort

    model, _ = load()
    example = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.onnx.export(
        model,
        (example,),
        str(ONNX),
        dynamo=False,
        opset_version=17,
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}},
    )
    print(f"exported {ONNX} ({ONNX.stat().st_size / 1e6:.2f} MB)", flush=True)
    sess = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    for n in lengths:
        ids = torch.randint(0, 256, (2, n), generator=gen)
        with torch.no_grad():
            ref = model(ids).numpy()
        (got,) = sess.run(["logits"], {"input_ids": ids.numpy()})
        err = float(np.abs(got - ref).max())
        print(f"onnxruntime vs torch at seq {n}: max abs diff {err:.2e}", flush=True)
        if err > 1e-4:
            raise SystemExit(f"ONNX logits differ from torch at seq {n}: {err:.2e} > 1e-4")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export-only", action="store_true", help="re-export from tiny_lm.pt")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--cap", type=int, default=6_000_000, help="corpus size cap in bytes")
    p.add_argument("--val-every", type=int, default=20, help="1 file in N (by path hash) held out")
    p.add_argument("--val-windows", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--stdlib", default="", help="corpus root (default: this Python's standard library)"
    )
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.export_only:
        train(args)
    export()


if __name__ == "__main__":
    main()
