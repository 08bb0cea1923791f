"""Attention rewriting for torch modules: torch.export graphs in, trainable modules out.

    import attnrewrite.torch as art
    fast = art.rewrite(model, example_inputs, method="convbasis", bases=16)
    fast(**batch).loss.backward()
    art.export_onnx(fast, example_inputs, "fast.onnx")

The FX finder (find.py) speaks the ONNX finder's vocabulary and gives its record
(attnrewrite.match: AttentionMatch, naming FX nodes; MaskKind, Refusal); each attention
becomes an AttentionBlock calling the method's torch reference.
"""

from __future__ import annotations

from attnrewrite.errors import AttnRewriteError
from attnrewrite.torch.block import AttentionBlock
from attnrewrite.torch.onnx_export import export_onnx
from attnrewrite.torch.rewrite import FxAttention, TorchRewrite, classify, rewrite
from attnrewrite.torch.trace import trace

__all__ = [
    "AttentionBlock",
    "AttnRewriteError",
    "FxAttention",
    "TorchRewrite",
    "classify",
    "export_onnx",
    "rewrite",
    "trace",
]
