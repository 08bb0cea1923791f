"""Library chatter held back from users: TVM's compiler writes its C++ warnings ("Detected
pow(x, y) where y >= 3", "Fast mode segfaults ...") straight to file descriptor 2, where no
Python logging setting reaches them. `--verbose` shows them."""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def library_output(show: bool) -> Iterator[None]:
    """Inside, what native code writes to stderr and Python warnings are dropped, unless
    `show`. Our own errors are raised as exceptions and printed after the block."""
    if show:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
