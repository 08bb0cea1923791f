"""The export cache: a checkpoint is exported to ONNX once, later runs read the export.

    $ATTNREWRITE_CACHE, else $XDG_CACHE_HOME/attnrewrite, else ~/.cache/attnrewrite
        exports/NAME-KEY/NAME.onnx (+ NAME.onnx.data above 1 GB), tokenizer.json, export.json

KEY hashes the checkpoint's resolved path, the name, size and modification time of every
file the export reads, and EXPORT_FORMAT: replacing or touching a weight file makes a new
export. Nothing is ever written beside or inside the user's checkpoint. An entry is complete
when export.json exists: the exporter writes into a staging folder renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnrewrite.errors import AttnRewriteError
from attnrewrite.ingest.checkpoint import Checkpoint

CACHE_VARIABLE = "ATTNREWRITE_CACHE"
EXPORT_FORMAT = 1  # bump when the exporter writes something else for the same checkpoint
TOKENIZER_FILE = "tokenizer.json"
RECORD_FILE = "export.json"


@dataclass(frozen=True)
class Exported:
    """An export folder: the ONNX model, its tokenizer (None when the checkpoint has none
    the tool can read), export.json's content, and whether it came from the cache."""

    onnx: Path
    tokenizer: Path | None
    record: dict[str, Any]
    cached: bool = False

    @classmethod
    def read(cls, folder: Path) -> Exported:
        record = json.loads((folder / RECORD_FILE).read_text())
        tokenizer = folder / TOKENIZER_FILE if record["tokenizer"] else None
        return cls(folder / record["onnx"], tokenizer, record, cached=True)

    def summary(self) -> str:
        """One line for the command's output: what was exported, how well it matches torch,
        and where it lives."""
        record = self.record
        check = f"logits max rel error {record['check']['max_relative_error']:.1e} vs torch"
        what = f"{record['architecture']}, {_count(record['parameters'])} parameters"
        source = Path(record["source"]).name
        if self.cached:
            line = f"cached ONNX export of {source} ({what}; {check})"
        else:
            line = f"exported {source} to ONNX in {record['seconds']:.0f} s ({what}; {check})"
        tokenizer = "tokenizer.json beside it" if self.tokenizer else record["tokenizer_note"]
        return f"{line} -> {self.onnx}; {tokenizer}"


def _count(number: int) -> str:
    """135M, 1.7B, 16k."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if number >= size:
            return f"{number / size:.3g}{unit}"
    return str(number)


def cache_root() -> Path:
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnrewrite"


def cache_folder(checkpoint: Checkpoint) -> Path:
    """exports/NAME-KEY under the cache root, refused inside the checkpoint's own folder."""
    root = cache_root().resolve()
    if root.is_relative_to(checkpoint.folder):
        raise AttnRewriteError(
            f"the export cache {root} is inside {checkpoint.folder}: set {CACHE_VARIABLE} to "
            "a folder outside the model"
        )
    return root / "exports" / f"{checkpoint.name}-{_key(checkpoint)}"


def _key(checkpoint: Checkpoint) -> str:
    files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in checkpoint.files()]
    identity = {"source": str(checkpoint.source), "files": files, "format": EXPORT_FORMAT}
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def exported_model(checkpoint: Checkpoint, announce: Callable[[str], None]) -> Exported:
    """The cached export of `checkpoint`, made first if there is none (`announce` says so
    before the minutes it takes)."""
    folder = cache_folder(checkpoint)
    if (folder / RECORD_FILE).is_file():
        return Exported.read(folder)
    from attnrewrite.ingest.exporter import export_checkpoint  # torch only from here

    def announce_cached(line: str) -> None:
        announce(f"{line}, once: later runs read it from this cache")

    return export_checkpoint(checkpoint, folder, checkpoint.name, announce_cached)
