"""What a model path names when it is not ONNX: a transformers checkpoint folder or a GGUF file.

    my-model/            config.json + model.safetensors (or sharded *.safetensors)
    model.Q4_1.gguf      llama.cpp's format; transformers de-quantizes it to float32
    folder/              no config.json but exactly one .gguf file: that file

Only safetensors and GGUF weights are read. PyTorch's pickle formats (pytorch_model.bin,
.pt, .pth, .ckpt) run code when unpickled, so a folder holding only those is refused with the
file named. Nothing here imports torch: an ONNX path answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attnrewrite.errors import AttnRewriteError

CONFIG_FILE = "config.json"
GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"
SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


@dataclass(frozen=True)
class Checkpoint:
    """A model transformers loads: `folder` with its config.json, or `gguf` inside `folder`."""

    folder: Path
    gguf: str | None = None

    @property
    def source(self) -> Path:
        """The path the user gave (resolved): the folder, or the .gguf file."""
        return self.folder / self.gguf if self.gguf else self.folder

    @property
    def name(self) -> str:
        """`my-model` for a folder, `model.Q4_1` for a GGUF file: the exported file's stem."""
        return Path(self.gguf).stem if self.gguf else self.folder.name

    def files(self) -> list[Path]:
        """What the export reads: the GGUF file, or the folder's own files (not its
        subfolders), so that a change to any of them makes a new export."""
        if self.gguf:
            return [self.source]
        return sorted(p for p in self.folder.iterdir() if p.is_file())


def checkpoint_of(path: Path) -> Checkpoint | None:
    """The checkpoint `path` names, or None for anything else (an ONNX or .pt2 file, or a
    path that does not exist: the caller reports those)."""
    if path.is_file() and path.suffix.lower() == GGUF_SUFFIX:
        _require_gguf(path)
        resolved = path.resolve()
        return Checkpoint(resolved.parent, resolved.name)
    if not path.is_dir():
        return None
    folder = path.resolve()
    if (folder / CONFIG_FILE).is_file():
        _require_safetensors(folder)
        return Checkpoint(folder)
    ggufs = sorted(p for p in folder.glob(f"*{GGUF_SUFFIX}") if p.is_file())
    if len(ggufs) == 1:
        _require_gguf(ggufs[0])
        return Checkpoint(folder, ggufs[0].name)
    found = f"{len(ggufs)} .gguf files, name one" if ggufs else "nor a .gguf file"
    raise AttnRewriteError(
        f"{path} is a folder but not a transformers checkpoint (no {CONFIG_FILE}) {found}"
    )


def _require_gguf(path: Path) -> None:
    with path.open("rb") as stream:
        if stream.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise AttnRewriteError(f"{path} is not a GGUF file (it does not start with 'GGUF')")


def _require_safetensors(folder: Path) -> None:
    """Weights in safetensors, or one line naming the pickle file found instead."""
    if any(folder.glob(f"*{SAFETENSORS_SUFFIX}")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise AttnRewriteError(
            f"{folder / pickled[0]} holds pickled PyTorch weights, which attnrewrite never "
            "loads (unpickling runs code from the file); save the model with "
            "save_pretrained(safe_serialization=True) to get model.safetensors"
        )
    raise AttnRewriteError(f"{folder} has a {CONFIG_FILE} but no .safetensors weights")
