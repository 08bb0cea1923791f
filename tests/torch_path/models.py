"""Tiny models for the torch path: transformers architectures from small configs (random
weights, nothing downloaded) and hand-written modules spelling attention in other ways."""

from __future__ import annotations

import math

import torch
from torch import nn

VOCAB, SEQ = 50, 7


def batch(labels: bool = True, padding: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids, a right-padded attention mask (no query row loses every key), labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=g)
    out = {"input_ids": ids}
    if padding:
        mask = torch.ones(2, SEQ, dtype=torch.long)
        mask[0, -2:] = 0
        out["attention_mask"] = mask
    if labels:
        out["labels"] = ids
    return out


def transformer(
    arch: str, impl: str, dtype: torch.dtype = torch.float32, use_cache: bool = False
) -> nn.Module:
    """A one-layer model of `arch`; use_cache=True is transformers' default (a KV cache out)."""
    import transformers as T

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = T.GPT2Config(
            vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=1, n_head=2, n_inner=32,
            use_cache=use_cache, attn_implementation=impl,
        )  # fmt: skip
        model = T.GPT2LMHeadModel(cfg)
    elif arch == "llama":  # grouped-query: 4 query heads share 2 kv heads
        cfg = T.LlamaConfig(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
            use_cache=use_cache, attn_implementation=impl,
        )  # fmt: skip
        model = T.LlamaForCausalLM(cfg)
    elif arch == "gemma2":  # logit soft-capping; weights large enough that the cap bends
        cfg = T.Gemma2Config(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, head_dim=4, query_pre_attn_scalar=4,
            attn_logit_softcapping=1.5, initializer_range=0.5, max_position_embeddings=32,
            use_cache=use_cache, attn_implementation=impl,
        )  # fmt: skip
        model = T.Gemma2ForCausalLM(cfg)
    elif arch == "bert":
        cfg = T.BertConfig(
            vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=32, attn_implementation=impl,
        )  # fmt: skip
        model = T.BertModel(cfg)
    else:
        raise ValueError(arch)
    return model.to(dtype).eval()


class HandAttention(nn.Module):
    """Self-attention written by hand; each flag picks another spelling of the same maths.

    scale_on: "q" (q / sqrt(d)), "k" (k * c), "scores" (scores / full([], sqrt(d)));
    mask: "none", "tril" (masked_fill of a tril buffer with -inf), "window" (causal band of
    `window` keys), "alibi" (causal + a per-query distance bias), "keep" (where(tril, s, -inf));
    kv_heads < heads: grouped-query by repeat_interleave; bmm: 3-D [B*H, S, d] scores;
    k_stored_t: K kept transposed by its projection; sdpa: F.scaled_dot_product_attention;
    fill: what the "tril" mask writes over hidden scores (-inf, finfo.min, -1e4, ...);
    softcap: Gemma 2's logit soft-cap, softcap * tanh(scores / softcap) before the mask.
    """

    def __init__(
        self,
        dim: int = 8,
        heads: int = 2,
        kv_heads: int | None = None,
        scale_on: str = "q",
        mask: str = "tril",
        window: int = 3,
        bmm: bool = False,
        k_stored_t: bool = False,
        sdpa: bool = False,
        extra_softmax: bool = False,
        fill: float = float("-inf"),
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.heads, self.kv_heads = dim, heads, kv_heads or heads
        self.hd = dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * self.kv_heads * self.hd)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("tril", torch.tril(torch.ones(16, 16)))
        self.scale_on, self.mask, self.window = scale_on, mask, window
        self.bmm, self.k_stored_t, self.sdpa = bmm, k_stored_t, sdpa
        self.extra_softmax, self.fill, self.softcap = extra_softmax, fill, softcap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, self.hd).transpose(1, 2)
        k, v = self.kv(x).view(b, s, 2, self.kv_heads, self.hd).permute(2, 0, 3, 1, 4)
        if self.kv_heads != self.heads:
            g = self.heads // self.kv_heads
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        if self.sdpa:
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.mask == "tril")
            return self.out(y.transpose(1, 2).reshape(b, s, -1))
        if self.bmm:
            q, k, v = (t.reshape(b * self.heads, s, self.hd) for t in (q, k, v))
        c = 1 / math.sqrt(self.hd)
        kt = k.transpose(-2, -1)
        if self.k_stored_t:
            kt = kt.contiguous()  # a value that is K^T by construction, not by transpose
        if self.scale_on == "q":
            scores = (q * c) @ kt
        elif self.scale_on == "k":
            scores = q @ (kt * c)
        else:
            scores = (q @ kt) / torch.full([], math.sqrt(self.hd))
        if self.softcap is not None:
            scores = self.softcap * torch.tanh(scores / self.softcap)
        i = torch.arange(s)
        if self.mask == "tril":
            scores = scores.masked_fill(self.tril[:s, :s] == 0, self.fill)
        elif self.mask == "keep":
            scores = torch.where(self.tril[:s, :s] > 0, scores, float("-inf"))
        elif self.mask == "window":
            far = (i[:, None] - i[None, :] >= self.window) | (i[None, :] > i[:, None])
            scores = scores.masked_fill(far, float("-inf"))
        elif self.mask == "alibi":
            scores = scores.masked_fill(self.tril[:s, :s] == 0, float("-inf"))
            scores = scores - 0.5 * (i[:, None] - i[None, :]).abs().to(scores.dtype)
        p = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        y = p @ v
        if self.extra_softmax:  # the probabilities are also returned: must not be rewritten
            return self.out(y.transpose(1, 2).reshape(b, s, -1)), p
        y = y.reshape(b, self.heads, s, self.hd) if self.bmm else y
        return self.out(y.transpose(1, 2).reshape(b, s, -1))


class Classifier(nn.Module):
    """A softmax that is not attention (class probabilities)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.lin(x), dim=-1)


class Branchy(nn.Module):
    """Data-dependent Python control flow: neither torch.export mode can trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.lin(x)
        return x
