"""One fuzz case's private folders, and the integrity checks made around its run.

    root/model/    the model and everything it may legitimately read (data files, .npz)
    root/outside/  files the tool must never read (secret.bin), watched with inotify
    root/cwd/      the process's working folder; `{out}` is root/cwd/out
    root/payload-ran   created by a payload if it ever runs

After the run: no file in model/ or outside/ changed, nothing new appeared except the
output folder of a run that succeeded (or failed its verification, which keeps the outputs
for inspection), no hidden staging folder is left anywhere, no file in outside/ was opened
(by Python or by a library's C++), none of secret.bin's bytes were copied into an output,
and the payload did not run.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SECRET = b"FUZZ-SECRET-" + bytes(range(256)) * 4  # distinctive: found again if ever copied
TRIPWIRE_ENV = "ATTNREWRITE_FUZZ_TRIPWIRE"  # where tests/fuzz/tripwire.py writes on import

IN_ACCESS, IN_OPEN = 0x001, 0x020
LARGE_FILE = 64 << 20


@dataclass(frozen=True)
class Sandbox:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def marker(self) -> Path:
        return self.root / "payload-ran"

    @property
    def model(self) -> Path:
        return self.model_dir / "model.onnx"

    @property
    def secret(self) -> Path:
        return self.outside / "secret.bin"

    def create(self) -> None:
        for folder in (self.model_dir, self.outside, self.cwd):
            folder.mkdir(parents=True)
        self.secret.write_bytes(SECRET)

    def fill(self, arg: str) -> str:
        """A command-line argument with {model}, {dir}, {out}, ... replaced by real paths."""
        names = {
            "{model}": self.model,
            "{dir}": self.model_dir,
            "{out}": self.cwd / "out",
            "{outside}": self.outside,
            "{cwd}": self.cwd,
            "{marker}": self.marker,
        }
        for name, path in names.items():
            arg = arg.replace(name, str(path))
        return arg


Entry = tuple[str, int, str]  # kind, mode, content digest or link target


def snapshot(root: Path) -> dict[str, Entry]:
    """Every entry under `root` (links not followed, FIFOs not opened)."""
    entries: dict[str, Entry] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            info = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                entries[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                entries[rel] = ("file", stat.S_IMODE(info.st_mode), _digest(path, info))
            elif stat.S_ISDIR(info.st_mode):
                entries[rel] = ("dir", stat.S_IMODE(info.st_mode), "")
            else:
                entries[rel] = ("other", stat.S_IMODE(info.st_mode), "")
    return entries


def _digest(path: Path, info: os.stat_result) -> str:
    """Content hash; size and mtime for files too big to read every time (sparse ones)."""
    if info.st_size > LARGE_FILE:
        return f"{info.st_size}:{info.st_mtime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


class OpenWatch:
    """inotify on a folder: reports files in it that any process opened or read."""

    def __init__(self, folder: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self._libc.inotify_add_watch(self._fd, bytes(folder), IN_OPEN | IN_ACCESS) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")

    def opened(self) -> set[str]:
        names: set[str] = set()
        try:
            while True:
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    break
                names.update(_event_names(data))
        finally:
            os.close(self._fd)
        return names


def _event_names(data: bytes) -> Iterator[str]:
    offset = 0
    while offset < len(data):
        _, _, _, length = struct.unpack_from("iIII", data, offset)
        name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
        offset += 16 + length
        if name:  # an event on the folder itself (a listing) reads no file
            yield name.decode(errors="replace")


def integrity_problems(
    box: Sandbox,
    before: dict[str, Entry],
    after: dict[str, Entry],
    outputs: tuple[Path, ...],
    kept: bool,
    opened_outside: set[str],
) -> list[str]:
    """What the run did that it must not do. `outputs` may change when `kept` (the run
    succeeded or kept its outputs after a failed verification)."""
    problems = []
    if box.marker.exists():
        problems.append("the payload ran")
    if opened_outside:
        problems.append(f"read outside the model's folder: {sorted(opened_outside)}")
    allowed = [p.relative_to(box.root) for p in outputs if p.is_relative_to(box.root)]

    def may_write(rel: str) -> bool:  # in an output folder, or a folder created to hold one
        path = Path(rel)
        return kept and any(path.is_relative_to(a) or a.is_relative_to(path) for a in allowed)

    for rel, entry in before.items():
        inputs = Path(rel).parts[0] in ("model", "outside")  # never changed, whatever -o says
        if after.get(rel) != entry and (inputs or not may_write(rel)):
            problems.append(f"changed or removed: {rel}")
    for rel in sorted(set(after) - set(before) - {box.marker.name}):
        if any(part.startswith(".") for part in Path(rel).parts):
            problems.append(f"hidden file left behind: {rel}")
        elif not may_write(rel):
            problems.append(f"left behind: {rel}")
        elif after[rel][0] == "file" and SECRET[:64] in (box.root / rel).read_bytes():
            problems.append(f"outside data copied into {rel}")
    return problems[:5]
