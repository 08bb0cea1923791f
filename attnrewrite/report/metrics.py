"""The numbers a report holds, computed from two models' outputs on the same inputs.

Definitions are in docs/report-schema.md; everything is computed in float64.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

ROWS = 256  # positions per chunk: float64 copies of [rows, vocab] stay small at any length


def _rows(x: np.ndarray) -> np.ndarray:
    """x as [positions, last axis] (a view where it can be)."""
    x = np.asarray(x)
    return x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)


def _chunks(*arrays: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """Matching float64 chunks of rows of each array: the sums below never hold a whole
    float64 copy of a [B, S, V] logits tensor (2 GB at n = 8192 for a 32k vocabulary)."""
    rows = [_rows(a) for a in arrays]
    for start in range(0, rows[0].shape[0], ROWS):
        yield tuple(r[start : start + ROWS].astype(np.float64) for r in rows)


def relative_l2(reference: np.ndarray, candidate: np.ndarray) -> float:
    """||y - x|| / ||x||: the size of the error against the size of the signal."""
    norm = error = 0.0
    for x, y in _chunks(reference, candidate):
        norm += float(np.sum(x * x))
        error += float(np.sum((y - x) ** 2))
    norm, error = norm**0.5, error**0.5
    return error / norm if norm > 0 else error


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    dot = xx = yy = 0.0
    for x, y in _chunks(reference, candidate):
        dot += float(np.sum(x * y))
        xx += float(np.sum(x * x))
        yy += float(np.sum(y * y))
    denominator = (xx * yy) ** 0.5
    if denominator > 0:
        return dot / denominator
    return float(np.array_equal(reference, candidate))


def tensor_metrics(name: str, reference: np.ndarray, candidate: np.ndarray) -> dict:
    worst = 0.0
    finite = True
    for x, y in _chunks(reference, candidate):
        if x.size:
            worst = max(worst, float(np.max(np.abs(y - x))))
        finite = finite and bool(np.isfinite(y).all())
    return {
        "name": name,
        "shape": list(np.shape(reference)),
        "max_abs": worst,
        "relative_l2": relative_l2(reference, candidate),
        "cosine": cosine(reference, candidate),
        "finite": finite,
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
    Computed over chunks of positions, never a whole float64 copy of the logits.
    """
    shape = np.shape(reference)[:-1]
    positions = np.ones(shape, dtype=bool)
    if keep is not None and keep.shape == positions.shape:
        positions = keep.astype(bool)
    agree = np.argmax(reference, -1) == np.argmax(candidate, -1)
    labels = None
    if token_ids is not None and token_ids.shape == shape and token_ids.shape[-1] > 1:
        labels = np.zeros(shape, dtype=np.int64)
        labels[..., :-1] = token_ids[..., 1:]
        scored = np.zeros(shape, dtype=bool)
        scored[..., :-1] = positions[..., 1:] & positions[..., :-1]
    kl = np.zeros(shape, dtype=np.float64).reshape(-1)
    nll = np.zeros((2, kl.size), dtype=np.float64)
    flat_labels = None if labels is None else labels.reshape(-1)
    for start, (x, y) in zip(range(0, kl.size, ROWS), _chunks(reference, candidate), strict=True):
        p_log, q_log = log_softmax(x), log_softmax(y)
        kl[start : start + len(x)] = (np.exp(p_log) * (p_log - q_log)).sum(-1)
        if flat_labels is not None:
            picked = flat_labels[start : start + len(x), None]
            nll[0, start : start + len(x)] = -np.take_along_axis(p_log, picked, -1)[:, 0]
            nll[1, start : start + len(x)] = -np.take_along_axis(q_log, picked, -1)[:, 0]
    kl = kl.reshape(shape)
    result = {
        "top1_agreement": float(agree[positions].mean()) if positions.any() else 1.0,
        "kl_original_rewritten": float(kl[positions].mean()) if positions.any() else 0.0,
        "perplexity_original": None,
        "perplexity_rewritten": None,
    }
    if flat_labels is not None and scored.any():
        mask = scored.reshape(-1)
        result["perplexity_original"] = float(np.exp(nll[0][mask].mean()))
        result["perplexity_rewritten"] = float(np.exp(nll[1][mask].mean()))
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
