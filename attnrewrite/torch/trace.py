"""Trace a module with torch.export: strict (TorchDynamo) first, non-strict when that fails.

Every axis of every tensor input is dynamic by default (``Dim.AUTO``: torch.export keeps an
axis symbolic unless the model fixes it), so the result runs at other sequence lengths and
batch sizes than the example's. transformers' KV caches are registered as pytree nodes, so a
model returning its DynamicCache (the default config, use_cache=True) traces as it is.

A model neither mode can trace gets one line naming the mode errors and the user code line
where tracing stopped (data-dependent control flow, an unsupported Python construct, ...).
"""

from __future__ import annotations

import inspect
import os
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from attnrewrite.errors import AttnRewriteError

TORCH_DIR = os.path.dirname(torch.__file__)
AUTO = "auto"  # dynamic_shapes: every axis of every tensor input dynamic where the model allows
CACHE_HINT = (
    "; the model returns a transformers KV cache torch.export cannot flatten: pass "
    "use_cache=False with the inputs or set model.config.use_cache = False"
)


@dataclass(frozen=True)
class ExampleInputs:
    """Positional and keyword example inputs together (as ExportedProgram.example_inputs)."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A dict is keyword arguments (a batch), a tuple or list positional ones, else one input."""
    if isinstance(example_inputs, ExampleInputs):
        return tuple(example_inputs.args), dict(example_inputs.kwargs)
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, tuple | list):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def trace(
    model: nn.Module,
    example_inputs: Any,
    strict: bool | None = None,
    dynamic_shapes: Any = AUTO,
) -> torch.export.ExportedProgram:
    """ExportedProgram of `model`; ``strict=None`` tries strict and falls back to non-strict.
    ``dynamic_shapes``: AUTO (the default), None for the example's shapes only, or
    torch.export's own specification."""
    if not isinstance(model, nn.Module):
        raise AttnRewriteError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.export.ExportedProgram):
        return model
    args, kwargs = split_inputs(example_inputs)
    _register_transformers_caches()
    if isinstance(dynamic_shapes, str) and dynamic_shapes == AUTO:
        dynamic_shapes = every_axis_dynamic(model, args, kwargs)
    modes = (True, False) if strict is None else (strict,)
    errors: list[tuple[bool, BaseException]] = []
    for mode in modes:
        try:
            return torch.export.export(
                model, args, kwargs, strict=mode, dynamic_shapes=dynamic_shapes
            )
        except Exception as err:  # export raises many types; each is a tracing failure here
            errors.append((mode, err))
    raise AttnRewriteError(_trace_failure(model, errors))


def every_axis_dynamic(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """torch.export's dynamic_shapes marking every axis of every tensor input ``Dim.AUTO``,
    in the form it takes: a tuple for positional inputs, else a dict by parameter name."""

    def axes(value: Any) -> Any:
        return pytree.tree_map(
            lambda t: (
                dict.fromkeys(range(t.dim()), torch.export.Dim.AUTO)
                if isinstance(t, torch.Tensor)
                else None
            ),
            value,
        )

    if not kwargs:
        return tuple(axes(a) for a in args)
    try:
        named = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    except TypeError as err:
        raise AttnRewriteError(
            f"the example inputs do not fit {type(model).__name__}: {err}"
        ) from None
    return {name: axes(value) for name, value in named.items()}


def _register_transformers_caches() -> None:
    """Make transformers' DynamicCache a pytree node (what its own export helpers do), when
    transformers is in use: a model returns one by default, and torch.export must flatten
    its outputs."""
    if "transformers" not in sys.modules:
        return
    try:
        from transformers.integrations.executorch import register_dynamic_cache_export_support
    except ImportError:
        return
    register_dynamic_cache_export_support()


def _trace_failure(model: nn.Module, errors: list[tuple[bool, BaseException]]) -> str:
    where = ""
    for _, err in reversed(errors):  # non-strict runs real Python frames: best location
        where = _user_frame(err)
        if where:
            break
    parts = "; ".join(
        f"{'strict' if mode else 'non-strict'}: {_first_line(err)}" for mode, err in errors
    )
    at = f" at {where}" if where else ""
    hint = CACHE_HINT if "Cache" in parts else ""
    return f"cannot trace {type(model).__name__} with torch.export{at} ({parts}){hint}"


def _first_line(err: BaseException) -> str:
    for line in str(err).splitlines():
        if line.strip():
            return f"{type(err).__name__}: {line.strip()[:200]}"
    return type(err).__name__


def _user_frame(err: BaseException) -> str:
    """The innermost traceback frame outside torch: the model code that could not be traced."""
    frames = [
        f
        for f in traceback.extract_tb(err.__traceback__)
        if not os.path.abspath(f.filename).startswith(TORCH_DIR)
        and "attnrewrite" + os.sep + "torch" not in f.filename
    ]
    if not frames:
        return ""
    f = frames[-1]
    code = f" `{f.line.strip()}`" if f.line else ""
    return f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}{code}"
