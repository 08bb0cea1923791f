"""Tiny transformers checkpoints written the way users have them: save_pretrained with
safetensors weights and a tokenizer, random weights (seeded), nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = ("[UNK]", "the", "a", "model", "reads", "every", "word", "of", "this", "text", "and")
VOCAB = 97


def tiny_llama(folder: Path, tokenizer: bool = True) -> LlamaForCausalLM:
    """A 2-layer Llama (hidden 32, 4 heads, 2 kv heads) saved into `folder`; returned in
    eval mode with eager attention, as the exporter loads it."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer:
        words = WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]")
        backend = Tokenizer(words)
        backend.pre_tokenizer = Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(folder)
    return model


def text_file(path: Path, words: int = 200) -> Path:
    """English-looking text in the tiny tokenizer's vocabulary."""
    vocabulary = WORDS[1:]
    path.write_text(" ".join(vocabulary[(i * 7) % len(vocabulary)] for i in range(words)))
    return path
