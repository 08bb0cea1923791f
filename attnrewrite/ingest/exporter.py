"""Export a transformers checkpoint to ONNX, checked against torch, with its tokenizer.

    load (eager attention, float32, use_cache off) -> torch.onnx.export (dynamo, dynamic
    batch and sequence axes, attention_mask as an input) -> onnxruntime against torch at
    another batch and length -> tokenizer.json

Eager attention is the implementation every transformers model has, and the exporter
writes it as MatMul/Softmax/MatMul, which the finder matches. Weights above 1 GB go to
`NAME.onnx.data` beside the model (one protobuf cannot hold 2 GB).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch

from attnrewrite import __version__
from attnrewrite.boundary import quiet_libraries
from attnrewrite.errors import AttnRewriteError
from attnrewrite.export import EXTERNAL_DATA_BYTES, staged_directory
from attnrewrite.ingest.cache import RECORD_FILE, TOKENIZER_FILE, Exported
from attnrewrite.ingest.checkpoint import Checkpoint
from attnrewrite.inputs import generate_inputs
from attnrewrite.verify import difference

# architecture name suffix -> the transformers auto class that loads it; outputs logits
AUTO_CLASSES = {
    "ForCausalLM": "AutoModelForCausalLM",
    "ForMaskedLM": "AutoModelForMaskedLM",
}
GGUF_AUTO_CLASS = "AutoModelForCausalLM"  # transformers reads GGUF language models only

EXPORT_SHAPE = (2, 8)  # batch, sequence of the traced example
CHECK_SHAPE = (3, 11)  # another batch and length: the axes really are dynamic
MAX_BATCH = 4096
MAX_SEQ = 32768  # when the config gives no max_position_embeddings
MAX_RELATIVE_ERROR = 1e-3  # float32 export against torch; above it the export is refused
MEMORY_COPIES = 3  # float32 weights held at once: torch's, the exporter's, onnxruntime's


def export_checkpoint(
    checkpoint: Checkpoint, out_dir: Path, name: str, announce: Callable[[str], None]
) -> Exported:
    """Write `out_dir/NAME.onnx`, `tokenizer.json` and `export.json`, atomically; a failure
    is one line and leaves nothing behind. `announce` is told once the checkpoint is known
    to be supported, before the minutes the export takes."""
    _require_packages(checkpoint)
    started = time.perf_counter()
    with _libraries_quiet():
        config = _load_config(checkpoint)
        auto_class = _auto_class(checkpoint, config)
        parameters = _require_memory(checkpoint, auto_class, config)
    announce(f"exporting {checkpoint.source} to ONNX (torch.onnx, eager attention) into {out_dir}")
    with _libraries_quiet(), staged_directory(out_dir) as staging:
        model = _load_model(checkpoint, auto_class)
        wrapper = LogitsOnly(model)
        path = staging / f"{name}.onnx"
        exporting = time.perf_counter()
        _export(checkpoint, wrapper, config, path, parameters)
        export_seconds = time.perf_counter() - exporting
        check = _check(checkpoint, wrapper, path)
        missing_tokenizer = _save_tokenizer(checkpoint, staging / TOKENIZER_FILE)
        record = {
            "source": str(checkpoint.source),
            "onnx": path.name,
            "architecture": type(model).__name__,
            "parameters": parameters,
            "inputs": wrapper.input_names,
            "attention": "eager",
            "use_cache": False,
            "export_seconds": round(export_seconds, 1),
            "seconds": round(time.perf_counter() - started, 1),
            "check": {
                "batch": CHECK_SHAPE[0],
                "seq_len": CHECK_SHAPE[1],
                "max_relative_error": check,
                "tolerance": MAX_RELATIVE_ERROR,
            },
            "tokenizer": None if missing_tokenizer else TOKENIZER_FILE,
            **({"tokenizer_note": missing_tokenizer} if missing_tokenizer else {}),
            "versions": _versions(),
        }
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    tokenizer = None if missing_tokenizer else out_dir / TOKENIZER_FILE
    return Exported(out_dir / path.name, tokenizer, record)


class LogitsOnly(torch.nn.Module):
    """The model as ONNX sees it: token ids and, when the model takes one, a padding mask
    in; logits out; no KV cache."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        taken = inspect.signature(model.forward).parameters
        self.input_names = ["input_ids"] + (["attention_mask"] if "attention_mask" in taken else [])
        self.options = {"use_cache": False} if "use_cache" in taken else {}

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        masks = {"attention_mask": attention_mask} if attention_mask is not None else {}
        return self.model(input_ids=input_ids, **masks, **self.options).logits


def _require_packages(checkpoint: Checkpoint) -> None:
    wanted = ["transformers", "safetensors"] + (["gguf", "accelerate"] if checkpoint.gguf else [])
    missing = [p for p in wanted if importlib.util.find_spec(p) is None]
    if missing:
        raise AttnRewriteError(
            f"reading {checkpoint.source} needs the package(s) {', '.join(missing)}: "
            "pip install 'attnrewrite[hf]'"
        )


@contextlib.contextmanager
def _libraries_quiet() -> Iterator[None]:
    """No progress bars, prints or advice from transformers and the exporter: the command
    prints its own lines, and failures arrive as exceptions."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    with quiet_libraries(verbose=False), contextlib.redirect_stdout(io.StringIO()):
        yield


def _sources(checkpoint: Checkpoint) -> dict[str, Any]:
    """from_pretrained's arguments: local files only (no hub at run time), GGUF or
    safetensors weights (never a pickle), no code from the checkpoint."""
    if checkpoint.gguf:
        return {"gguf_file": checkpoint.gguf, "local_files_only": True}
    return {"use_safetensors": True, "local_files_only": True, "trust_remote_code": False}


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _load_config(checkpoint: Checkpoint) -> Any:
    from transformers import AutoConfig

    options = {k: v for k, v in _sources(checkpoint).items() if k != "use_safetensors"}
    try:
        config = AutoConfig.from_pretrained(str(checkpoint.folder), **options)
    except Exception as err:  # transformers raises ValueError, KeyError, OSError, ...
        raise AttnRewriteError(
            f"unsupported architecture: transformers cannot read {checkpoint.source} "
            f"({_first_line(err)})"
        ) from None
    if getattr(config, "auto_map", None):
        raise AttnRewriteError(
            f"unsupported architecture: {checkpoint.source} needs its own Python code "
            "(auto_map in config.json), which attnrewrite does not run"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise AttnRewriteError(
            f"unsupported architecture: {checkpoint.source} is an encoder-decoder model; "
            "export it to ONNX yourself (input_ids, attention_mask, decoder_input_ids)"
        )
    return config


def _auto_class(checkpoint: Checkpoint, config: Any) -> Any:
    """The auto class for the checkpoint's architecture, or one line naming what is not
    supported."""
    import transformers

    architectures = getattr(config, "architectures", None) or []
    if checkpoint.gguf or not architectures:
        name = GGUF_AUTO_CLASS
    else:
        suffix = next((s for s in AUTO_CLASSES if architectures[0].endswith(s)), None)
        if suffix is None:
            raise AttnRewriteError(
                f"unsupported architecture {architectures[0]} in {checkpoint.source}: "
                f"attnrewrite exports language models ({', '.join(AUTO_CLASSES)})"
            )
        name = AUTO_CLASSES[suffix]
    return getattr(transformers, name)


def _require_memory(checkpoint: Checkpoint, auto_class: Any, config: Any) -> int:
    """The parameter count, from the model built without weights; refuses a model whose
    float32 copies would not fit in this machine's memory."""
    try:
        with torch.device("meta"):
            skeleton = auto_class.from_config(config)
    except Exception as err:  # the config names a model this auto class cannot build
        raise AttnRewriteError(
            f"unsupported architecture: {checkpoint.source} ({_first_line(err)})"
        ) from None
    parameters = sum(p.numel() for p in skeleton.parameters())
    needed = parameters * 4 * MEMORY_COPIES
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise AttnRewriteError(
            f"exporting {checkpoint.source} needs about {needed / 2**30:.0f} GB of memory "
            f"({parameters / 1e9:.1f}B parameters in float32, {MEMORY_COPIES} copies); this "
            f"machine has {available / 2**30:.0f} GB"
        )
    return parameters


def _load_model(checkpoint: Checkpoint, auto_class: Any) -> torch.nn.Module:
    try:
        model = auto_class.from_pretrained(
            str(checkpoint.folder),
            attn_implementation="eager",
            dtype=torch.float32,
            **_sources(checkpoint),
        )
    except Exception as err:  # missing shards, bad headers, unknown quantisation, ...
        raise AttnRewriteError(
            f"transformers could not load {checkpoint.source} ({_first_line(err)})"
        ) from None
    return model.eval()


def _export(
    checkpoint: Checkpoint,
    wrapper: LogitsOnly,
    config: Any,
    path: Path,
    parameters: int,
) -> None:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    longest = getattr(config.get_text_config(), "max_position_embeddings", None) or MAX_SEQ
    seq = torch.export.Dim("seq", min=2, max=longest)
    axes = {name: {0: batch, 1: seq} for name in wrapper.input_names}
    example = _example(config, wrapper.input_names)
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                example,
                None,
                dynamo=True,
                input_names=wrapper.input_names,
                output_names=["logits"],
                dynamic_shapes=axes,
                report=False,
                verbose=False,
            )
            program.save(str(path), external_data=parameters * 4 > EXTERNAL_DATA_BYTES)
    except Exception as err:  # torch.export and the exporter raise many types
        raise AttnRewriteError(
            f"torch.onnx could not export {checkpoint.source} ({_first_line(err)})"
        ) from None


def _example(config: Any, names: list[str]) -> tuple[torch.Tensor, ...]:
    batch, seq = EXPORT_SHAPE
    generator = torch.Generator().manual_seed(0)
    vocabulary = config.get_text_config().vocab_size
    ids = torch.randint(0, vocabulary, (batch, seq), generator=generator)
    return (ids, torch.ones_like(ids))[: len(names)]


def _check(checkpoint: Checkpoint, wrapper: LogitsOnly, path: Path) -> float:
    """onnxruntime on the exported file against torch on the same inputs (ids inside the
    vocabulary, a padded row): the max relative error of the logits, refused above
    MAX_RELATIVE_ERROR."""
    batch, seq = CHECK_SHAPE
    feeds = generate_inputs(ir.load(str(path)), seq, batch)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (got,) = session.run(["logits"], feeds)
    except Exception as err:  # onnxruntime raises its own types
        raise AttnRewriteError(
            f"the ONNX export of {checkpoint.source} does not run in onnxruntime "
            f"({_first_line(err)})"
        ) from None
    with torch.no_grad():
        want = wrapper(*(torch.from_numpy(feeds[name]) for name in wrapper.input_names))
    error = difference("logits", want.numpy(), got).relative
    if not error <= MAX_RELATIVE_ERROR:
        raise AttnRewriteError(
            f"the ONNX export of {checkpoint.source} differs from the torch model by "
            f"{error:.1e} (max relative, tolerance {MAX_RELATIVE_ERROR:.0e}): refused"
        )
    return error


def _save_tokenizer(checkpoint: Checkpoint, path: Path) -> str | None:
    """The checkpoint's tokenizer as one tokenizer.json (what `--text` reads), converted by
    transformers from whatever the checkpoint holds (tokenizer.json, sentencepiece, GGUF
    metadata). A checkpoint without one is still exported: returns why there is none."""
    from transformers import AutoTokenizer

    options = {k: v for k, v in _sources(checkpoint).items() if k != "use_safetensors"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.folder), **options)
        tokenizer.backend_tokenizer.save(str(path))
    except Exception as err:  # no tokenizer files, a slow-only tokenizer, ...
        return f"no tokenizer: transformers read none from {checkpoint.source} ({_first_line(err)})"
    return None


def _versions() -> dict[str, str]:
    import transformers

    return {
        "attnrewrite": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
    }
