"""What the planner may put on a head, and what each costs at the target length.

Costs are floating-point operations per head for one sequence of length n (head dim d), from
the operation counts of each method's ONNX body, times the method's measured inefficiency in
onnxruntime relative to exact attention's MatMuls (EFFICIENCY). Without that factor the flop
counts were off by 30-80x for conv-basis (onnxruntime's DFT in float64 and a Loop over bases)
and by 0.7-2x for the others; `python benchmarks/cost_model.py RESULT.json` prints predicted
against measured speed-ups for a benchmark run (numbers in benchmarks/RESULTS.md).
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
        """Flop-equivalents per head at length n: flops times the measured inefficiency."""
        return self.flops(n, d, causal) * EFFICIENCY.get(self.method, 1.0)

    def flops(self, n: int, d: int, causal: bool) -> float:
        """Flops per head at length n (the model's shapes, not only the asymptotics)."""
        p = self.resolved()
        if self.method == "exact":
            return 4.0 * n * n * d
        if self.method == "window":
            reach = (2 if causal else 3) * p["width"]  # key blocks each query block gathers
            return 4.0 * n * (reach + p["sinks"]) * d
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


# Measured time per flop against exact attention's, one layer on 2 CPU threads at 4k-16k
# (benchmarks/cost_model.py on the attention_layer results; causal / bidirectional spread):
# conv-basis 30-80, multipole 1.2-2.1, PolySketch 0.7-1.7, window ~1.5.
EFFICIENCY = {"convbasis": 40.0, "multipole": 1.5, "polysketch": 1.0, "window": 1.5}

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
