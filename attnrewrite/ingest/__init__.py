"""Models in other forms than ONNX: a transformers checkpoint folder or a GGUF file is
exported to ONNX once (checked against torch, cached), and its tokenizer comes with it.

    checkpoint.py  what the path names; safetensors or GGUF weights only, never a pickle
    cache.py       where exports live, keyed by the checkpoint's files; reading one back
    exporter.py    transformers -> torch.onnx -> onnxruntime check -> tokenizer.json

Importing this package imports no torch: only an export does.
"""

from attnrewrite.ingest.cache import Exported, cache_folder, exported_model
from attnrewrite.ingest.checkpoint import Checkpoint, checkpoint_of

__all__ = ["Checkpoint", "Exported", "cache_folder", "checkpoint_of", "exported_model"]
