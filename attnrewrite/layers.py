"""One attention layer as an exporter writes it: the unit the method tests and benchmarks run.

`attention_layer` exports a module that computes attention by hand (scores, scale, masks,
softmax, .V) from graph inputs query/key/value[/mask], with dynamic lengths, through torch's
TorchScript ONNX exporter. Rewriting it with the tool yields one attnrewrite node whose inputs
are exactly the layer's inputs, so the node's output can be compared with the torch reference
of the method on the same tensors.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import onnx
import torch
from torch import Tensor, nn

MASKS = ("none", "padding", "bias")  # padding: [B, 1, 1, Skv] additive; bias: [B, Hq, Sq, Skv]


@dataclass(frozen=True)
class LayerSpec:
    causal: bool = True
    mask: str = "none"
    heads: int = 8
    kv_heads: int = 8
    head_dim: int = 64
    window: int | None = None  # causal sliding window, written into the mask
    dtype: torch.dtype = torch.float32

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5

    def inputs(self, batch: int, q_len: int, kv_len: int | None = None, seed: int = 0) -> dict:
        """Random q/k/v (and mask) as numpy arrays named like the layer's inputs."""
        kv_len = q_len if kv_len is None else kv_len
        gen = torch.Generator().manual_seed(seed)
        d, h, hk = self.head_dim, self.heads, self.kv_heads
        feeds = {
            "query": torch.randn(batch, h, q_len, d, generator=gen),
            "key": torch.randn(batch, hk, kv_len, d, generator=gen),
            "value": torch.randn(batch, hk, kv_len, d, generator=gen),
        }
        if self.mask == "padding":
            keep = torch.ones(batch, 1, 1, kv_len)
            # the last sequence is right-padded, never so far that a query sees no key
            pads = kv_len // 4 if self.window is None else min(kv_len // 4, self.window - 1)
            keep[-1, ..., kv_len - pads :] = 0
            feeds["mask"] = (1.0 - keep) * torch.finfo(torch.float32).min
        elif self.mask == "bias":
            feeds["mask"] = torch.randn(batch, h, q_len, kv_len, generator=gen)
        return {k: v.to(self.dtype).numpy() for k, v in feeds.items()}


class _Attention(nn.Module):
    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, query: Tensor, key: Tensor, value: Tensor, *mask: Tensor) -> Tensor:
        spec = self.spec
        groups = spec.heads // spec.kv_heads
        if groups > 1:
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        scores = torch.matmul(query, key.transpose(-1, -2)) * spec.scale
        if mask:
            scores = scores + mask[0]
        if spec.causal:
            q_len, kv_len = query.shape[-2], key.shape[-2]
            rows = torch.arange(q_len)[:, None] + (kv_len - q_len)
            cols = torch.arange(kv_len)[None, :]
            hidden = cols > rows
            if spec.window is not None:
                hidden = hidden | (cols <= rows - spec.window)
            scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
        return torch.matmul(torch.softmax(scores, dim=-1), value)


def attention_layer(spec: LayerSpec, opset: int = 17) -> onnx.ModelProto:
    """The layer exported with dynamic batch and lengths."""
    feeds = {k: torch.from_numpy(v) for k, v in spec.inputs(2, 8, 8).items()}
    names = list(feeds)
    axes = {"query": {0: "batch", 2: "q_len"}, "key": {0: "batch", 2: "kv_len"}}
    axes["value"] = axes["key"]
    if spec.mask == "padding":
        axes["mask"] = {0: "batch", 3: "kv_len"}
    elif spec.mask == "bias":
        axes["mask"] = {0: "batch", 2: "q_len", 3: "kv_len"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Attention(spec),
            tuple(feeds.values()),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=["output"],
            dynamic_axes={**axes, "output": {0: "batch", 2: "q_len"}},
        )
    return onnx.load_from_string(buffer.getvalue())
