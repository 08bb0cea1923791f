"""Export a rewritten torch module to ONNX with the same attnrewrite nodes as the ONNX path.

    fast (blocks switched to plain exact attention) --torch.onnx.export--> model.onnx
    --find_attention--> matches --substitute(method)--> attnrewrite::<Method>Attention nodes

Exporting exact attention first and rewriting it with the ONNX tool gives the nodes, overloads
and function bodies `attnrewrite model.onnx --method ...` writes, with the trained weights.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import torch

from attnrewrite.errors import AttnRewriteError
from attnrewrite.export import save_model
from attnrewrite.loading import prepare_model
from attnrewrite.patterns import find_attention
from attnrewrite.substitute.methods import get_method
from attnrewrite.substitute.rewrite import substitute
from attnrewrite.torch.rewrite import TorchRewrite
from attnrewrite.torch.trace import split_inputs

OPSET = 18


@contextlib.contextmanager
def plain_exact(fast: TorchRewrite) -> Iterator[None]:
    """Blocks compute exact attention as matmul/softmax/matmul while the exporter traces."""
    blocks = list(fast.blocks().values())
    for block in blocks:
        block.onnx_spelling = True
    try:
        yield
    finally:
        for block in blocks:
            block.onnx_spelling = False


def export_onnx(
    fast: TorchRewrite,
    example_inputs: Any,
    path: str | Path,
    *,
    method: str | None = None,
    opset: int = OPSET,
    **params: object,
) -> dict[str, object]:
    """Write `path` (the method and parameters of `fast` unless given) and return the report:
    what the ONNX finder matched and which blocks kept exact attention, with reasons."""
    if not isinstance(fast, TorchRewrite):
        raise AttnRewriteError(
            "export_onnx expects the module returned by attnrewrite.torch.rewrite"
        )
    name = method or fast.method
    chosen = get_method(name, params if method else fast.params)
    args, kwargs = split_inputs(example_inputs)
    names = _input_names(fast, args, kwargs)
    with tempfile.TemporaryDirectory() as tmp, plain_exact(fast):
        exact_path = Path(tmp) / "exact.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    fast,
                    args,
                    str(exact_path),
                    kwargs=kwargs,
                    dynamo=True,
                    opset_version=opset,
                    external_data=False,
                    input_names=names,
                )
            except Exception as err:  # exporter errors come in many types
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise AttnRewriteError(
                    f"torch.onnx.export failed: {type(err).__name__}: {first}"
                ) from None
        model = prepare_model(onnx.load(str(exact_path)), "export")
    found = find_attention(model)
    if len(found.matches) != len(fast.matches):
        raise AttnRewriteError(
            f"the ONNX finder matched {len(found.matches)} attention blocks in the export, the "
            f"torch rewrite {len(fast.matches)}: not exporting a partial rewrite"
        )
    result = substitute(model, found.matches, chosen)
    if result.failed:
        raise AttnRewriteError(f"ONNX rewrite failed: {result.failed[0].reason}")
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_model(model, Path(path))
    return {
        "method": {"name": chosen.name, "params": chosen.params},
        "blocks": [r.describe() for r in result.rewritten],
    }


def _input_names(fast: TorchRewrite, args: tuple, kwargs: dict) -> list[str] | None:
    """ONNX input names after the model's forward arguments (when every input is a tensor)."""
    if fast.signature is None or not all(
        isinstance(t, torch.Tensor) for t in (*args, *kwargs.values())
    ):
        return None
    try:
        bound = fast.signature.bind_partial(*args)
    except TypeError:
        return None
    return [*bound.arguments, *kwargs]
