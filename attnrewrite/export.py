"""Write artifacts atomically: everything goes to a hidden sibling folder, then is renamed
into place, so a failure never leaves a half-written model behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx_ir as ir

EXTERNAL_DATA_BYTES = 1 << 30  # above this, weights go to model.onnx.data beside the model


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success its files replace those in `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not target.exists():
        staging.rename(target)
        return
    for item in staging.iterdir():
        os.replace(item, target / item.name)
    staging.rmdir()


def save_model(model: ir.Model, path: Path) -> None:
    weight_bytes = sum(
        v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None
    )
    if weight_bytes > EXTERNAL_DATA_BYTES:
        ir.save(model, path, external_data=f"{path.name}.data")
    else:
        ir.save(model, path)


def new_folder_name(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`, ... : the first that does not exist yet."""
    candidate, index = base, 2
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-{index}")
        index += 1
    return candidate
