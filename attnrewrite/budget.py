"""The memory budget for what a user's files and options make the tool allocate.

Generated inputs (sized from the model's dimensions and --batch / --seq-len), .npz inputs
(sized from their headers), text files, external weights and archive entries are sized
before anything is allocated and refused above the budget: a dimension of 2**40 or a forged
header is then one clear line, not an allocation that takes the machine down. The budget
is half the memory available when the check runs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from attnrewrite.errors import AttnRewriteError


def budget_bytes() -> int:
    """Half of MemAvailable (/proc/meminfo), or of physical memory where that is unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def size_text(nbytes: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def check_bytes(what: str, nbytes: int) -> None:
    """Refuse `what` if it would take more than the budget."""
    budget = budget_bytes()
    if nbytes > budget:
        raise AttnRewriteError(
            f"{what} would take {size_text(nbytes)}, more than the memory budget "
            f"({size_text(budget)}, half of the available memory)"
        )


def array_bytes(what: str, shape: Sequence[int], dtype: np.dtype | type) -> int:
    """Bytes of an array of `shape`, refusing negative dimensions (Python ints: no overflow)."""
    if any(int(d) < 0 for d in shape):
        raise AttnRewriteError(f"{what} has a negative dimension: {list(shape)}")
    return math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
