"""attnrewrite: find softmax attention in transformer graphs and substitute exact or
approximate attention operators, with honest accuracy reports."""

from __future__ import annotations

import os
from typing import Any

__version__ = "0.1.0"


def load(folder: str | os.PathLike, device: Any = None) -> Any:
    """The TVM library compiled by `attnrewrite MODEL --method M --target T -o folder`, ready
    to `.run(inputs)` (needs the `tvm` extra; tvm.runtime alone also loads it)."""
    from attnrewrite.lower import load as load_artifact

    return load_artifact(folder, device)
