"""What the planner may put on a head, and what each costs at the target length.

Costs are floating-point operations per head for one sequence of length n (head dim d), from
the operation counts of each method's ONNX body; they rank candidates, and
benchmarks/attention_layer.py checks them against measured onnxruntime time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from attnrewrite import methods as references


@dataclass(frozen=True)
class Candidate:
    method: str
    params: dict[str, int | float | str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.method}({args})" if args else self.method

    def resolved(self) -> dict[str, object]:
        return references.get(self.method).resolve(self.params)

    def cost(self, n: int, d: int, causal: bool) -> float:
        """Flops per head at length n (the model's shapes, not only the asymptotics)."""
        p = self.resolved()
        if self.method == "exact":
            return 4.0 * n * n * d
        if self.method == "window":
            return 4.0 * n * (2 * p["width"] + p["sinks"]) * d
        if self.method == "multipole":
            levels = max(0, math.ceil(math.log2(max(n / p["block"], 1))) - 1)
            near = (2 if causal else 3) * p["block"]
            far = (2 if causal else 4) * p["coarse"] * levels
            return 4.0 * n * (near + far) * d + 2.0 * n * d * levels
        if self.method == "polysketch":
            r, b = p["sketch_size"], p["block"]
            sketch = 2.0 * n * (d + 1) * r * max(1, int(math.log2(p["degree"])))
            return sketch + 4.0 * n * r * r * (d + 1) + 4.0 * n * min(b, n) * (d + 1)
        if self.method == "convbasis":
            k, t = p["bases"], p["probe"]
            length = 1 << (2 * n - 1).bit_length()
            fft = 2.5 * length * math.log2(length)
            one = 2.0 * n * t * d + 2.0 * k * n * d + (k + (k + 1) * (d + 1)) * fft
            one += 8.0 * k * (d + 1) * (length // 2)
            return one if causal else 2 * one
        raise ValueError(f"no cost model for {self.method}")


DEFAULT_CANDIDATES = (
    Candidate("window", {"width": 32, "sinks": 4}),
    Candidate("window", {"width": 64, "sinks": 4}),
    Candidate("window", {"width": 128, "sinks": 4}),
    Candidate("multipole", {"block": 32}),
    Candidate("multipole", {"block": 64}),
    Candidate("multipole", {"block": 128}),
    Candidate("polysketch", {}),
    Candidate("polysketch", {"sketch_size": 64}),
    Candidate("convbasis", {"bases": 16}),
    Candidate("convbasis", {"bases": 64}),
)
EXACT = Candidate("exact")
