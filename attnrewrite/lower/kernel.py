"""A standalone TIR kernel: one PrimFunc plus the host constants it takes.

The FFT kernels (``attnrewrite.lower.fft``) and PolySketch's block scan
(``attnrewrite.lower.scan``) are built as TE computations and packaged here the same way, so
that one runner (``attnrewrite.lower.runner``) and one tuner (``attnrewrite.lower.tune``)
handle them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

DTYPES = ("float32", "float64")


@dataclass
class Kernel:
    """A PrimFunc plus the host constants it takes after its data arguments.

    ``func`` arguments: ``inputs`` (data), then ``constants`` (in order), then the output.
    ``inputs`` / ``output`` are (name, shape) pairs in the kernel's own layout (arrays of the
    same size are reshaped to it); ``view`` turns the raw output into the user's layout.
    """

    name: str
    func: object
    inputs: list[tuple[str, tuple[int, ...]]]
    output: tuple[str, tuple[int, ...]]
    constants: list[np.ndarray]
    dtype: str
    view: Callable[[np.ndarray], np.ndarray] = field(default=lambda a: a)
    flops: float = 0.0


def prim_func(tensors, name: str):
    """The PrimFunc of TE ``tensors`` (placeholders, then the output) exported as ``name``
    (``te.create_prim_func`` names every function "main")."""
    from tvm import te

    func = te.create_prim_func(tensors)
    return func.with_attr("global_symbol", name)


def check_dtype(dtype: str) -> None:
    """Raise ValueError unless the kernels are built for ``dtype`` (``DTYPES``)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype}")
