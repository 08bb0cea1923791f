#!/usr/bin/env python
"""Build the corpus of real-exporter ONNX attention models.

Every model is tiny, has RANDOM weights (seeded; nothing is downloaded) and is
exported with one of torch's two ONNX exporters:

* ``dynamo``      -- ``torch.onnx.export(..., dynamo=True)`` with ``torch.export.Dim``
                     dynamic shapes (opset 18, and 23 for some models);
* ``torchscript`` -- ``torch.onnx.export(..., dynamo=False)`` with ``dynamic_axes``
                     (opset 17).

Sources are (1) transformers architectures built from config objects with
``attn_implementation`` "eager" and "sdpa", and (2) hand-written ``nn.Module``s
(defined below) covering the usual ways people write attention by hand.

Every exported model is loaded in onnxruntime and run at the export shape
(batch 2, sequence 8) and at another one (batch 3, sequence 11); its outputs are
compared with the torch module (max abs diff <= 1e-3, 2e-2 for fp16).  Models that
fail to export, to run, or to match are dropped and recorded under ``skipped`` in
``exported/manifest.json``.  Exceptions, recorded per entry: ViT has a fixed image
size (only batch is dynamic); the KV-cache model checks query lengths 3 and 4; a
model that runs only at batch 1 is kept with ``verified_batch_sizes == [1]`` and a
note (the opset-23 Llama exports: onnxruntime rejects their RotaryEmbedding nodes at
batch > 1).

Node-level ``metadata_props`` written by the dynamo exporter are removed (they hold
local paths and half of the bytes); the graphs are otherwise as exported.

The ``expected`` block of each manifest entry describes the attention the MODEL
computes, derived from its config / module definition and its inputs -- never
from the exported graph -- so that it can be used to check an attention finder.

Mask vocabulary used in ``expected.groups[].mask``:
  none            no mask at all
  causal          causal only (is_causal, tril buffer, ...)
  sliding_window  causal, limited to a window of recent keys
  padding         additive/boolean mask varying only by key position, from a data input
  causal_padding  causal combined with padding
  bias            any other additive tensor (relative position bias, ALiBi, free-form
                  float mask input); may also contain padding
  causal_bias     causal combined with such a bias

Usage::

    python tests/corpus/build_exported.py               # build everything
    python tests/corpus/build_exported.py --only gpt2_eager_dynamo18 'hw_*'
    python tests/corpus/build_exported.py --list

With ``--only`` the existing manifest is updated in place (entries for the
rebuilt names are replaced, the others kept).

Manifest entry fields beyond the required ones: ``outputs`` (output names),
``verified_seq_lens``, ``verified_batch_sizes`` and, where useful, ``notes``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import logging
import math
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
import transformers
from torch import nn

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "exported"
MANIFEST = OUT_DIR / "manifest.json"

SEED = 0
VOCAB = 97
HIDDEN = 32
HEADS = 4
HEAD_DIM = HIDDEN // HEADS  # 8
KV_HEADS_GQA = 2
FFN = 16  # MLP width -- irrelevant to attention, kept small for file size
LAYERS = 2
MAX_POS = 64
LM_SHAPE = dict(  # the decoder LMs' sizes, in the names most transformers configs share
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=FFN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    max_position_embeddings=MAX_POS,
    use_cache=False,
)
EXPORT_SEQ = 8
OTHER_SEQ = 11
EXPORT_BATCH = 2
OTHER_BATCH = 3
MAX_FILE_BYTES = 300_000

# The dynamo exporter attaches metadata_props to every node ("namespace",
# "pkg.torch.onnx.stack_trace" / "fx_node" / "class_hierarchy" / "name_scopes",
# "pkg.onnxscript.rewriter.rule_name").  They hold absolute paths of this machine
# and make up 40-60% of the file size of these tiny models, so all node-level
# metadata_props are dropped.  Nothing else in the exported graph is changed.
STRIP_NODE_METADATA = True


# --------------------------------------------------------------------------------------
# expectations
# --------------------------------------------------------------------------------------


def group(
    count: int,
    mask: str,
    *,
    causal: bool | None = None,
    q_heads: int = HEADS,
    kv_heads: int | None = None,
    head_dim: int = HEAD_DIM,
    scale: float | None = None,
    cross: bool = False,
    window: int | None = None,
    softcap: float | None = None,
) -> dict[str, Any]:
    if causal is None:
        causal = mask.startswith("causal") or mask == "sliding_window"
    return {
        "count": count,
        "causal": causal,
        "mask": mask,
        "q_heads": q_heads,
        "kv_heads": q_heads if kv_heads is None else kv_heads,
        "head_dim": head_dim,
        "scale": float(head_dim**-0.5 if scale is None else scale),
        "cross": cross,
        **({"window": window} if window is not None else {}),
        **({"softcap": softcap} if softcap is not None else {}),
    }


def expected(*groups: dict[str, Any]) -> dict[str, Any]:
    return {"blocks": sum(g["count"] for g in groups), "groups": list(groups)}


IDS_DESC = f"token ids < {VOCAB}"
MASK_DESC = "attention mask (1 keep, 0 pad)"


# --------------------------------------------------------------------------------------
# model description
# --------------------------------------------------------------------------------------

InputMaker = Callable[[int, int, torch.Generator], tuple[torch.Tensor, ...]]


@dataclass
class Built:
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    # dynamic axes: input name -> {axis: dim name}; dim names are shared across inputs
    dynamic: dict[str, dict[int, str]]
    make_inputs: InputMaker  # (batch, seq, generator) -> positional args
    inputs_desc: dict[str, str]
    expected: dict[str, Any]
    dynamic_seq: bool = True
    export_seq_len: int = EXPORT_SEQ
    # (batch, seq) pairs checked in onnxruntime; first one is used for export
    checks: list[tuple[int, int]] = field(
        default_factory=lambda: [(EXPORT_BATCH, EXPORT_SEQ), (OTHER_BATCH, OTHER_SEQ)]
    )
    # ranges for torch.export.Dim: name -> (min, max)
    dim_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    atol: float = 1e-3
    notes: str | None = None


@dataclass
class Spec:
    name: str
    source: str  # "transformers" | "handwritten"
    arch: str
    attn_implementation: str | None
    exporter: str  # "dynamo" | "torchscript"
    opset: int
    build: Callable[[], Built]
    fusion: str = ""  # "attention" | "mha": then run through onnxruntime's optimizer


def ids_like(batch: int, seq: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=g, dtype=torch.long)


def padding_mask(batch: int, seq: int, g: torch.Generator) -> torch.Tensor:
    """1 keep / 0 pad, right padding: row b has its last (b % 3) positions padded.

    Right padding keeps at least position 0 visible to every query, so no
    softmax row is fully masked (which would make reference comparisons
    ill-defined for causal models).
    """
    m = torch.ones(batch, seq, dtype=torch.long)
    for b in range(batch):
        npad = min(b % 3, seq - 1)
        if npad:
            m[b, seq - npad :] = 0
    return m


# --------------------------------------------------------------------------------------
# transformers models
# --------------------------------------------------------------------------------------


class CausalLMWrapper(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).logits


class CausalLMNoMaskWrapper(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False).logits


class EncoderWrapper(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class ViTWrapper(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).last_hidden_state


class T5Wrapper(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        ).logits


class GPT2KVWrapper(nn.Module):
    """GPT-2 decoding step with a KV cache passed as plain tensors.

    inputs: input_ids [B, S], attention_mask [B, P+S], past_key_i / past_value_i
    [B, H, P, hd]; outputs: logits and present_key_i / present_value_i [B, H, P+S, hd].
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    # explicit signature (torch.export matches dynamic_shapes to named parameters)
    def forward(
        self, input_ids, attention_mask, past_key_0, past_value_0, past_key_1, past_value_1
    ):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache([(past_key_0, past_value_0), (past_key_1, past_value_1)])
        past_len = past_key_0.shape[2]
        seq = input_ids.shape[1]
        position_ids = torch.arange(seq, device=input_ids.device).unsqueeze(0) + past_len
        position_ids = position_ids.expand(input_ids.shape[0], -1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        presents = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def _seeded() -> None:
    torch.manual_seed(SEED)


def hf_causal_lm(arch: str, impl: str) -> Callable[[], Built]:
    def build() -> Built:
        _seeded()
        T = transformers
        kv = HEADS
        mask = "causal_padding"
        common_llama = dict(**LM_SHAPE, attn_implementation=impl)
        if arch == "gpt2":
            cfg = T.GPT2Config(
                vocab_size=VOCAB,
                n_positions=MAX_POS,
                n_embd=HIDDEN,
                n_layer=LAYERS,
                n_head=HEADS,
                n_inner=FFN,
                use_cache=False,
                attn_implementation=impl,
            )
            model = T.GPT2LMHeadModel(cfg)
        elif arch == "llama":
            kv = KV_HEADS_GQA
            cfg = T.LlamaConfig(num_key_value_heads=kv, **common_llama)
            model = T.LlamaForCausalLM(cfg)
        elif arch == "qwen2":
            kv = KV_HEADS_GQA
            cfg = T.Qwen2Config(num_key_value_heads=kv, **common_llama)
            model = T.Qwen2ForCausalLM(cfg)
        elif arch == "gpt_neox":
            cfg = T.GPTNeoXConfig(**common_llama)
            model = T.GPTNeoXForCausalLM(cfg)
        elif arch == "opt":
            cfg = T.OPTConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                ffn_dim=FFN,
                num_hidden_layers=LAYERS,
                num_attention_heads=HEADS,
                max_position_embeddings=MAX_POS,
                word_embed_proj_dim=HIDDEN,
                use_cache=False,
                attn_implementation=impl,
            )
            model = T.OPTForCausalLM(cfg)
        elif arch == "phi":
            cfg = T.PhiConfig(partial_rotary_factor=0.5, **common_llama)
            model = T.PhiForCausalLM(cfg)
        elif arch == "bloom":  # baddbmm(alibi, q, k^T) on [B*H, S, S], viewed 4-D for the mask
            mask = "causal_bias"
            cfg = T.BloomConfig(
                vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, use_cache=False
            )
            model = T.BloomForCausalLM(cfg)
        else:
            raise ValueError(arch)
        return padded_lm(model, expected(group(LAYERS, mask, kv_heads=kv)))

    return build


def padded_lm(model: nn.Module, want: dict[str, Any], notes: str | None = None) -> Built:
    """A causal LM taking input_ids and a padding attention_mask, returning logits."""
    return Built(
        module=CausalLMWrapper(model.eval()).eval(),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
        make_inputs=lambda b, s, g: (ids_like(b, s, g), padding_mask(b, s, g)),
        inputs_desc={"input_ids": IDS_DESC, "attention_mask": MASK_DESC},
        expected=want,
        notes=notes,
    )


SLIDING_WINDOW = 4
WIDE_WINDOW = 20  # wider than the lengths masks are first evaluated at (6, 9)
BEYOND_WIDE = WIDE_WINDOW + 3


def hf_qwen2_sliding(impl: str, window: int = SLIDING_WINDOW) -> Callable[[], Built]:
    def build() -> Built:
        _seeded()
        cfg = transformers.Qwen2Config(
            **LM_SHAPE,
            num_key_value_heads=KV_HEADS_GQA,
            use_sliding_window=True,
            sliding_window=window,
            max_window_layers=0,  # every layer uses the sliding window
            attn_implementation=impl,
        )
        assert all(t == "sliding_attention" for t in cfg.layer_types), cfg.layer_types
        model = transformers.Qwen2ForCausalLM(cfg).eval()
        return Built(
            module=CausalLMNoMaskWrapper(model).eval(),
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic={"input_ids": {0: "batch", 1: "seq"}},
            make_inputs=lambda b, s, g: (ids_like(b, s, g),),
            inputs_desc={"input_ids": IDS_DESC},
            expected=expected(
                group(LAYERS, "sliding_window", kv_heads=KV_HEADS_GQA, window=window)
            ),
            notes=f"sliding window {window} on every layer, no attention_mask input",
            **(
                {"checks": [(EXPORT_BATCH, EXPORT_SEQ), (OTHER_BATCH, OTHER_SEQ), (1, BEYOND_WIDE)]}
                if window > OTHER_SEQ
                else {}
            ),
        )

    return build


GEMMA_HEAD_DIM = 2 * HEAD_DIM  # heads x head dim wider than the hidden size, as in Gemma
GEMMA_QUERY_SCALAR = 24  # scale 24^-0.5, not head_dim^-0.5: read from the graph, not assumed


# Gemma 2's cap is 50; weights of a trained model's size (not the 0.02 of a fresh one) give
# the tiny model scores that this cap bends, so a rewrite that dropped it shows.
GEMMA2_SOFTCAP = 2.0
GEMMA2_INIT = 0.5


def hf_gemma3(impl: str) -> Callable[[], Built]:
    """Gemma 3's layout: a sliding-window layer and a full one, q/k RMS norms, a head dim
    decoupled from the hidden size and the scale from query_pre_attn_scalar."""
    notes = f"layer 0 sliding window {SLIDING_WINDOW}, layer 1 full; q/k norms"
    return _gemma(transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, impl, notes)


def hf_gemma2(impl: str) -> Callable[[], Built]:
    """Gemma 2: Gemma 3's layout without the q/k norms, with logit soft-capping
    (cap * tanh(s / cap) before the mask). transformers builds it with eager attention only
    (its sdpa takes no cap): the sdpa entries record that refusal."""
    notes = (
        f"layer 0 sliding window {SLIDING_WINDOW}, layer 1 full; logit soft-cap {GEMMA2_SOFTCAP}"
    )
    model = transformers.Gemma2ForCausalLM
    return _gemma(
        transformers.Gemma2Config,
        model,
        impl,
        notes,
        attn_logit_softcapping=GEMMA2_SOFTCAP,
        initializer_range=GEMMA2_INIT,
    )


def _gemma(config: type, model: type, impl: str, notes: str, **more: float) -> Callable[[], Built]:
    """Gemma 3's layout in `config` (with `more` settings), the expected groups as it says."""

    def build() -> Built:
        _seeded()
        cfg = config(
            **LM_SHAPE,
            num_key_value_heads=KV_HEADS_GQA,
            head_dim=GEMMA_HEAD_DIM,
            query_pre_attn_scalar=GEMMA_QUERY_SCALAR,
            sliding_window=SLIDING_WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            attn_implementation=impl,
            **more,
        )
        common = dict(
            kv_heads=KV_HEADS_GQA,
            head_dim=GEMMA_HEAD_DIM,
            scale=GEMMA_QUERY_SCALAR**-0.5,
            softcap=more.get("attn_logit_softcapping"),
        )
        want = expected(
            group(1, "causal_padding", window=SLIDING_WINDOW, **common),
            group(1, "causal_padding", **common),
        )
        return padded_lm(model(cfg), want, notes)

    return build


def hf_encoder(arch: str, impl: str) -> Callable[[], Built]:
    def build() -> Built:
        _seeded()
        T = transformers
        if arch == "bert":
            cfg = T.BertConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=HEADS,
                intermediate_size=FFN,
                max_position_embeddings=MAX_POS,
                attn_implementation=impl,
            )
            model = T.BertModel(cfg, add_pooling_layer=False)
        elif arch == "distilbert":
            cfg = T.DistilBertConfig(
                vocab_size=VOCAB,
                dim=HIDDEN,
                n_layers=LAYERS,
                n_heads=HEADS,
                hidden_dim=FFN,
                max_position_embeddings=MAX_POS,
                attn_implementation=impl,
            )
            model = T.DistilBertModel(cfg)
        else:
            raise ValueError(arch)
        model.eval()
        return Built(
            module=EncoderWrapper(model).eval(),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
            make_inputs=lambda b, s, g: (ids_like(b, s, g), padding_mask(b, s, g)),
            inputs_desc={"input_ids": IDS_DESC, "attention_mask": MASK_DESC},
            expected=expected(group(LAYERS, "padding")),
        )

    return build


VIT_IMAGE = 16
VIT_PATCH = 4
VIT_TOKENS = (VIT_IMAGE // VIT_PATCH) ** 2 + 1  # 17 (patches + CLS)


def hf_vit(impl: str) -> Callable[[], Built]:
    def build() -> Built:
        _seeded()
        cfg = transformers.ViTConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            image_size=VIT_IMAGE,
            patch_size=VIT_PATCH,
            num_channels=3,
            attn_implementation=impl,
        )
        model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()

        def make(b: int, s: int, g: torch.Generator):
            return (torch.randn(b, 3, VIT_IMAGE, VIT_IMAGE, generator=g),)

        return Built(
            module=ViTWrapper(model).eval(),
            input_names=["pixel_values"],
            output_names=["last_hidden_state"],
            dynamic={"pixel_values": {0: "batch"}},
            make_inputs=make,
            inputs_desc={"pixel_values": f"pixels float32 [batch, 3, {VIT_IMAGE}, {VIT_IMAGE}]"},
            expected=expected(group(LAYERS, "none")),
            dynamic_seq=False,
            export_seq_len=VIT_TOKENS,
            checks=[(EXPORT_BATCH, VIT_TOKENS), (OTHER_BATCH, VIT_TOKENS)],
            notes=(
                f"sequence = {VIT_TOKENS} tokens fixed by the {VIT_IMAGE}x{VIT_IMAGE} image "
                "(position embeddings are not interpolated); only batch is dynamic"
            ),
        )

    return build


T5_FFN = 16
T5_HEAD_DIM = 4  # T5's d_kv is independent of d_model: 4 heads x 4 = 16 != 32
T5_DEC_SEQ = 6
T5_DEC_SEQ_OTHER = 5
T5_LAYERS_DEC = 2


def hf_t5(impl: str) -> Callable[[], Built]:
    def build() -> Built:
        _seeded()
        cfg = transformers.T5Config(
            vocab_size=VOCAB,
            d_model=HIDDEN,
            d_kv=T5_HEAD_DIM,
            d_ff=T5_FFN,
            num_layers=LAYERS,
            num_decoder_layers=T5_LAYERS_DEC,
            num_heads=HEADS,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            decoder_start_token_id=0,
            use_cache=False,
            attn_implementation=impl,
        )
        model = transformers.T5ForConditionalGeneration(cfg).eval()

        def make(b: int, s: int, g: torch.Generator):
            ds = T5_DEC_SEQ if s == EXPORT_SEQ else T5_DEC_SEQ_OTHER
            return (ids_like(b, s, g), padding_mask(b, s, g), ids_like(b, ds, g))

        return Built(
            module=T5Wrapper(model).eval(),
            input_names=["input_ids", "attention_mask", "decoder_input_ids"],
            output_names=["logits"],
            dynamic={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "decoder_input_ids": {0: "batch", 1: "dec_seq"},
            },
            make_inputs=make,
            inputs_desc={
                "input_ids": IDS_DESC + " (encoder)",
                "attention_mask": MASK_DESC + " (encoder)",
                "decoder_input_ids": IDS_DESC + " (decoder)",
            },
            expected=expected(
                # encoder self-attention: relative position bias + padding
                group(LAYERS, "bias", head_dim=T5_HEAD_DIM, scale=1.0),
                # decoder self-attention: causal + relative position bias
                group(T5_LAYERS_DEC, "causal_bias", head_dim=T5_HEAD_DIM, scale=1.0),
                # decoder cross-attention over the encoder output: padding only
                group(T5_LAYERS_DEC, "padding", head_dim=T5_HEAD_DIM, scale=1.0, cross=True),
            ),
            notes=(
                f"decoder_input_ids length {T5_DEC_SEQ} at export "
                f"({T5_DEC_SEQ_OTHER} in the second check); T5 does not scale scores"
            ),
        )

    return build


KV_PAST = 5
KV_Q = 3


def hf_gpt2_kv(impl: str) -> Callable[[], Built]:
    def build() -> Built:
        _seeded()
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB,
            n_positions=MAX_POS,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_inner=FFN,
            use_cache=True,
            attn_implementation=impl,
        )
        model = transformers.GPT2LMHeadModel(cfg).eval()

        def make(b: int, s: int, g: torch.Generator):
            # s is the query length; past length differs from it
            past = KV_PAST if s == KV_Q else 7
            ids = ids_like(b, s, g)
            mask = torch.ones(b, past + s, dtype=torch.long)
            for i in range(b):  # left padding in the cache
                npad = min(i % 3, past - 1)
                if npad:
                    mask[i, :npad] = 0
            pkv = []
            for _ in range(LAYERS):
                pkv.append(torch.randn(b, HEADS, past, HEAD_DIM, generator=g))
                pkv.append(torch.randn(b, HEADS, past, HEAD_DIM, generator=g))
            return (ids, mask, *pkv)

        past_names = []
        for i in range(LAYERS):
            past_names += [f"past_key_{i}", f"past_value_{i}"]
        dyn: dict[str, dict[int, str]] = {
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "total_seq"},
        }
        for n in past_names:
            dyn[n] = {0: "batch", 2: "past_seq"}
        desc = {
            "input_ids": IDS_DESC + " (new tokens)",
            "attention_mask": MASK_DESC + " over past + new tokens",
        }
        for n in past_names:
            kind = "keys" if "key" in n else "values"
            desc[n] = f"cached {kind} float32 [batch, {HEADS}, past_seq, {HEAD_DIM}]"
        outs = ["logits"]
        for i in range(LAYERS):
            outs += [f"present_key_{i}", f"present_value_{i}"]
        return Built(
            module=GPT2KVWrapper(model).eval(),
            input_names=["input_ids", "attention_mask", *past_names],
            output_names=outs,
            dynamic=dyn,
            make_inputs=make,
            inputs_desc=desc,
            expected=expected(group(LAYERS, "causal_padding")),
            export_seq_len=KV_Q,
            checks=[(EXPORT_BATCH, KV_Q), (OTHER_BATCH, 4)],
            notes=(
                f"decoding step with KV cache: query length {KV_Q} over "
                f"{KV_PAST} cached + {KV_Q} new "
                "keys at export (4 over 7+4 in the second check); keys/values are concatenated "
                "with the past inside the graph, so q length != kv length"
            ),
        )

    return build


# --------------------------------------------------------------------------------------
# hand-written modules
# --------------------------------------------------------------------------------------

HW_DIM = 16  # 4 heads of 4: keeps the many hand-written models small
HW_HEADS = 4
HW_HEAD_DIM = HW_DIM // HW_HEADS
HW_LAYERS = 2


class _QKVBlock(nn.Module):
    """Shared projections: x [B, S, D] -> q, k, v [B, H, S, hd]."""

    def __init__(self, dim: int = HW_DIM, heads: int = HW_HEADS):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def merge(self, o, x):
        b, s, d = x.shape
        o = o.transpose(1, 2).reshape(b, s, d)
        return x + self.out(o)


class SdpaBlock(_QKVBlock):
    """F.scaled_dot_product_attention with the given mask kind.

    mask kinds: "causal" (is_causal=True), "bool" (boolean key mask [B, S], True keep),
    "float_padding" (int 1/0 mask turned into an additive float mask), "float_bias"
    (free-form additive float tensor [B, H, S, S] given as input).
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x, m=None):
        q, k, v = self.split(x)
        if self.kind == "causal":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.kind == "bool":
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=m[:, None, None, :])
        elif self.kind == "float_padding":
            add = (1.0 - m.to(x.dtype))[:, None, None, :] * torch.finfo(x.dtype).min
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=add)
        elif self.kind == "float_bias":
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        else:
            raise ValueError(self.kind)
        return self.merge(o, x)


SCALE_MODES = (
    "mul_q",
    "div_q",
    "mul_k",
    "mul_kt",
    "mul_scores",
    "div_scores",
    "sqrt_both",
    "noscale",
)


class ManualBlock(_QKVBlock):
    """matmul -> softmax -> matmul written out, with the 1/sqrt(hd) scale in `scale_mode`.

    mask: "none", "causal" (masked_fill with a tril buffer) or "padding"
    (additive -1e4 * (1 - attention_mask)).
    """

    def __init__(self, scale_mode: str, mask: str = "none", max_pos: int = MAX_POS):
        super().__init__()
        self.scale_mode = scale_mode
        self.mask = mask
        if mask == "causal":
            self.register_buffer(
                "tril", torch.tril(torch.ones(max_pos, max_pos, dtype=torch.bool)), persistent=False
            )

    def forward(self, x, attention_mask=None):
        q, k, v = self.split(x)
        hd = self.head_dim
        s = 1.0 / math.sqrt(hd)
        mode = self.scale_mode
        if mode == "mul_q":
            q = q * s
        elif mode == "div_q":
            q = q / math.sqrt(hd)
        elif mode == "mul_k":
            k = k * s
        elif mode == "sqrt_both":
            q = q * math.sqrt(s)
            k = k * math.sqrt(s)
        kt = k.transpose(-2, -1)
        if mode == "mul_kt":
            kt = kt * s
        scores = torch.matmul(q, kt)
        if mode == "mul_scores":
            scores = scores * s
        elif mode == "div_scores":
            scores = scores / math.sqrt(hd)
        if self.mask == "causal":
            n = x.shape[1]
            scores = scores.masked_fill(~self.tril[:n, :n], float("-inf"))
        elif self.mask == "padding":
            scores = scores + (1.0 - attention_mask[:, None, None, :].to(scores.dtype)) * -10000.0
        p = torch.softmax(scores, dim=-1)
        o = torch.matmul(p, v)
        return self.merge(o, x)


class Fp16Block(_QKVBlock):
    """fp16 attention with an explicit float32 upcast around the softmax."""

    def forward(self, x):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (self.head_dim**-0.5)
        p = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        o = torch.matmul(p, v)
        return self.merge(o, x)


class Fp16MaskedBlock(_QKVBlock):
    """fp16 attention whose scores are upcast to float32 before a float32 causal + padding
    mask is added (HF eager attention with a float32 mask in a half-precision model)."""

    def forward(self, x, attention_mask):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (self.head_dim**-0.5)
        n = x.shape[1]
        low = torch.finfo(torch.float32).min
        causal = torch.full((n, n), low, device=x.device).triu(1)
        padding = (1.0 - attention_mask[:, None, None, :].float()) * low
        p = torch.softmax(scores.float() + causal + padding, dim=-1).to(q.dtype)
        return self.merge(torch.matmul(p, v), x)


class Stack(nn.Module):
    """HW_LAYERS blocks applied in sequence; the optional mask input goes to every block."""

    def __init__(self, make_block: Callable[[], nn.Module], n: int = HW_LAYERS):
        super().__init__()
        self.blocks = nn.ModuleList(make_block() for _ in range(n))

    def forward(self, x, mask=None):
        for blk in self.blocks:
            x = blk(x) if mask is None else blk(x, mask)
        return x


class MHAStack(nn.Module):
    """nn.MultiheadAttention(batch_first=True) self-attention with key_padding_mask."""

    def __init__(self, n: int = HW_LAYERS):
        super().__init__()
        self.attn = nn.ModuleList(
            nn.MultiheadAttention(HW_DIM, HW_HEADS, batch_first=True) for _ in range(n)
        )

    def forward(self, x, key_padding_mask):
        for a in self.attn:
            o, _ = a(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)
            x = x + o
        return x


def _hidden(b: int, s: int, g: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(b, s, HW_DIM, generator=g).to(dtype)


def hw_group(mask: str, scale: float | None = None) -> dict[str, Any]:
    return group(HW_LAYERS, mask, q_heads=HW_HEADS, head_dim=HW_HEAD_DIM, scale=scale)


HIDDEN_DESC = f"hidden states float32 [batch, seq, {HW_DIM}]"
HW_X_DYN = {"x": {0: "batch", 1: "seq"}}


def hw_sdpa(kind: str) -> Callable[[], Built]:
    def build() -> Built:
        _seeded()
        mod = Stack(lambda: SdpaBlock(kind)).eval()
        if kind == "causal":
            return Built(
                module=mod,
                input_names=["x"],
                output_names=["y"],
                dynamic=dict(HW_X_DYN),
                make_inputs=lambda b, s, g: (_hidden(b, s, g),),
                inputs_desc={"x": HIDDEN_DESC},
                expected=expected(hw_group("causal")),
            )
        if kind == "bool":
            return Built(
                module=mod,
                input_names=["x", "key_mask"],
                output_names=["y"],
                dynamic={**HW_X_DYN, "key_mask": {0: "batch", 1: "seq"}},
                make_inputs=lambda b, s, g: (_hidden(b, s, g), padding_mask(b, s, g).bool()),
                inputs_desc={
                    "x": HIDDEN_DESC,
                    "key_mask": "boolean key mask [batch, seq] (True keep, False pad)",
                },
                expected=expected(hw_group("padding")),
            )
        if kind == "float_padding":
            return Built(
                module=mod,
                input_names=["x", "attention_mask"],
                output_names=["y"],
                dynamic={**HW_X_DYN, "attention_mask": {0: "batch", 1: "seq"}},
                make_inputs=lambda b, s, g: (_hidden(b, s, g), padding_mask(b, s, g)),
                inputs_desc={"x": HIDDEN_DESC, "attention_mask": MASK_DESC},
                expected=expected(hw_group("padding")),
                notes=(
                    "attention_mask turned into an additive float mask ((1-m)*finfo.min) "
                    "passed as sdpa attn_mask"
                ),
            )
        if kind == "float_bias":
            return Built(
                module=mod,
                input_names=["x", "attn_bias"],
                output_names=["y"],
                dynamic={**HW_X_DYN, "attn_bias": {0: "batch", 2: "seq", 3: "seq"}},
                make_inputs=lambda b, s, g: (
                    _hidden(b, s, g),
                    torch.randn(b, HW_HEADS, s, s, generator=g),
                ),
                inputs_desc={
                    "x": HIDDEN_DESC,
                    "attn_bias": f"additive float attention bias [batch, {HW_HEADS}, seq, seq]",
                },
                expected=expected(hw_group("bias")),
                notes="free-form float attn_mask given as a model input",
            )
        raise ValueError(kind)

    return build


def hw_manual(scale_mode: str, mask: str = "none") -> Callable[[], Built]:
    def build() -> Built:
        _seeded()
        mod = Stack(lambda: ManualBlock(scale_mode, mask)).eval()
        scale = 1.0 if scale_mode == "noscale" else None
        names = ["x"]
        dyn = dict(HW_X_DYN)
        desc = {"x": HIDDEN_DESC}
        if mask == "padding":
            names.append("attention_mask")
            dyn["attention_mask"] = {0: "batch", 1: "seq"}
            desc["attention_mask"] = MASK_DESC

            def make(b, s, g):
                return (_hidden(b, s, g), padding_mask(b, s, g))
        else:

            def make(b, s, g):
                return (_hidden(b, s, g),)

        return Built(
            module=mod,
            input_names=names,
            output_names=["y"],
            dynamic=dyn,
            make_inputs=make,
            inputs_desc=desc,
            expected=expected(hw_group(mask, scale=scale)),
            notes=f"manual matmul/softmax/matmul, scale placement: {scale_mode}"
            + (", causal via masked_fill(~tril[:S,:S], -inf)" if mask == "causal" else "")
            + (", additive -1e4*(1-mask)" if mask == "padding" else ""),
        )

    return build


def hw_mha() -> Built:
    _seeded()
    mod = MHAStack().eval()
    return Built(
        module=mod,
        input_names=["x", "key_padding_mask"],
        output_names=["y"],
        dynamic={**HW_X_DYN, "key_padding_mask": {0: "batch", 1: "seq"}},
        make_inputs=lambda b, s, g: (_hidden(b, s, g), padding_mask(b, s, g) == 0),
        inputs_desc={
            "x": HIDDEN_DESC,
            "key_padding_mask": "boolean key padding mask [batch, seq] (True pad, False keep)",
        },
        expected=expected(hw_group("padding")),
        notes="nn.MultiheadAttention(batch_first=True), need_weights=False",
    )


def hw_fp16() -> Built:
    _seeded()
    mod = Stack(lambda: Fp16Block()).eval().half()
    return Built(
        module=mod,
        input_names=["x"],
        output_names=["y"],
        dynamic=dict(HW_X_DYN),
        make_inputs=lambda b, s, g: (_hidden(b, s, g, torch.float16),),
        inputs_desc={"x": f"hidden states float16 [batch, seq, {HW_DIM}]"},
        expected=expected(hw_group("none")),
        atol=2e-2,
        notes=(
            "float16 weights and activations; scores upcast to float32 for softmax, then cast back"
        ),
    )


def hw_fp16_mask() -> Built:
    _seeded()
    mod = Stack(lambda: Fp16MaskedBlock()).eval().half()
    return Built(
        module=mod,
        input_names=["x", "attention_mask"],
        output_names=["y"],
        dynamic={**HW_X_DYN, "attention_mask": {0: "batch", 1: "seq"}},
        make_inputs=lambda b, s, g: (_hidden(b, s, g, torch.float16), padding_mask(b, s, g)),
        inputs_desc={
            "x": f"hidden states float16 [batch, seq, {HW_DIM}]",
            "attention_mask": MASK_DESC,
        },
        expected=expected(hw_group("causal_padding")),
        atol=2e-2,
        notes="float16 weights and activations; scores upcast to float32, then a float32 "
        "causal + padding mask added, softmax, cast back",
    )


# --------------------------------------------------------------------------------------
# the corpus
# --------------------------------------------------------------------------------------

HF_CAUSAL = ("gpt2", "llama", "qwen2", "gpt_neox", "opt", "phi")
HF_ENCODERS = ("bert", "distilbert")
# Opset 23 is where torch emits the ONNX Attention op (for sdpa) and RotaryEmbedding.
# The eager GPT-2 / BERT opset-23 graphs are the opset-18 ones again (no Attention op,
# same nodes), so only Llama keeps an eager opset-23 export (it gets RotaryEmbedding).
OPSET23 = {("gpt2", "sdpa"), ("llama", "sdpa"), ("llama", "eager"), ("bert", "sdpa")}
IMPLS = ("eager", "sdpa")


def all_specs() -> list[Spec]:
    specs: list[Spec] = []

    def add(base, source, arch, impl, build, exporters):
        for exporter, opset in exporters:
            tag = "dynamo" if exporter == "dynamo" else "ts"
            specs.append(Spec(f"{base}_{tag}{opset}", source, arch, impl, exporter, opset, build))

    std = [("dynamo", 18), ("torchscript", 17)]
    for impl in IMPLS:
        for arch in HF_CAUSAL:
            ex = std + ([("dynamo", 23)] if (arch, impl) in OPSET23 else [])
            add(f"{arch}_{impl}", "transformers", arch, impl, hf_causal_lm(arch, impl), ex)
        add(f"qwen2sw_{impl}", "transformers", "qwen2", impl, hf_qwen2_sliding(impl), std)
        add(f"gemma3_{impl}", "transformers", "gemma3", impl, hf_gemma3(impl), std)
        add(f"gemma2_{impl}", "transformers", "gemma2", impl, hf_gemma2(impl), std)
        if impl == "eager":  # opset-12 exports (Softmax(axis=3), converted on load)
            old = [("torchscript", 12)]
            for arch in ("gpt2", "bert", "distilbert"):
                build = (hf_causal_lm if arch == "gpt2" else hf_encoder)(arch, impl)
                add(f"{arch}_{impl}", "transformers", arch, impl, build, old)
        if impl == "eager":  # onnxruntime's optimizer fuses the TorchScript BERT exports
            for arch, opset in (("bert", 17), ("distilbert", 12)):
                for fusion in ("attention", "mha"):
                    specs.append(
                        Spec(
                            f"{arch}_{impl}_ts{opset}_ort{fusion}",
                            "transformers",
                            arch,
                            impl,
                            "torchscript",
                            opset,
                            hf_encoder(arch, impl),
                            fusion,
                        )
                    )
        if impl == "eager":  # BLOOM has one attention implementation
            add("bloom_eager", "transformers", "bloom", impl, hf_causal_lm("bloom", impl), std)
        wide = hf_qwen2_sliding(impl, WIDE_WINDOW)
        add(f"qwen2sw{WIDE_WINDOW}_{impl}", "transformers", "qwen2", impl, wide, std[:1])
        for arch in HF_ENCODERS:
            ex = std + ([("dynamo", 23)] if (arch, impl) in OPSET23 else [])
            add(f"{arch}_{impl}", "transformers", arch, impl, hf_encoder(arch, impl), ex)
        add(f"vit_{impl}", "transformers", "vit", impl, hf_vit(impl), std)
        add(f"t5_{impl}", "transformers", "t5", impl, hf_t5(impl), std)
    add("gpt2kv_eager", "transformers", "gpt2", "eager", hf_gpt2_kv("eager"), std)

    sdpa_ex = [("dynamo", 18), ("dynamo", 23), ("torchscript", 17)]
    for kind in ("causal", "bool", "float_padding", "float_bias"):
        add(f"hw_sdpa_{kind}", "handwritten", "sdpa", None, hw_sdpa(kind), sdpa_ex)
    for mode in SCALE_MODES:
        add(f"hw_manual_{mode}", "handwritten", "manual", None, hw_manual(mode), std)
    add("hw_manual_causal", "handwritten", "manual", None, hw_manual("mul_scores", "causal"), std)
    add("hw_manual_padding", "handwritten", "manual", None, hw_manual("div_scores", "padding"), std)
    add("hw_mha", "handwritten", "nn.MultiheadAttention", None, hw_mha, std)
    add("hw_fp16", "handwritten", "manual_fp16", None, hw_fp16, std)
    add("hw_fp16_mask", "handwritten", "manual_fp16", None, hw_fp16_mask, std)
    return specs


# --------------------------------------------------------------------------------------
# export + verification
# --------------------------------------------------------------------------------------


def strip_metadata(model: onnx.ModelProto) -> None:
    def nodes(g: onnx.GraphProto):
        for n in g.node:
            yield n
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from nodes(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        yield from nodes(sg)

    all_nodes = list(nodes(model.graph))
    for f in model.functions:
        all_nodes.extend(f.node)
    for n in all_nodes:
        del n.metadata_props[:]


def torch_dims(built: Built, batch_max: int = 64) -> dict[str, Any]:
    dims: dict[str, Any] = {}
    for axes in built.dynamic.values():
        for name in axes.values():
            if name in dims:
                continue
            lo, hi = built.dim_ranges.get(name, (1, batch_max) if name == "batch" else (2, MAX_POS))
            dims[name] = torch.export.Dim(name, min=lo, max=hi)
    return dims


@contextlib.contextmanager
def quiet():
    """Swallow the exporters' progress prints and warnings."""
    buf = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf


def export(spec: Spec, built: Built, args: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    mod = built.module
    if spec.exporter == "dynamo":
        dims = torch_dims(built)
        dyn = tuple(
            {ax: dims[n] for ax, n in built.dynamic.get(name, {}).items()} or None
            for name in built.input_names
        )
        with quiet(), torch.no_grad():
            prog = torch.onnx.export(
                mod,
                args,
                None,
                dynamo=True,
                opset_version=spec.opset,
                input_names=built.input_names,
                output_names=built.output_names,
                dynamic_shapes=dyn,
                external_data=False,
                report=False,
                verbose=False,
            )
        model = prog.model_proto
        if STRIP_NODE_METADATA:
            strip_metadata(model)
        return model
    buf = io.BytesIO()
    # nn.MultiheadAttention's eval fast path (aten::_native_multi_head_attention) has no
    # TorchScript-exporter symbolic; turning it off is the documented workaround.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _export_ts(spec, built, args, buf)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    model = onnx.load_from_string(buf.getvalue())
    return ort_optimized(model, spec.fusion) if spec.fusion else model


def ort_optimized(model: onnx.ModelProto, fusion: str) -> onnx.ModelProto:
    """The model as onnxruntime's transformers optimizer rewrites it for BERT: fused
    com.microsoft Attention (packed weights, mask_index from EmbedLayerNormalization), or
    with `fusion` "mha" MultiHeadAttention with the input bias; SkipLayerNormalization,
    BiasGelu etc. around them."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.use_multi_head_attention = fusion == "mha"
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    optimized = optimizer.optimize_model(
        model,
        "bert",
        num_heads=HEADS,
        hidden_size=HIDDEN,
        optimization_options=options,
        opt_level=0,
    )
    return optimized.model


def _export_ts(spec: Spec, built: Built, args: tuple[torch.Tensor, ...], buf: io.BytesIO) -> None:
    mod = built.module
    with quiet(), torch.no_grad():
        torch.onnx.export(
            mod,
            args,
            buf,
            dynamo=False,
            opset_version=spec.opset,
            input_names=built.input_names,
            output_names=built.output_names,
            dynamic_axes=built.dynamic,
            do_constant_folding=True,
        )


def ort_session(data: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # failures are raised and recorded; keep the log quiet
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def verify(built: Built, data: bytes, checks: list[tuple[int, int]]) -> None:
    """Run in onnxruntime at every (batch, seq) of `checks` and compare with torch."""
    sess = ort_session(data)
    names = [i.name for i in sess.get_inputs()]
    if names != built.input_names:
        raise RuntimeError(f"ONNX inputs {names} != expected {built.input_names}")
    for i, (b, s) in enumerate(checks):
        g = torch.Generator().manual_seed(1000 + i)
        args = built.make_inputs(b, s, g)
        with torch.no_grad():
            ref = built.module(*args)
        refs = ref if isinstance(ref, tuple | list) else (ref,)
        outs = sess.run(None, {n: to_np(a) for n, a in zip(built.input_names, args, strict=True)})
        if len(outs) != len(refs):
            raise RuntimeError(f"ONNX returns {len(outs)} outputs, torch {len(refs)}")
        for o, r in zip(outs, refs, strict=True):
            r = to_np(r).astype(np.float32)
            o = np.asarray(o).astype(np.float32)
            if o.shape != r.shape:
                raise RuntimeError(
                    f"at batch={b} seq={s}: output shape {o.shape} != torch {r.shape}"
                )
            diff = float(np.max(np.abs(o - r))) if o.size else 0.0
            if not diff <= built.atol:
                raise RuntimeError(
                    f"at batch={b} seq={s}: max |onnx - torch| = {diff:.3g} > {built.atol}"
                )


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}

    def walk(nodes):
        for n in nodes:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            counts[key] = counts.get(key, 0) + 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g.node)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        walk(g.node)

    walk(model.graph.node)
    for f in model.functions:
        walk(f.node)
    return counts


def first_line(exc: BaseException) -> str:
    """The exception's first non-empty line (ANSI colours removed; a very long one is
    shortened in the middle, where onnxruntime puts its C++ signatures)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(exc).__name__}: {exc}").strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    if len(line) > 400:
        line = line[:200] + " [...] " + line[-190:]
    return line


def build_one(spec: Spec) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any]]:
    """Returns (manifest entry or None, skipped entry or None, row for the summary table)."""
    t0 = time.time()
    row: dict[str, Any] = {"name": spec.name, "exporter": spec.exporter, "opset": spec.opset}
    path = OUT_DIR / f"{spec.name}.onnx"
    stage = "build"
    try:
        built = spec.build()
        stage = "export"
        b, s = built.checks[0]
        args = built.make_inputs(b, s, torch.Generator().manual_seed(SEED))
        model = export(spec, built, args)
        data = model.SerializeToString()
        if len(data) > MAX_FILE_BYTES:
            raise RuntimeError(f"exported model is {len(data)} bytes > {MAX_FILE_BYTES}")
        stage = "onnxruntime"
        checks = list(built.checks)
        try:
            verify(built, data, checks)
        except Exception as exc:
            # Some exports are only valid at batch 1 (e.g. opset-23 RotaryEmbedding whose
            # cos/sin caches keep a broadcast batch of 1, which onnxruntime rejects).  Keep
            # them, verified at batch 1 only, and say so in the manifest.
            if all(b == 1 for b, _ in checks):
                raise
            checks = [(1, s) for _, s in checks]
            verify(built, data, checks)
            note = f"runs in onnxruntime at batch 1 only; at batch > 1: {first_line(exc)}"
            built.notes = f"{built.notes}; {note}" if built.notes else note
    except Exception as exc:  # recorded in the manifest
        if path.exists():
            path.unlink()
        reason = f"{stage}: {first_line(exc)}"
        if os.environ.get("CORPUS_DEBUG"):
            traceback.print_exc()
        row.update(status="SKIPPED", reason=reason, seconds=time.time() - t0)
        return None, {"name": spec.name, "reason": reason}, row

    path.write_bytes(data)
    ops = count_ops(model)
    attn_ops = sum(
        v
        for k, v in ops.items()
        if k.split(".")[-1] in ("Attention", "MultiHeadAttention", "GroupQueryAttention")
    )
    entry = {
        "name": spec.name,
        "file": path.name,
        "source": spec.source,
        "arch": spec.arch,
        "attn_implementation": spec.attn_implementation,
        "exporter": spec.exporter,
        "opset": spec.opset,
        "export_seq_len": built.export_seq_len,
        "dynamic_seq": built.dynamic_seq,
        "inputs": built.inputs_desc,
        "outputs": built.output_names,
        "expected": built.expected,
        "verified_seq_lens": sorted({s for _, s in checks}),
        "verified_batch_sizes": sorted({b for b, _ in checks}),
    }
    if spec.fusion:
        entry["ort_optimizer"] = f"onnxruntime.transformers.optimizer, bert, {spec.fusion} fusion"
    if built.notes:
        entry["notes"] = built.notes
    row.update(
        status="ok",
        softmax=ops.get("Softmax", 0),
        attention=attn_ops,
        size=len(data),
        seconds=time.time() - t0,
    )
    return entry, None, row


def _setup_process() -> None:
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    # the dynamo exporter logs one warning per missing torchvision op on every export
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _build_by_name(name: str):
    _setup_process()
    spec = next(s for s in all_specs() if s.name == name)
    return build_one(spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="names or glob patterns to (re)build")
    ap.add_argument("--list", action="store_true", help="list model names and exit")
    ap.add_argument(
        "--jobs",
        type=int,
        default=max(1, min(2, os.cpu_count() or 1)),
        help="worker processes (default: min(2, cpu count))",
    )
    opts = ap.parse_args(argv)

    specs = all_specs()
    if opts.list:
        for s in specs:
            print(s.name)
        return 0
    if opts.only:
        chosen = [s for s in specs if any(fnmatch.fnmatchcase(s.name, p) for p in opts.only)]
        unknown = [p for p in opts.only if not any(fnmatch.fnmatchcase(s.name, p) for s in specs)]
        if unknown:
            print(f"unknown names: {unknown}", file=sys.stderr)
            return 2
    else:
        chosen = specs

    _setup_process()
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    old_models: list[dict[str, Any]] = []
    old_skipped: list[dict[str, Any]] = []
    if opts.only and MANIFEST.exists():
        old = json.loads(MANIFEST.read_text())
        old_models = old.get("models", [])
        old_skipped = old.get("skipped", [])
    else:
        # full rebuild: remove stale files
        for p in OUT_DIR.glob("*.onnx"):
            p.unlink()

    t_start = time.time()
    models: dict[str, dict[str, Any]] = {}
    skipped: dict[str, dict[str, Any]] = {}
    rows = []
    if opts.jobs > 1 and len(chosen) > 1:
        import multiprocessing as mp

        pool = ProcessPoolExecutor(max_workers=opts.jobs, mp_context=mp.get_context("spawn"))
        results = pool.map(_build_by_name, [s.name for s in chosen])
    else:
        pool = None
        results = map(build_one, chosen)
    for i, (spec, (entry, skip, row)) in enumerate(zip(chosen, results, strict=True), 1):
        rows.append(row)
        msg = f"[{i:2d}/{len(chosen)}] {spec.name:34s} {row['status']:7s} {row['seconds']:5.1f}s"
        if skip:
            msg += f"  {skip['reason'][:160]}"
        print(msg, flush=True)
        if entry:
            models[spec.name] = entry
        if skip:
            skipped[spec.name] = skip

    if pool is not None:
        pool.shutdown()

    # merge with the previous manifest when building a subset
    rebuilt = {s.name for s in chosen}
    order = {s.name: i for i, s in enumerate(specs)}
    final_models = [m for m in old_models if m["name"] not in rebuilt] + list(models.values())
    final_skipped = [s for s in old_skipped if s["name"] not in rebuilt] + list(skipped.values())
    final_models.sort(key=lambda m: order.get(m["name"], 1 << 30))
    final_skipped.sort(key=lambda m: order.get(m["name"], 1 << 30))
    manifest = {
        "generated_with": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "onnxscript": _version("onnxscript"),
            "python": sys.version.split()[0],
        },
        "stripped_node_metadata": STRIP_NODE_METADATA,
        "models": final_models,
        "skipped": final_skipped,
    }
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")

    # summary table
    print()
    hdr = (
        f"{'name':34s} {'exporter':11s} {'opset':>5s} {'Softmax':>7s} {'Attn-op':>7s} {'size':>9s}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if r["status"] == "ok":
            print(
                f"{r['name']:34s} {r['exporter']:11s} {r['opset']:5d} {r['softmax']:7d} "
                f"{r['attention']:7d} {r['size']:9,d}"
            )
        else:
            head = f"{r['name']:34s} {r['exporter']:11s} {r['opset']:5d}"
            print(f"{head} SKIPPED: {r['reason'][:90]}")
    total = sum(p.stat().st_size for p in OUT_DIR.glob("*.onnx"))
    print("-" * len(hdr))
    print(
        f"{len(models)} built, {len(skipped)} skipped in {time.time() - t_start:.0f}s; "
        f"exported/ holds {len(list(OUT_DIR.glob('*.onnx')))} models, {total / 1e6:.2f} MB"
    )
    return 0


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
