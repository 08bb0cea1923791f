"""A declared method with its parameters, as the ONNX rewrite substitutes it.

The facts come from the method's declaration (`attnrewrite.methods`): its parameters, what it
honours, its op and what its body needs. Here they meet a block's signature: whether the block
can take the method, the node's attributes and the function overload it calls. The body itself
is `attnrewrite.substitute.<name>.build`, loaded on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from attnrewrite.errors import AttnRewriteError
from attnrewrite.methods import METHODS, Method
from attnrewrite.substitute.body import BodyBuilder
from attnrewrite.substitute.signature import Signature


@dataclass(frozen=True)
class ResolvedMethod:
    """A method with validated parameters, ready to substitute blocks; ``fitted``: the arrays
    [heads, head dim] its calibrated variant reads (`with_fitted`), one row per head of the
    node, which the rewrite writes as the node's initializers (empty: training-free)."""

    method: Method
    params: dict[str, int | float | str] = field(default_factory=dict)
    fitted: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def op_type(self) -> str:
        return self.method.onnx.op_type

    @property
    def min_opset(self) -> int:
        return self.method.onnx.min_opset

    def with_fitted(self, arrays: Mapping[str, np.ndarray]) -> ResolvedMethod:
        """This method reading `arrays`, every array its declaration names ([heads, d])."""
        declared = [f.name for f in self.method.fitted]
        if not declared or sorted(arrays) != sorted(declared):
            raise ValueError(f"{self.name} reads fitted arrays {declared}, got {sorted(arrays)}")
        checked = {name: np.ascontiguousarray(arrays[name], np.float32) for name in declared}
        for name, array in checked.items():
            if array.ndim != 2 or not array.size or not np.isfinite(array).all():
                raise ValueError(f"{self.name} {name} must be a finite [heads, head dim] array")
        return dataclasses.replace(self, fitted=checked)

    def for_heads(self, heads: Sequence[int]) -> ResolvedMethod:
        """The method on a group of a block's heads: the fitted arrays' rows of those heads."""
        rows = list(heads)
        return dataclasses.replace(self, fitted={k: v[rows] for k, v in self.fitted.items()})

    @property
    def build(self) -> BodyBuilder:
        """The function body's builder (imports the body module on first use)."""
        return importlib.import_module(f"attnrewrite.substitute.{self.name}").build

    def attributes(self) -> list[ir.Attr]:
        """The attributes every node of this method declares (values come from the node)."""
        common = [
            ir.AttrFloat32("scale", 1.0),
            ir.AttrInt64("is_causal", 0),
            ir.AttrInt64("window", 0),
        ]
        if self.method.softcap:
            common.append(ir.AttrFloat32("softcap", 1.0))
        return common + [ir.convenience.convert_attribute(k, v) for k, v in self.params.items()]

    def overload(self, sig: Signature) -> str:
        """The function overload for blocks of this signature (structural params included)."""
        parts = [sig.overload]
        if self.name != "exact" and sig.keywise:
            parts.append("keywise")
        if self.name == "exact" and sig.causal_in_bias:
            parts.append("maskcausal")
        if self.method.onnx.head_dim:
            if sig.head_dim is None:
                raise ValueError(f"{self.name} needs a static head dim; this block's is unknown")
            parts.append(f"d{sig.head_dim}")
        parts += [_token(k, self.params[k]) for k in self.method.onnx.structural]
        if self.fitted:
            parts.append("fitted")
        return "_".join(parts)

    def limit(self, sig: Signature) -> str | None:
        """Why a block of this signature cannot take the method (it then stays exact)."""
        method, onnx = self.method, self.method.onnx
        if sig.window and not method.window:
            return f"{self.name} cannot honour a sliding window narrower than the keys"
        if sig.softcap and not method.softcap:
            *others, last = (m.name for m in METHODS.values() if m.softcap)
            honour = f"{', '.join(others)} and {last}"
            return f"logit soft-capping is honoured by {honour} only"
        if sig.bias != "none" and not sig.keywise and not (method.full_bias and onnx.full_bias):
            who = self.name if not method.full_bias else f"the {self.name} body"
            return f"{who} honours only key-wise masks (padding), not per-query biases (ALiBi)"
        if not sig.causal and not method.bidirectional:
            return f"{self.name} is causal only; this block is bidirectional"
        if onnx.ranks is not None and sig.rank not in onnx.ranks:
            ranks = " and ".join(map(str, onnx.ranks))
            return f"{self.name} supports rank {ranks} operands, not rank {sig.rank}"
        if onnx.head_dim and sig.head_dim is None:
            return f"{self.name} bakes constants sized by the head dim, which is not static here"
        return None


def _token(name: str, value: object) -> str:
    text = f"{value:g}" if isinstance(value, float) and math.isfinite(value) else str(value)
    return f"{name}{text}".replace(".", "p").replace("-", "m")


def get_method(name: str, params: Mapping[str, object] | None = None) -> ResolvedMethod:
    """The method `name` with its parameters defaulted, converted and validated."""
    if name not in METHODS:
        raise AttnRewriteError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    method = METHODS[name]
    try:
        resolved = method.resolve(params)
    except ValueError as err:
        raise AttnRewriteError(str(err)) from None
    reason = method.onnx.refuses(resolved)
    if reason:
        raise AttnRewriteError(f"{name}: {reason}")
    return ResolvedMethod(method, resolved)
