"""The methods a user can ask for: parameters, ONNX op type and function body of each.

Parameters (names, defaults, validation) come from the torch reference registry,
`attnrewrite.methods`, so the rewritten node computes what the reference defines. Each method's
ONNX body lives in its own module here (`attnrewrite.substitute.<name>`) as a `MethodBody`,
loaded on first use (those modules import `MethodBody` from here).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import onnx_ir as ir

from attnrewrite import methods as references
from attnrewrite.errors import AttnRewriteError
from attnrewrite.substitute.body import BodyBuilder, Params
from attnrewrite.substitute.signature import Signature


def no_limits(sig: Signature, params: Params) -> str | None:
    return None


@dataclass(frozen=True)
class MethodBody:
    """How a method becomes an ONNX function.

    ``structural``: parameters the body bakes in (shapes, loop counts, constant matrices); they
    join the overload name so that nodes with other values get their own function. The other
    parameters are read from the node's attributes. ``head_dim``: the body holds constants
    sized by the head dim (which then joins the overload name too). ``limits``: why a block
    with this signature cannot use the method (it then stays exact, and the report says why).
    ``unsupported``: why a parameter setting has no ONNX body at all (an error for the user).
    """

    op_type: str
    build: BodyBuilder
    structural: tuple[str, ...] = ()
    head_dim: bool = False
    min_opset: int = 13
    limits: Callable[[Signature, Params], str | None] = no_limits
    unsupported: Callable[[Params], str | None] = lambda params: None


BODIES = ("exact", "convbasis", "polysketch", "multipole", "window", "verticalslash")  # a BODY each
METHOD_NAMES = BODIES


def _body(name: str) -> MethodBody:
    return importlib.import_module(f"attnrewrite.substitute.{name}").BODY


@dataclass(frozen=True)
class Method:
    """A method with resolved parameters, ready to substitute blocks."""

    name: str
    body: MethodBody
    params: dict[str, int | float | str] = field(default_factory=dict)

    @property
    def op_type(self) -> str:
        return self.body.op_type

    def attributes(self) -> list[ir.Attr]:
        """The attributes every node of this method declares (values come from the node)."""
        common = [
            ir.AttrFloat32("scale", 1.0),
            ir.AttrInt64("is_causal", 0),
            ir.AttrInt64("window", 0),
        ]
        return common + [ir.convenience.convert_attribute(k, v) for k, v in self.params.items()]

    def overload(self, sig: Signature) -> str:
        """The function overload for blocks of this signature (structural params included)."""
        parts = [sig.overload]
        if self.name != "exact" and sig.keywise:
            parts.append("keywise")
        if self.body.head_dim:
            if sig.head_dim is None:
                raise ValueError(f"{self.name} needs a static head dim; this block's is unknown")
            parts.append(f"d{sig.head_dim}")
        parts += [_token(k, self.params[k]) for k in self.body.structural]
        return "_".join(parts)

    def limit(self, sig: Signature) -> str | None:
        return self.body.limits(sig, self.params)


def _token(name: str, value: object) -> str:
    text = f"{value:g}" if isinstance(value, float) and math.isfinite(value) else str(value)
    return f"{name}{text}".replace(".", "p").replace("-", "m")


def get_method(name: str, params: Mapping[str, object] | None = None) -> Method:
    """The method `name` with its parameters defaulted, converted and validated."""
    if name not in BODIES:
        raise AttnRewriteError(f"unknown method '{name}'; choose one of {', '.join(BODIES)}")
    try:
        resolved = references.get(name).resolve(params)
    except ValueError as err:
        raise AttnRewriteError(str(err)) from None
    body = _body(name)
    reason = body.unsupported(resolved)
    if reason:
        raise AttnRewriteError(f"{name}: {reason}")
    return Method(name, body, resolved)
