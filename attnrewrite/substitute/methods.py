"""The methods a user can ask for, their ONNX op types, parameters and function bodies."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from attnrewrite.errors import AttnRewriteError
from attnrewrite.substitute.body import BodyBuilder
from attnrewrite.substitute.exact import exact_body

METHOD_NAMES = ("exact", "convbasis", "polysketch", "multipole")


@dataclass(frozen=True)
class Method:
    name: str
    op_type: str
    body: BodyBuilder
    params: dict[str, int | float | str] = field(default_factory=dict)

    def attributes(self) -> list[ir.Attr]:
        """The attributes every node of this method declares (values come from the node)."""
        common = [
            ir.AttrFloat32("scale", 1.0),
            ir.AttrInt64("is_causal", 0),
            ir.AttrInt64("window", 0),
        ]
        return common + [ir.convenience.convert_attribute(k, v) for k, v in self.params.items()]


def get_method(name: str, params: dict[str, int | float | str] | None = None) -> Method:
    if name == "exact":
        return Method("exact", "ExactAttention", exact_body, dict(params or {}))
    if name in METHOD_NAMES:
        raise AttnRewriteError(
            f"method '{name}' is not available yet in this version; use --method exact"
        )
    raise AttnRewriteError(f"unknown method '{name}'; choose one of {', '.join(METHOD_NAMES)}")
