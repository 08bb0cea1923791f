"""Write artifacts atomically: everything goes to a hidden sibling folder, then is renamed
into place, so a failure never leaves a half-written model behind.

`output_folder` is the command line's -o: the folder a whole command writes (model, report,
compiled library) appears only when the command succeeded, replaces a previous folder only
when asked to (never merges into it), and never overwrites an input. `staged_directory` adds
a set of files to a folder atomically (the stages use it inside `output_folder` and alone).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx_ir as ir

from attnrewrite.boundary import interruptions_held, point_of_no_return
from attnrewrite.errors import AttnRewriteError

EXTERNAL_DATA_BYTES = 1 << 30  # above this, weights go to model.onnx.data beside the model


def check_output_folder(target: Path, replace: bool, inputs: Iterable[Path]) -> None:
    """Refuse an output folder that would overwrite or hold an input, that is not a folder,
    or that holds files (unless `replace`): before any work is done."""
    resolved = target.resolve()
    for source in inputs:
        inside = source.resolve()
        if resolved == inside or resolved.is_relative_to(inside) or inside.is_relative_to(resolved):
            raise AttnRewriteError(f"output folder {target} would overwrite the input {source}")
    if target.is_symlink():
        raise AttnRewriteError(f"output folder {target} is a symbolic link; name a folder")
    if target.exists() and not target.is_dir():
        raise AttnRewriteError(f"output folder {target} exists and is not a folder")
    if target.is_dir() and not replace and any(target.iterdir()):
        raise AttnRewriteError(
            f"output folder {target} is not empty: choose another -o, or --force to replace it"
        )


@contextmanager
def output_folder(
    target: Path, replace: bool = False, keep_on: tuple[type[BaseException], ...] = ()
) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`. When the block ends normally, or with
    one of `keep_on` (a failed verification keeps its outputs for inspection), the staging
    folder becomes `target`, replacing a previous one if `replace`; otherwise, and on
    SIGINT/SIGTERM (raised as exceptions by the command line), it is removed. Once renamed,
    the command is past its point of no return: later signals no longer interrupt it."""
    target = Path(os.path.abspath(target))  # "." and "a/.." have no name to stage beside
    created: list[Path] = []
    with interruptions_held() as resume:
        try:
            created += _make_parents(target.parent)
            staging = _staging_folder(target)
        except OSError as err:
            _remove_empty(created)
            reason = err.strerror
            raise AttnRewriteError(f"cannot write the output folder {target}: {reason}") from err
        try:
            resume()
            yield staging
        except keep_on:
            _commit(staging, target, replace, created)
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            _remove_empty(created)
            raise
    _commit(staging, target, replace, created)


def _commit(staging: Path, target: Path, replace: bool, created: list[Path]) -> None:
    """Rename `staging` to `target`; an old non-empty `target` (only when `replace`) is
    moved aside first and removed after."""
    old = None
    try:
        with point_of_no_return(staging):
            if replace and target.is_dir() and not target.is_symlink() and any(target.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
                os.replace(target, old)
            os.replace(staging, target)
    except BaseException as err:
        if old is not None and not target.exists():
            os.replace(old, target)
            old = None
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        if isinstance(err, OSError):
            raise AttnRewriteError(f"cannot move the outputs to {target}: {err.strerror}") from err
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success its files replace those in `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with interruptions_held() as resume:
        staging = _staging_folder(target)
        try:
            resume()
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    with interruptions_held():  # the moves finish; an interruption is raised after them
        if not target.exists():
            staging.rename(target)
            return
        for item in staging.iterdir():
            os.replace(item, target / item.name)
        staging.rmdir()


def _staging_folder(target: Path) -> Path:
    """A hidden sibling of `target`, with the permissions a new folder gets (umask), not
    mkdtemp's 0700."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o777 & ~_umask())
    return staging


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns those created, deepest last."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _remove_empty(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


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
