"""Process memory at long context: the peak a report prints, and the C allocator kept close to
what is live.

onnxruntime sessions here run without their memory arena, so every tensor a run frees goes
back to the C library's malloc. glibc's malloc hands a large buffer back to the system when it
is freed only while the buffer is above its mmap threshold, and it raises that threshold to
the size of each large buffer freed (up to 32 MiB). After a few frees, a long-context run's
medium tensors (SmolLM2 at n = 8192: [1, 9, 8192, 64] is 18 MiB) are carved out of heaps, one
per thread, that grow to the run's worst moment and keep what they freed: the multipole
rewrite of SmolLM2 held 8.1 GiB at the end of one run for 2.0 GiB of outputs, 3.3 GiB with
the threshold fixed at 1 MiB. Other C libraries are left as they are.
"""

from __future__ import annotations

import ctypes
import gc
import platform
import resource
import sys
from functools import cache

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD = 1 << 20  # bytes: every buffer this large is mapped alone and unmapped when freed


@cache
def _glibc() -> ctypes.CDLL | None:
    """The running glibc, or None under another C library (musl, macOS, Windows)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL("libc.so.6")


def unmap_large_buffers() -> None:
    """Every buffer of MMAP_THRESHOLD bytes or more is given back to the system when it is
    freed, for the rest of the process (glibc cannot return to its sliding threshold).

    Each such buffer then costs its page faults on every allocation, as arena-less sessions'
    buffers above 32 MiB always did. Sessions with onnxruntime's memory pattern (the default)
    take a run's tensors from one block and hardly notice: SmolLM2's multipole speed-up at
    n = 2048 read 1.25x and 1.23x with it against 1.30x and 1.29x without (alternating runs
    on a shared machine, each model's runs spreading +-5%)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_freed() -> None:
    """Free what only cycles still hold (the IR graphs of a rewrite) and hand the C heap's
    free pages back to the system, before a run that needs them at long context."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (every stage and model run included), MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
