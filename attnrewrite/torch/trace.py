"""Trace a module with torch.export: strict (TorchDynamo) first, non-strict when that fails.

A model neither mode can trace gets one line naming the mode errors and the user code line
where tracing stopped (data-dependent control flow, an unsupported Python construct, ...).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnrewrite.errors import AttnRewriteError

TORCH_DIR = os.path.dirname(torch.__file__)


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
    dynamic_shapes: Any = None,
) -> torch.export.ExportedProgram:
    """ExportedProgram of `model`; ``strict=None`` tries strict and falls back to non-strict."""
    if not isinstance(model, nn.Module):
        raise AttnRewriteError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.export.ExportedProgram):
        return model
    args, kwargs = split_inputs(example_inputs)
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
    return f"cannot trace {type(model).__name__} with torch.export{at} ({parts})"


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
