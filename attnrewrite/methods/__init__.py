"""Reference maths of every attention method, by name, with a parameter spec.

Every method has the signature of :func:`attnrewrite.methods.exact.attention`, plus keyword
parameters of its own, whose defaults live in the function signature (the single source) and
whose checks live in the module's ``validate``. The registry adds what a caller needs beyond
the function: the parameter list with types and help, conversion of CLI strings, and what the
method can honour, so the tool can keep a block exact before calling it (the functions also
raise ValueError for anything they cannot honour).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from attnrewrite.methods import convbasis, exact, multipole, polysketch
from attnrewrite.methods import window as sliding

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


@dataclass(frozen=True)
class Method:
    """A method: its reference function, parameters and capabilities.

    ``full_bias``: accepts a bias that varies per query (otherwise only key-wise biases such as
    padding masks). ``window``: honours a causal sliding window narrower than the keys.
    """

    name: str
    attention: Callable[..., Tensor]
    validate: Callable[..., None]
    params: tuple[Param, ...]
    full_bias: bool
    window: bool
    summary: str

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


def _params(fn: Callable[..., Tensor], helps: Mapping[str, str]) -> tuple[Param, ...]:
    """Parameters read from the signature, so defaults cannot drift from the code."""
    hints = typing.get_type_hints(fn)
    return tuple(
        Param(name, par.default, hints[name], helps[name])
        for name, par in inspect.signature(fn).parameters.items()
        if name not in COMMON
    )


def _method(module: types.ModuleType, helps: Mapping[str, str], **flags: object) -> Method:
    """Registry entry of a method module."""
    name = module.__name__.rsplit(".", 1)[-1]
    summary = (module.__doc__ or "").strip().splitlines()[0]
    return Method(
        name=name,
        attention=module.attention,
        validate=module.validate,
        params=_params(module.attention, helps),
        summary=summary,
        **flags,
    )


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        _method(
            exact,
            {"chunks": "causal query chunks, each against only the keys it sees (1: whole)"},
            full_bias=True,
            window=True,
        ),
        _method(
            convbasis,
            {
                "bases": "k, conv bases per triangle (k >= n is exact)",
                "probe": "T, entries probed per column to find change points",
                "recovery": "change-point search: topk (vectorised) or binary (paper's)",
                "tol": "binary only: max pre-exp deviation before a new basis starts",
            },
            full_bias=True,
            window=True,
        ),
        _method(
            polysketch,
            {
                "degree": "p, even polynomial degree",
                "sketch_size": "r, sketch width (r^2 features after self-tensoring)",
                "block": "block size of the causal scan, a power of two",
                "variant": "sketch | mixed (exact diagonal blocks) | exact_poly (no sketch)",
                "fit": "softmax_fit (training-free fit to the head) | none (paper's LN kernel)",
                "seed": "seed of the sketch and of the fit's samples",
            },
            full_bias=False,
            window=False,
        ),
        _method(
            multipole,
            {
                "block": "m, finest block size (near field)",
                "coarse": "p, summaries per coarse group (must divide block)",
                "levels": "coarse levels used (0: all); the coarsest takes the rest",
            },
            full_bias=False,
            window=False,
        ),
        _method(
            sliding,
            {
                "width": "w, keys in the local band around each query",
                "sinks": "s, first keys always visible (attention sinks)",
            },
            full_bias=True,
            window=True,
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
