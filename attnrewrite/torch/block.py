"""The module that replaces one attention in an FX graph: bias replay, mask handling, method.

    before:  matmul(q*s, k^T) -> add(mask) -> softmax -> matmul(., v)
    after:   attnrewrite_block_0(q, k, v, mask)  # calls attnrewrite.methods.get(name)

The block is differentiable wherever the method's torch reference is (plain torch code).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnrewrite import methods as references
from attnrewrite.methods.exact import as_4d, expand_kv, positions_mask, soft_cap
from attnrewrite.rules.replay import Step, replay


def fold_causal(bias: Tensor, sq: int, skv: int) -> Tensor:
    """Entries hidden by the causal mask take the last query row's value.

    For a causal mask combined with a key-wise (padding) one this yields the key-wise part
    alone, which every method honours; any per-query structure among visible entries stays.
    """
    b = as_4d(bias)
    if b.shape[-2] == 1:
        return b
    b = b.expand(*b.shape[:-2], sq, skv)
    allowed = positions_mask(sq, skv, True, None, b.device)
    return torch.where(allowed, b, b[..., -1:, :])


class AttentionBlock(nn.Module):
    """softmax(cap(scale q k^T) + bias [+ causal/window]) v through an attnrewrite method
    (cap: the logit soft-cap ``softcap``, when the model has one).

    ``mask_mode``: ``none`` (the graph's mask is the causal/window pattern given by the flags,
    or absent), ``fold`` (causal flag + the mask's key-wise part, see fold_causal), ``full``
    (the mask as is). ``probe`` records the inputs of the next call (used while classifying).
    ``onnx_spelling``: compute exact attention in plain matmul/softmax ops, the form the ONNX
    finder recognises (used by export_onnx).
    """

    def __init__(
        self,
        *,
        scale: float,
        is_causal: bool,
        steps: tuple[Step, ...],
        k_transposed: bool = False,
        rank: int = 4,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.method = "exact"
        self.params: dict[str, object] = {}
        self.scale = scale
        self.is_causal = is_causal
        self.window: int | None = None
        self.softcap = softcap
        self.steps = steps
        self.k_transposed = k_transposed
        self.rank = rank
        self.mask_mode = "full"
        self.onnx_spelling = False
        self.probe: list[tuple[Tensor, ...]] | None = None

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, params={self.params}, scale={self.scale:.4g}, "
            f"is_causal={self.is_causal}, window={self.window}, softcap={self.softcap}, "
            f"mask={self.mask_mode}"
        )

    def raw_bias(self, q: Tensor, side: tuple[Tensor, ...]) -> Tensor | None:
        """The additive bias the score steps add (rules.replay, in torch, on the side tensors
        in order); None when there is no mask."""
        if not self.steps:
            return None
        tensors = iter(side)
        bias = replay(self.steps, lambda i, j: next(tensors), q.new_zeros(()), torch)
        if self.rank == 3:
            bias = bias.unsqueeze(1) if bias.dim() == 3 else bias
        return bias

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *side: Tensor) -> Tensor:
        if self.k_transposed:
            k = k.transpose(-1, -2)
        if self.rank == 3:  # [batch*heads, seq, dim]: one head per batch entry
            q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
        bias = self.raw_bias(q, side)
        if self.probe is not None:
            self.probe.append((q.detach(), k.detach(), v.detach(), bias))
        if self.onnx_spelling and bias is not None and bias.dtype == torch.bool:
            low = torch.finfo(q.dtype).min  # additive: onnxruntime has no boolean Where
            bias = torch.zeros(bias.shape, dtype=q.dtype, device=q.device).masked_fill(~bias, low)
        if self.mask_mode == "none":
            bias = None
        elif self.mask_mode == "fold" and bias is not None:
            bias = fold_causal(bias, q.shape[-2], k.shape[-2])
        if self.onnx_spelling:
            out = self.plain_exact(q, k, v, bias)
        else:
            out = references.get(self.method)(
                q,
                k,
                v,
                scale=self.scale,
                is_causal=self.is_causal,
                bias=bias,
                window=self.window,
                softcap=self.softcap,
                **self.params,
            )
        return out.squeeze(1) if self.rank == 3 else out

    def plain_exact(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
        """Exact attention as matmul -> mask -> softmax -> matmul (what exporters write)."""
        k, v = expand_kv(k, v, q.shape[1])
        scores = soft_cap((q @ k.transpose(-1, -2)) * self.scale, self.softcap)
        low = torch.finfo(scores.dtype).min
        if bias is not None and bias.dtype == torch.bool:
            scores = scores.masked_fill(~bias, low)
        elif bias is not None:
            scores = scores + bias.to(scores.dtype)
        allowed = positions_mask(
            q.shape[-2], k.shape[-2], self.is_causal, self.window, scores.device
        )
        if allowed is not None:
            scores = scores.masked_fill(~allowed, low)
        return torch.softmax(scores, dim=-1) @ v
