"""What the planner may put on a head, and how much attention work each does at a length.

The planner ranks candidates by their measured time (plan.measure); the flop counts here say
how much of exact attention's work a plan removes, the number a user compares across machines.
`ORIGINAL` is attention as exported models compute it, the whole masked score matrix; `EXACT`
is the same attention in causal chunks (methods.exact), what a head kept exact runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from attnrewrite import methods as references
from attnrewrite.substitute.convbasis import DIRECT_CHUNKS


@dataclass(frozen=True)
class Candidate:
    """``fitted``: the method's per-head arrays fitted to each block's heads (plan.fit)."""

    method: str
    params: dict[str, int | float | str] = field(default_factory=dict)
    fitted: bool = False

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params.items())
        name = f"{self.method}({args})" if args else self.method
        return f"{name} fitted" if self.fitted else name

    def resolved(self) -> dict[str, object]:
        return references.get(self.method).resolve(self.params)

    def flops(self, n: int, d: int, causal: bool) -> float:
        """Flops per head at length n (the model's shapes, not only the asymptotics)."""
        p = self.resolved()
        if self.method == "exact":
            chunks = p["chunks"] if causal else 1
            return 4.0 * n * n * d * (chunks + 1) / (2 * chunks)
        if self.method == "window":
            reach = (2 if causal else 3) * p["width"]  # key blocks each query block gathers
            return 4.0 * n * (reach + p["sinks"]) * d
        if self.method == "multipole":
            levels = max(0, math.ceil(math.log2(max(n / p["block"], 1))) - 1)
            near = (2 if causal else 3) * p["block"]
            far = (2 if causal else 4) * p["coarse"] * levels + p["sinks"]
            return 4.0 * n * (near + far) * d + 2.0 * n * d * levels
        if self.method == "polysketch":
            r, b = p["sketch_size"], p["block"]
            sketch = 2.0 * n * (d + 1) * r * max(1, int(math.log2(p["degree"])))
            return sketch + 4.0 * n * r * r * (d + 1) + 4.0 * n * min(b, n) * (d + 1)
        if self.method == "convbasis":
            k, t = p["bases"], p["probe"]
            one = 2.0 * n * t * d + 2.0 * k * n * d  # change points and profiles
            if p["transform"] == "direct":  # the triangle, plus each chunk's square and band
                one += 2.0 * (d + 1) * n * n * (0.5 + 1.5 / DIRECT_CHUNKS)
            else:
                length = 1 << (2 * n - 1).bit_length()
                fft = 2.5 * length * math.log2(length)
                one += (k + (k + 1) * (d + 1)) * fft + 8.0 * k * (d + 1) * (length // 2)
            return one if causal else 2 * one
        if self.method == "verticalslash":
            estimate = 4.0 * min(p["last"], n) * n * d  # the last queries against every key
            return estimate + 4.0 * n * (p["vertical"] + p["slash"]) * d
        raise ValueError(f"no flop count for {self.method}")


ORIGINAL = Candidate("exact", {"chunks": 1})
EXACT = Candidate("exact")
# Chunking skips up to half of causal attention's work but adds nodes: which count is fastest
# depends on the length (tiny-lm, 4 layers: at n = 128, 8 chunks cost 33 ms against 19; at
# 2048, 395-510 ms against 540-810 for the whole matrix), so the planner times them all.
EXACT_CHUNKS = tuple(Candidate("exact", {"chunks": c}) for c in (1, 4, 8, 16))


def fitted_candidates(n: int) -> tuple[Candidate, ...]:
    """What `--method auto --calibrate` adds: multipole with each head's expansion points
    fitted, at the blocks SmolLM2's plans took most (fitting costs ~10 s a block each)."""
    return tuple(
        Candidate("multipole", {"block": s}, fitted=True) for s in (128, 256) if 4 * s <= n
    )


def default_candidates(n: int) -> tuple[Candidate, ...]:
    """What the planner tries at target length n: streaming heads (sinks + a recent window,
    DuoAttention's choice) and multipole at sizes well below n (a window or block of n / 2 or
    more is exact attention at greater cost), PolySketch and conv-basis at their defaults, and
    from 4k on MInference's vertical-slash pattern (below that it measured no faster than
    exact attention in onnxruntime: 440 against 212 ms for one layer at 2k)."""
    sizes = [s for s in (32, 64, 128, 256, 512, 1024) if 4 * s <= n]
    slash = [
        Candidate("verticalslash", {"vertical": v, "slash": s})
        for v, s in ((64, 128), (128, 256))
        if n >= 4096
    ]
    return (
        *(Candidate("window", {"width": s, "sinks": 4}) for s in sizes),
        *(Candidate("multipole", {"block": s}) for s in sizes if s <= 256),
        *slash,
        Candidate("polysketch", {}),
        # the transform named: cost tables timed the FFT form under "convbasis(bases=16)"
        Candidate("convbasis", {"bases": 16, "transform": "direct"}),
    )
