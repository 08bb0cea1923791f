"""The attention methods, each declared once: parameters, what it honours, its ONNX op.

Every stage reads these declarations: the command line (flags, help, conversion of strings),
the ONNX rewrite (which blocks a method can take, the node and function it writes), the planner,
the report and the torch rewrite. The registry imports neither torch nor onnx, so the command
line can list the methods and check their parameters, and an ONNX rewrite runs, without them.

The code is in two modules per method, loaded on first use: ``attnrewrite.methods.<name>`` is the
float64-capable torch reference (its ``attention`` repeats the defaults declared here;
tests/methods/test_registry.py keeps them equal), ``attnrewrite.substitute.<name>.build`` writes
the same computation as an ONNX function body.
"""

from __future__ import annotations

import importlib
import math
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

COMMON = ("q", "k", "v", "scale", "is_causal", "bias", "window", "softcap")
MAX_SIZE = 1 << 10  # the largest size parameter (see attnrewrite.methods.exact)
MAX_CHUNKS = 64  # more query chunks only add nodes: the skipped work is already ~(c-1)/2c
MAX_LEVELS = 20  # levels double the group: 20 reach a million tokens (the body shifts by it)
MAX_DEGREE = 16  # beyond this the features are all rounding error in float32
MAX_SKETCH = 1 << 6  # r^2 = 4096 features per token (256: 18 GB at block 4096)
MAX_BUDGET = 1 << 16  # keys, offsets or estimate queries: beyond this the pattern is not sparse
SEEDS = (-(1 << 63), (1 << 63) - 1)


@dataclass(frozen=True)
class Param:
    """One method parameter: its type is its default's (int, float or str, all ONNX attributes).

    Numbers lie in [least, most] (ints at most MAX_SIZE unless said), strings in ``choices``.
    """

    name: str
    default: int | float | str
    help: str
    least: int | float | None = None
    most: int | None = MAX_SIZE
    choices: tuple[str, ...] = ()

    @property
    def kind(self) -> type:
        return type(self.default)

    def coerce(self, value: object) -> object:
        """CLI values arrive as strings; other values pass through to validation."""
        if not isinstance(value, str) or self.kind is str:
            return value
        try:
            return self.kind(value)
        except ValueError as err:
            raise ValueError(f"{self.name}={value!r} is not a valid {self.kind.__name__}") from err

    def check(self, owner: str, value: object) -> None:
        """ValueError naming the method and parameter when `value` is out of its range."""
        name = f"{owner} {self.name}"
        if self.kind is str:
            if value not in self.choices:
                raise ValueError(f"{name} must be one of {self.choices}, got {value!r}")
            return
        number = int if self.kind is int else int | float
        low = -math.inf if self.least is None else self.least
        if isinstance(value, bool) or not isinstance(value, number) or not value >= low:
            what = "an int" if self.kind is int else "a number"
            raise ValueError(f"{name} must be {what} >= {low}, got {value!r}")
        if self.most is not None and value > self.most:
            raise ValueError(f"{name} must be at most {self.most}, got {value}")


@dataclass(frozen=True)
class Fitted:
    """A per-head array [heads, head dim] that calibration fits to a trained model's heads
    (`attnrewrite.plan.fit`) and the node reads as an extra input; the reference takes it as
    a keyword defaulting to None, the method's training-free form, which zeros also give."""

    name: str
    help: str


def _no_rule(params: Mapping[str, object]) -> str | None:
    return None


@dataclass(frozen=True)
class OnnxOp:
    """How the ONNX rewrite writes the method: one ``op_type`` node per block, calling a
    function that ``attnrewrite.substitute.<method>.build`` writes.

    ``structural``: parameters the body bakes in (shapes, loop counts, constant matrices); they
    join the function's overload name, so nodes with other values get their own function (the
    others are read from the node's attributes). ``head_dim``: the body holds constants sized by
    the head dim, which must then be static. ``ranks``: operand ranks the body takes (None:
    any). ``full_bias``: False where the body honours only key-wise biases though the method
    honours more. ``refuses``: why a parameter setting has no body (an error for the user).
    """

    op_type: str
    structural: tuple[str, ...] = ()
    head_dim: bool = False
    min_opset: int = 13
    ranks: tuple[int, ...] | None = (3, 4)
    full_bias: bool = True
    refuses: Callable[[Mapping[str, object]], str | None] = _no_rule


@dataclass(frozen=True)
class Method:
    """A method: its parameters, what it honours, its ONNX op, and (on first use) its reference.

    ``rule``: a check across parameters (the ranges are the params'), returning why they do
    not fit together. ``full_bias``: accepts a bias that varies per query (otherwise only
    key-wise biases such as padding masks). ``window``: honours a causal sliding window narrower
    than the keys. ``softcap``: honours a logit soft-cap (Gemma 2's cap * tanh(s / cap) on the
    scaled scores, before the mask; its reference then takes ``softcap``). ``bidirectional``:
    computes non-causal attention (otherwise causal only).
    ``exact_up_to``: for given parameters, the longest key sequence the method computes exactly
    by construction, with or without a causal mask (inf for exact; None when no length is, as
    for PolySketch's fitted kernel): a report at that length has not exercised the
    approximation. (A causal window is exact a little further: its sinks add keys.)
    ``fitted``: arrays a calibrated variant reads (`Fitted`).
    """

    name: str
    params: tuple[Param, ...]
    onnx: OnnxOp
    full_bias: bool
    window: bool
    softcap: bool = False
    bidirectional: bool = True
    rule: Callable[[Mapping[str, object]], str | None] = _no_rule
    exact_up_to: Callable[[Mapping[str, object]], float | None] = lambda params: None
    fitted: tuple[Fitted, ...] = ()

    @property
    def module(self) -> types.ModuleType:
        """attnrewrite.methods.<name>: the torch reference (imports torch)."""
        return importlib.import_module(f"{__name__}.{self.name}")

    @property
    def attention(self) -> Callable[..., Tensor]:
        return self.module.attention

    @property
    def summary(self) -> str:
        """The first line of the reference module's docstring."""
        return (self.module.__doc__ or "").strip().splitlines()[0]

    def validate(self, **params: object) -> None:
        """ValueError unless `params` (all of them) are in range and fit together."""
        for p in self.params:
            p.check(self.name, params[p.name])
        problem = self.rule(params)
        if problem:
            raise ValueError(f"{self.name} {problem}")

    def resolve(self, given: Mapping[str, object] | None = None) -> dict[str, object]:
        """All parameters: defaults filled in, strings converted, values validated."""
        given = dict(given or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {unknown}; known: {list(known)}")
        out = {
            p.name: p.coerce(given[p.name]) if p.name in given else p.default
            for p in known.values()
        }
        self.validate(**out)
        return out

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        scale: float,
        is_causal: bool,
        bias: Tensor | None = None,
        window: int | None = None,
        softcap: float | None = None,
        **params: object,
    ) -> Tensor:
        """Run the method with validated parameters (and fitted arrays, by name); a soft-cap
        only where the method honours one (ValueError otherwise)."""
        extra = {f.name: params.pop(f.name) for f in self.fitted if f.name in params}
        if softcap is not None:
            if not self.softcap:
                raise ValueError(f"{self.name} cannot honour logit soft-capping")
            extra["softcap"] = softcap
        return self.attention(
            q,
            k,
            v,
            scale=scale,
            is_causal=is_causal,
            bias=bias,
            window=window,
            **self.resolve(params),
            **extra,
        )


def _binary_has_no_body(p: Mapping[str, object]) -> str | None:
    if p["recovery"] == "topk":
        return None
    return "recovery='binary' is a sequential search with no ONNX body; use recovery=topk (default)"


def _polysketch_rule(p: Mapping[str, object]) -> str | None:
    """The squaring trick needs an even degree; the block scan needs a power-of-two block."""
    if p["degree"] % 2:
        return f"degree must be even (non-negative features), got {p['degree']}"
    if p["block"] & (p["block"] - 1):
        return f"block must be a power of two, got {p['block']}"
    return None


def _budget(name: str, default: int, help: str, least: int) -> Param:
    """A verticalslash budget: keys, offsets or queries, sparse only up to MAX_BUDGET."""
    return Param(name, default, help, least=least, most=MAX_BUDGET)


def _verticalslash_rule(p: Mapping[str, object]) -> str | None:
    """The forced keys and offsets are part of their budgets."""
    if p["sinks"] > p["vertical"]:
        return f"sinks={p['sinks']} must not exceed vertical={p['vertical']}"
    if p["local"] > p["slash"]:
        return f"local={p['local']} must not exceed slash={p['slash']}"
    return None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "exact",
            (
                Param(
                    "chunks",
                    4,
                    "causal query chunks, each against only the keys it sees (1: whole)",
                    least=1,
                    most=MAX_CHUNKS,
                ),
            ),
            OnnxOp("ExactAttention", structural=("chunks",), ranks=None),
            full_bias=True,
            window=True,
            softcap=True,
            exact_up_to=lambda p: math.inf,
        ),
        Method(
            "convbasis",
            (
                Param("bases", 16, "k, conv bases per triangle (k >= n is exact)", least=1),
                Param("probe", 8, "T, entries probed per column to find change points", least=1),
                Param(
                    "recovery",
                    "topk",
                    "change-point search: topk (vectorised) or binary (paper's)",
                    choices=("topk", "binary"),
                ),
                Param(
                    "tol",
                    0.25,
                    "binary only: max pre-exp deviation before a new basis starts",
                    least=0,
                    most=None,
                ),
                Param(
                    "transform",
                    "direct",
                    "how the k convolutions are applied: direct (Toeplitz blocks as matrix "
                    "products, O(n^2), fast where FFTs are slow) or fft (O(n log n))",
                    choices=("direct", "fft"),
                ),
            ),
            OnnxOp(
                "ConvBasisAttention",
                structural=("transform",),
                min_opset=17,
                full_bias=False,
                refuses=_binary_has_no_body,
            ),
            full_bias=True,
            window=True,
            exact_up_to=lambda p: p["bases"],  # one basis per position
            fitted=(
                Fitted(
                    "center",
                    "c, a query point: the bases model (q - c).k, and c.k, the part every "
                    "query shares, is applied exactly as a key-wise weight exp(scale c.k)",
                ),
            ),
        ),
        Method(
            "polysketch",
            (
                Param("degree", 4, "p, even polynomial degree", least=1, most=MAX_DEGREE),
                Param(
                    "sketch_size",
                    32,
                    "r, sketch width (r^2 features after self-tensoring)",
                    least=1,
                    most=MAX_SKETCH,
                ),
                Param("block", 256, "block size of the causal scan, a power of two", least=1),
                Param(
                    "variant",
                    "mixed",
                    "sketch | mixed (exact diagonal blocks) | exact_poly (no sketch)",
                    choices=("sketch", "mixed", "exact_poly"),
                ),
                Param(
                    "fit",
                    "softmax_fit",
                    "softmax_fit (training-free fit to the head) | none (paper's LN kernel)",
                    choices=("none", "softmax_fit"),
                ),
                Param(
                    "seed",
                    0,
                    "seed of the sketch and of the fit's samples",
                    least=SEEDS[0],
                    most=SEEDS[1],
                ),
            ),
            OnnxOp(
                "PolySketchAttention",
                structural=("degree", "sketch_size", "seed", "variant", "fit"),
                head_dim=True,
            ),
            full_bias=False,
            window=False,
            rule=_polysketch_rule,
            fitted=(
                Fitted("query_gain", "g_q, per-dimension query gains: q -> q o (1 + g_q)"),
                Fitted("key_gain", "g_k, per-dimension key gains: k -> k o (1 + g_k)"),
                Fitted(
                    "key_shift",
                    "c, added to the keys after their gain: q.c shifts each query's row of "
                    "the polynomial's base, which softmax ignores and the polynomial does not",
                ),
            ),
        ),
        Method(
            "multipole",
            (
                Param("block", 64, "m, finest block size (near field)", least=1),
                Param("coarse", 1, "p, summaries per coarse group (must divide block)", least=1),
                Param(
                    "levels",
                    0,
                    "coarse levels used (0: all); the coarsest takes the rest",
                    least=0,
                    most=MAX_LEVELS,
                ),
                Param("sinks", 4, "s, first keys always attended exactly, never pooled", least=0),
            ),
            OnnxOp("MultipoleAttention", structural=("block", "coarse", "levels", "sinks")),
            full_bias=False,
            window=False,
            rule=lambda p: (
                f"coarse={p['coarse']} must divide block={p['block']}"
                if p["block"] % p["coarse"]
                else None
            ),
            exact_up_to=lambda p: 2 * p["block"],  # two blocks are all near field
            fitted=(
                Fitted(
                    "expansion",
                    "the query point u around which each far group's log-sum-exp is expanded: "
                    "keys and values pooled with weights exp(u.k), not averaged",
                ),
            ),
        ),
        Method(
            "window",
            (
                Param("width", 64, "w, keys in the local band around each query", least=1),
                Param("sinks", 4, "s, first keys always visible (attention sinks)", least=0),
            ),
            OnnxOp("WindowAttention", structural=("width", "sinks")),
            full_bias=True,
            window=True,
            softcap=True,
            exact_up_to=lambda p: p["width"],  # every key in the band (causal: + sinks)
        ),
        Method(
            "verticalslash",
            (
                _budget("vertical", 64, "key columns kept per head, sinks included", 1),
                _budget(
                    "slash", 128, "diagonals (query - key offsets) kept per head, local included", 1
                ),
                _budget(
                    "last", 64, "last queries whose attention ranks the columns and diagonals", 1
                ),
                _budget("sinks", 4, "first keys always kept as columns", 0),
                _budget("local", 64, "offsets 0 .. local-1 always kept (the recent window)", 0),
            ),
            OnnxOp("VerticalSlashAttention", structural=("vertical", "slash", "local")),
            full_bias=True,
            window=True,
            softcap=True,
            bidirectional=False,
            rule=_verticalslash_rule,
            exact_up_to=lambda p: max(p["vertical"], p["slash"]),  # every key or every offset
        ),
    )
}


def get(name: str) -> Method:
    """The registered method, or a ValueError listing the known names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown attention method {name!r}; known: {list(METHODS)}") from None


__all__ = ["COMMON", "METHODS", "Fitted", "Method", "OnnxOp", "Param", "get"]
