"""PolySketch's seeded draws, from numpy: what its torch reference and its ONNX body share.

Both bake the same numbers (sketch matrices, the fit's sample fractions), and a rewrite draws
them without importing torch. ``seed`` draws the sketch, ``seed + 1`` the fit's sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIT_ROWS, FIT_KEYS, FIT_GRID = 32, 64, 128
FRACTION_BITS = 31  # the fit samples indices floor(u * span) with u = i / 2^31
MAX_EXACT_FEATURES = 1 << 12  # per token; wider heads use the dense formula


def _generator(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed % (1 << 64))  # every int64 seed, negative ones too


@dataclass(frozen=True)
class Sketch:
    """One node of the sketch tree: phi(a) = (phi_left(a) g1) o (phi_right(a) g2) / sqrt(width),
    a leaf (no children) is a itself; ``width`` is the node's feature count."""

    left: Sketch | None
    right: Sketch | None
    g1: np.ndarray | None
    g2: np.ndarray | None
    width: int


def sketch_tree(width: int, half: int, sketch_size: int, seed: int) -> Sketch:
    """phi_half's Gaussian matrices for features of `width`: left subtree, right, then G1, G2."""
    gen = _generator(seed)

    def walk(w: int, h: int) -> Sketch:
        if h == 1:
            return Sketch(None, None, None, None, w)
        left = walk(w, (h + 1) // 2)
        right = walk(w, h // 2)
        g1 = gen.standard_normal((left.width, sketch_size))
        g2 = gen.standard_normal((right.width, sketch_size))
        return Sketch(left, right, g1, g2, sketch_size)

    return walk(width, half)


def fit_fractions(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fit's sample as fixed fractions u / 2^FRACTION_BITS: rows [R], keys [R, M] (int64).

    Their shapes do not depend on the lengths, so a graph can bake them as constants and draw
    the same sample at any run-time length.
    """
    gen = _generator(seed + 1)
    high = 1 << FRACTION_BITS
    return gen.integers(0, high, FIT_ROWS), gen.integers(0, high, (FIT_ROWS, FIT_KEYS))
