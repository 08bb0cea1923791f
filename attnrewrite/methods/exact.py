"""Exact softmax attention: the ground truth every approximate method is measured against.

It also holds the conventions all methods share, so that "what a mask means" is decided once:

- shapes: q [B, Hq, Sq, d], k [B, Hkv, Skv, d], v [B, Hkv, Skv, dv]; query head h reads kv
  head h // (Hq // Hkv) (grouped-query attention);
- positions: query i sits at key position i + (Skv - Sq) (bottom-right alignment, the KV-cache
  convention); ``is_causal`` keeps keys j <= that position and ``window`` (causal only) further
  keeps j > position - window;
- softcap: a logit soft-cap c replaces the scaled scores s by c * tanh(s / c) before the bias
  and masks (Gemma 2); None: none;
- bias: additive, broadcastable to [B, Hq, Sq, Skv]; entries at or below half the dtype's most
  negative value (finfo.min masks) count as -inf, a bool bias follows SDPA (True = attend);
- a row with no visible key returns zeros, never NaN;
- arithmetic runs in float64 for float64 inputs and float32 otherwise, the output has q's dtype;
- an integer parameter lies in the range its declaration states (attnrewrite.methods), at
  most MAX_SIZE for sizes (block, width, sinks, bases, probe): the ONNX bodies pad to whole
  blocks, so a size far above the sequence length costs about its square at any length
  (measured on a 4-head layer at 64 tokens: multipole block 2048 1.7 GB, polysketch block 4096
  2.8 GB, window width 4096 8 GB; at 1024 all stay under 0.8 GB).
"""

from __future__ import annotations

from math import inf

import torch
from torch import Tensor

from attnrewrite.methods import get


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 references would hide the approximation error under their own rounding."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_inputs(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, is_causal: bool, window: int | None
) -> None:
    """Reject malformed calls up front, so a wrong match fails loudly instead of broadcasting."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D [B, H, S, d]; got {q.dim()}, {k.dim()}, {v.dim()}")
    (b, hq, sq, d), (bk, hkv, skv, dk) = q.shape, k.shape
    if bk != b or v.shape[0] != b:
        raise ValueError(f"batch sizes differ: q {b}, k {bk}, v {v.shape[0]}")
    if dk != d:
        raise ValueError(f"q and k head dims differ: {d} vs {dk}")
    if v.shape[1] != hkv or v.shape[2] != skv:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} disagree on heads/length")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"query heads {hq} must be a multiple of kv heads {hkv}")
    if bias is not None:
        try:
            shape = torch.broadcast_shapes(bias.shape, (b, hq, sq, skv))
        except RuntimeError as err:
            raise ValueError(f"bias {tuple(bias.shape)} does not broadcast to q k^T") from err
        if shape != (b, hq, sq, skv):
            raise ValueError(f"bias {tuple(bias.shape)} would enlarge the score tensor")
    if window is not None:
        if not is_causal:
            raise ValueError("window is defined for causal attention only (is_causal=True)")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")


def expand_kv(k: Tensor, v: Tensor, hq: int) -> tuple[Tensor, Tensor]:
    """GQA by repetition: query head h reads kv head h // group, as repeat_interleave lays out."""
    group = hq // k.shape[1]
    if group == 1:
        return k, v
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


def positions_mask(
    sq: int, skv: int, is_causal: bool, window: int | None, device: torch.device
) -> Tensor | None:
    """Bool [Sq, Skv] of visible pairs (None: all visible), bottom-right aligned."""
    if not is_causal:
        return None
    rel = torch.arange(sq, device=device)[:, None] + (skv - sq) - torch.arange(skv, device=device)
    allowed = rel >= 0
    if window is not None:
        allowed &= rel < window
    return allowed


def window_binds(skv: int, window: int | None) -> bool:
    """A causal window hides some key iff the last query (position Skv - 1) reaches past it."""
    return window is not None and window < skv


def refuse_binding_window(method: str, skv: int, window: int | None, why: str) -> None:
    """For methods whose summaries span every earlier key: a window that hides some key is
    refused (ValueError), `why` saying what of the method cannot follow its edge."""
    if window_binds(skv, window):
        raise ValueError(
            f"{method} cannot honour a sliding window ({window}) narrower than the keys"
            f" ({skv}): {why}"
        )


def check_fitted(name: str, array: Tensor | None, q: Tensor) -> None:
    """A fitted array has a row per query head: [Hq, d], finite."""
    if array is None:
        return
    want = (q.shape[1], q.shape[3])
    if tuple(array.shape) != want:
        raise ValueError(
            f"{name} must be [heads, head dim] = {list(want)}, got {list(array.shape)}"
        )
    if not bool(torch.isfinite(array).all()):
        raise ValueError(f"{name} must be finite")


def soft_cap(logits: Tensor, softcap: float | None) -> Tensor:
    """cap * tanh(logits / cap), Gemma 2's logit soft-capping (None: the logits as they are)."""
    if softcap is None:
        return logits
    if isinstance(softcap, bool) or not isinstance(softcap, int | float) or not 0 < softcap < inf:
        raise ValueError(f"softcap must be a positive finite number, got {softcap!r}")
    return softcap * torch.tanh(logits / softcap)


def bias_logits(bias: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive logits with every masked entry as -inf, so all methods agree on 'masked'."""
    if bias.dtype == torch.bool:
        return torch.zeros(bias.shape, dtype=dtype, device=bias.device).masked_fill(
            ~bias, -torch.inf
        )
    masked = bias <= torch.finfo(bias.dtype).min / 2
    return bias.to(dtype).masked_fill(masked, -torch.inf)


def as_4d(bias: Tensor) -> Tensor:
    """Prepend singleton axes so the query axis is always dim -2."""
    return bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))


def split_bias(
    bias: Tensor | None, shape: tuple[int, int, int, int], dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    """(key_bias [B,H,1,Skv], full_bias [B,H,Sq,Skv]) as -inf-masked logits, at most one set.

    A bias that does not vary along the query axis is a per-key weight, which every method
    honours exactly; a [B,1,Sq,Skv] padding mask that was merely expanded counts as one.
    """
    if bias is None:
        return None, None
    b, h, _, skv = shape
    logits = bias_logits(as_4d(bias), dtype)
    if logits.shape[-2] == 1 or bool((logits == logits[..., :1, :]).all()):
        return logits[..., :1, :].expand(b, h, 1, skv), None
    return None, logits.expand(shape)


def key_weights(key_bias: Tensor | None, b: int, h: int, skv: int, like: Tensor) -> Tensor:
    """exp(key bias) per key, [B, H, Skv]: exp(s + b_j) = exp(s) w_j keeps masks exact."""
    if key_bias is None:
        return torch.ones(b, h, skv, dtype=like.dtype, device=like.device)
    kb = key_bias[..., 0, :]
    top = kb.amax(dim=-1, keepdim=True)
    return torch.exp(kb - torch.where(torch.isfinite(top), top, 0.0))


def masked_softmax_av(logits: Tensor, v: Tensor) -> Tensor:
    """softmax(logits) @ v with -inf masks; rows with nothing visible give zeros, not NaN."""
    top = logits.amax(dim=-1, keepdim=True)
    p = torch.exp(logits - torch.where(torch.isfinite(top), top, 0.0))
    den = p.sum(dim=-1, keepdim=True)
    return (p @ v) / torch.where(den > 0, den, 1.0)


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    is_causal: bool,
    bias: Tensor | None,
    window: int | None,
    allowed: Tensor | None = None,
    softcap: float | None = None,
) -> Tensor:
    """Masked softmax attention on the full score matrix; ``allowed`` adds a sparsity pattern."""
    check_inputs(q, k, v, bias, is_causal, window)
    k, v = expand_kv(k, v, q.shape[1])
    ct = compute_dtype(q.dtype)
    logits = scale * (q.to(ct) @ k.to(ct).transpose(-1, -2))
    logits = soft_cap(logits, softcap)
    if bias is not None:
        logits = logits + bias_logits(bias, ct)
    pattern = positions_mask(q.shape[2], k.shape[2], is_causal, window, q.device)
    if allowed is not None:
        pattern = allowed if pattern is None else pattern & allowed
    if pattern is not None:
        logits = logits.masked_fill(~pattern, -torch.inf)
    return masked_softmax_av(logits, v.to(ct)).to(q.dtype)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    is_causal: bool,
    bias: Tensor | None = None,
    window: int | None = None,
    chunks: int = 4,
    softcap: float | None = None,
) -> Tensor:
    """softmax(cap(scale q k^T) + bias + causal/window mask) v, exactly (cap: the logit
    soft-cap c * tanh(s / c) when ``softcap`` is given).

    Causal attention is computed in ``chunks`` query chunks, each against only the keys it can
    see (and, with a model window, not those before it): the same numbers as the full masked
    matrix, with about (chunks - 1) / (2 chunks) of its work and memory skipped. The ONNX body
    does the same; bidirectional attention has nothing to skip and is computed whole.
    """
    get("exact").validate(chunks=chunks)
    check_inputs(q, k, v, bias, is_causal, window)
    sq, skv = q.shape[2], k.shape[2]
    if not is_causal or chunks == 1:
        return dense_attention(
            q, k, v, scale=scale, is_causal=is_causal, bias=bias, window=window, softcap=softcap
        )
    parts = []
    for start, end, key_start, key_end in chunk_bounds(sq, skv, chunks, window):
        if key_end == key_start:  # queries left of every key see nothing: zeros, as whole
            parts.append(q.new_zeros((*q.shape[:2], end - start, v.shape[-1])))
            continue
        part_bias = None
        if bias is not None:
            part_bias = as_4d(bias)
            if part_bias.shape[-2] == sq:
                part_bias = part_bias[..., start:end, :]
            if part_bias.shape[-1] == skv:
                part_bias = part_bias[..., key_start:key_end]
        parts.append(
            dense_attention(
                q[:, :, start:end],
                k[:, :, key_start:key_end],
                v[:, :, key_start:key_end],
                scale=scale,
                is_causal=True,
                bias=part_bias,
                window=window,
                softcap=softcap,
            )
        )
    return torch.cat(parts, dim=2)


def chunk_bounds(
    sq: int, skv: int, chunks: int, window: int | None
) -> list[tuple[int, int, int, int]]:
    """(query start, end, key start, end) of each causal chunk, bottom-right aligned: query i
    sits at key position i + skv - sq and sees keys up to it (and from position - window + 1)."""
    size = -(-sq // chunks)
    offset = skv - sq
    bounds = []
    for index in range(chunks):
        start, end = min(index * size, sq), min((index + 1) * size, sq)
        key_end = max(min(end + offset, skv), 0)
        key_start = 0 if window is None else min(max(start + offset - window + 1, 0), key_end)
        bounds.append((start, end, key_start, key_end))
    return bounds
