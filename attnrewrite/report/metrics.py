"""The numbers a report holds, computed from two models' outputs on the same inputs.

Definitions are in docs/report-schema.md; everything is computed in float64.
"""

from __future__ import annotations

import numpy as np


def relative_l2(reference: np.ndarray, candidate: np.ndarray) -> float:
    """||y - x|| / ||x||: the size of the error against the size of the signal."""
    x = np.asarray(reference, np.float64)
    y = np.asarray(candidate, np.float64)
    norm = float(np.linalg.norm(x))
    error = float(np.linalg.norm(y - x))
    return error / norm if norm > 0 else error


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    x = np.asarray(reference, np.float64).ravel()
    y = np.asarray(candidate, np.float64).ravel()
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / denominator if denominator > 0 else float(np.array_equal(x, y))


def tensor_metrics(name: str, reference: np.ndarray, candidate: np.ndarray) -> dict:
    x = np.asarray(reference, np.float64)
    y = np.asarray(candidate, np.float64)
    return {
        "name": name,
        "shape": list(x.shape),
        "max_abs": float(np.max(np.abs(y - x))) if x.size else 0.0,
        "relative_l2": relative_l2(x, y),
        "cosine": cosine(x, y),
        "finite": bool(np.isfinite(y).all()),
    }


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def logits_metrics(
    reference: np.ndarray,
    candidate: np.ndarray,
    token_ids: np.ndarray | None,
    keep: np.ndarray | None,
) -> dict:
    """Top-1 agreement, KL(original || rewritten) and, with token ids, both perplexities.

    `reference`/`candidate` are [..., S, V]; `token_ids` [B, S] give next-token labels
    (position t predicts id t + 1); `keep` [B, S] (1 = real token) excludes padding.
    """
    p_log = log_softmax(reference)
    q_log = log_softmax(candidate)
    positions = np.ones(p_log.shape[:-1], dtype=bool)
    if keep is not None and keep.shape == positions.shape:
        positions = keep.astype(bool)
    agree = np.argmax(reference, -1) == np.argmax(candidate, -1)
    kl = (np.exp(p_log) * (p_log - q_log)).sum(-1)
    result = {
        "top1_agreement": float(agree[positions].mean()) if positions.any() else 1.0,
        "kl_original_rewritten": float(kl[positions].mean()) if positions.any() else 0.0,
        "perplexity_original": None,
        "perplexity_rewritten": None,
    }
    if token_ids is not None and token_ids.shape == p_log.shape[:-1] and token_ids.shape[-1] > 1:
        labels = token_ids[..., 1:]
        scored = positions[..., 1:] & positions[..., :-1]
        for key, logp in (("perplexity_original", p_log), ("perplexity_rewritten", q_log)):
            picked = np.take_along_axis(logp[..., :-1, :], labels[..., None], -1)[..., 0]
            result[key] = float(np.exp(-picked[scored].mean())) if scored.any() else None
    return result


def per_head(reference: np.ndarray, candidate: np.ndarray, heads: int | None) -> list[float] | None:
    """Relative L2 per head of a block output [B, H, S, d], or [B, S, H*d] with H known."""
    x = np.asarray(reference, np.float64)
    y = np.asarray(candidate, np.float64)
    if x.ndim == 4 and (heads is None or x.shape[1] == heads):
        split = [(x[:, h], y[:, h]) for h in range(x.shape[1])]
    elif x.ndim == 3 and heads and x.shape[-1] % heads == 0:
        shape = (*x.shape[:-1], heads, x.shape[-1] // heads)
        xs, ys = x.reshape(shape), y.reshape(shape)
        split = [(xs[..., h, :], ys[..., h, :]) for h in range(heads)]
    else:
        return None
    return [relative_l2(a, b) for a, b in split]
