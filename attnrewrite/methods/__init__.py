"""Registry of the attention methods: names, parameters and what each method can honour.

The registry imports no torch, so the command line can list the methods and their options
(and answer --help) without it. Each method's maths lives in ``attnrewrite.methods.<name>``
(float64-capable torch references, loaded on first use): its ``attention`` function, whose
signature repeats the defaults declared here (tests/methods/test_registry.py keeps them
equal), and its ``validate``, which checks a full set of parameters. The registry adds what
a caller needs beyond the function: parameter types and help, conversion of CLI strings,
and what the method can honour, so the tool can keep a block exact before calling it (the
functions also raise ValueError for anything they cannot honour).
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

COMMON = ("q", "k", "v", "scale", "is_causal", "bias", "window")


@dataclass(frozen=True)
class Param:
    """One method parameter: ``kind`` is int, float or str (all fit an ONNX attribute)."""

    name: str
    default: int | float | str
    kind: type
    help: str

    def coerce(self, value: object) -> object:
        """CLI values arrive as strings; other values pass through to validation."""
        if not isinstance(value, str) or self.kind is str:
            return value
        try:
            return self.kind(value)
        except ValueError as err:
            raise ValueError(f"{self.name}={value!r} is not a valid {self.kind.__name__}") from err


def _param(name: str, default: int | float | str, help: str) -> Param:
    return Param(name, default, type(default), help)


@dataclass(frozen=True)
class Method:
    """A method: its parameters, its capabilities, and (loaded on first use) its reference.

    ``full_bias``: accepts a bias that varies per query (otherwise only key-wise biases such as
    padding masks). ``window``: honours a causal sliding window narrower than the keys.
    ``bidirectional``: computes non-causal attention (otherwise causal only).
    ``exact_up_to``: for given parameters, the longest key sequence the method computes exactly
    by construction, with or without a causal mask (inf for exact; None when no length is, as
    for PolySketch's fitted kernel): a report at that length has not exercised the
    approximation. (A causal window is exact a little further: its sinks add keys.)
    """

    name: str
    params: tuple[Param, ...]
    full_bias: bool
    window: bool
    bidirectional: bool = True
    exact_up_to: Callable[[Mapping[str, object]], float | None] = lambda params: None

    @property
    def module(self) -> types.ModuleType:
        """attnrewrite.methods.<name>: the torch reference (imports torch)."""
        return importlib.import_module(f"{__name__}.{self.name}")

    @property
    def attention(self) -> Callable[..., Tensor]:
        return self.module.attention

    @property
    def validate(self) -> Callable[..., None]:
        return self.module.validate

    @property
    def summary(self) -> str:
        """The first line of the reference module's docstring."""
        return (self.module.__doc__ or "").strip().splitlines()[0]

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
        **params: object,
    ) -> Tensor:
        """Run the method with validated parameters."""
        return self.attention(
            q,
            k,
            v,
            scale=scale,
            is_causal=is_causal,
            bias=bias,
            window=window,
            **self.resolve(params),
        )


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "exact",
            (
                _param(
                    "chunks",
                    4,
                    "causal query chunks, each against only the keys it sees (1: whole)",
                ),
            ),
            full_bias=True,
            window=True,
            exact_up_to=lambda p: math.inf,
        ),
        Method(
            "convbasis",
            (
                _param("bases", 16, "k, conv bases per triangle (k >= n is exact)"),
                _param("probe", 8, "T, entries probed per column to find change points"),
                _param(
                    "recovery", "topk", "change-point search: topk (vectorised) or binary (paper's)"
                ),
                _param("tol", 0.25, "binary only: max pre-exp deviation before a new basis starts"),
            ),
            full_bias=True,
            window=True,
            exact_up_to=lambda p: p["bases"],  # one basis per position
        ),
        Method(
            "polysketch",
            (
                _param("degree", 4, "p, even polynomial degree"),
                _param("sketch_size", 32, "r, sketch width (r^2 features after self-tensoring)"),
                _param("block", 256, "block size of the causal scan, a power of two"),
                _param(
                    "variant",
                    "mixed",
                    "sketch | mixed (exact diagonal blocks) | exact_poly (no sketch)",
                ),
                _param(
                    "fit",
                    "softmax_fit",
                    "softmax_fit (training-free fit to the head) | none (paper's LN kernel)",
                ),
                _param("seed", 0, "seed of the sketch and of the fit's samples"),
            ),
            full_bias=False,
            window=False,
        ),
        Method(
            "multipole",
            (
                _param("block", 64, "m, finest block size (near field)"),
                _param("coarse", 1, "p, summaries per coarse group (must divide block)"),
                _param("levels", 0, "coarse levels used (0: all); the coarsest takes the rest"),
                _param("sinks", 4, "s, first keys always attended exactly, never pooled"),
            ),
            full_bias=False,
            window=False,
            exact_up_to=lambda p: 2 * p["block"],  # two blocks are all near field
        ),
        Method(
            "window",
            (
                _param("width", 64, "w, keys in the local band around each query"),
                _param("sinks", 4, "s, first keys always visible (attention sinks)"),
            ),
            full_bias=True,
            window=True,
            exact_up_to=lambda p: p["width"],  # every key in the band (causal: + sinks)
        ),
        Method(
            "verticalslash",
            (
                _param("vertical", 64, "key columns kept per head, sinks included"),
                _param(
                    "slash", 128, "diagonals (query - key offsets) kept per head, local included"
                ),
                _param("last", 64, "last queries whose attention ranks the columns and diagonals"),
                _param("sinks", 4, "first keys always kept as columns"),
                _param("local", 64, "offsets 0 .. local-1 always kept (the recent window)"),
            ),
            full_bias=True,
            window=True,
            bidirectional=False,
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


__all__ = ["COMMON", "METHODS", "Method", "Param", "get"]
