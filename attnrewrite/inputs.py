"""Inputs generated from a model's signature: what verification and reports run on.

Token ids stay inside the vocabulary (read off the embedding Gather), attention masks get
some padding (the last positions of the second row), position ids count up, floats are
standard normal. Symbolic dimensions: the first axis is the batch, names with "past" are
cache lengths, every other one is the sequence length.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnrewrite.budget import array_bytes, check_bytes
from attnrewrite.errors import AttnRewriteError

DEFAULT_BATCH = 2
DEFAULT_PAST = 3
PADDED_POSITIONS = 2


SHAPE_ONLY_OPS = frozenset({"Reshape", "Cast", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
# ops that look ids up in a table: (ids input, table input) pairs
LOOKUPS = {
    "Gather": ((1, 0),),
    "EmbedLayerNormalization": ((0, 2), (1, 4)),  # onnxruntime's fused BERT embedding
}


def vocabulary_sizes(graph: ir.Graph) -> dict[str, int]:
    """Input name -> rows of the smallest embedding table it indexes (Gather(table, ids)),
    following the ids through reshapes and casts."""
    sizes = {}
    for value in graph.inputs:
        frontier, found = [value], []
        for _ in range(6):
            following = []
            for current in frontier:
                for node, index in current.uses():
                    found += [
                        rows
                        for ids, table in LOOKUPS.get(node.op_type, ())
                        if index == ids and (rows := _table_rows(node, table)) is not None
                    ]
                    if node.op_type in SHAPE_ONLY_OPS and index == 0:
                        following.append(node.outputs[0])
            frontier = following
        if found:
            sizes[value.name or ""] = min(found)
    return sizes


def _table_rows(node: ir.Node, index: int) -> int | None:
    """Rows of the initializer `node` reads at `index` (tied weights arrive through Identity)."""
    table = node.inputs[index] if len(node.inputs) > index else None
    producer = table.producer() if table is not None else None
    if producer is not None and producer.op_type == "Identity":
        table = producer.inputs[0]
    if table is None or not table.is_initializer() or table.const_value is None:
        return None
    shape = table.const_value.shape
    return shape[0] if len(shape) else None


def dimension_size(
    dim: ir.SymbolicDim | int | str | None, axis: int, seq_len: int, batch: int = DEFAULT_BATCH
) -> int:
    """A concrete size for one dimension of an input, from its name and position."""
    if isinstance(dim, ir.SymbolicDim):
        dim = dim.value
    if isinstance(dim, int):
        return dim
    name = (dim or "").lower()
    if "total" in name or "+" in name:
        return DEFAULT_PAST + seq_len
    if "past" in name or "cache" in name:
        return DEFAULT_PAST
    if axis == 0 or "batch" in name:
        return batch
    return seq_len


def generate_inputs(
    model: ir.Model, seq_len: int, batch: int = DEFAULT_BATCH, seed: int = 0
) -> dict[str, np.ndarray]:
    """One array per graph input, sized and checked against the memory budget before any
    is allocated."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary_sizes(model.graph)
    planned = {}
    for value in model.graph.inputs:
        if value.is_initializer():
            continue
        dims = value.shape or ()
        shape = [dimension_size(dim, axis, seq_len, batch) for axis, dim in enumerate(dims)]
        planned[value.name or ""] = (shape, array_type(value))
    total = sum(array_bytes(f"input '{n}'", s, d) for n, (s, d) in planned.items())
    shapes = ", ".join(f"{n} {s}" for n, (s, _) in planned.items())
    check_bytes(f"the generated inputs ({shapes[:200]})", total)
    feeds = {
        name: _fill(name.lower(), shape, dtype, vocab.get(name), rng)
        for name, (shape, dtype) in planned.items()
    }
    return _full_caches(feeds, seq_len)


def array_type(value: ir.Value) -> np.dtype:
    """The input's numpy type; one line for a type that has none (no tensor, or undefined)."""
    kind = value.type.dtype if isinstance(value.type, ir.TensorType) else ir.DataType.UNDEFINED
    try:
        return np.dtype(kind.numpy())
    except TypeError:
        raise AttnRewriteError(
            f"input '{value.name}' has element type {int(kind)}, which has no array type to "
            "generate"
        ) from None


# GroupQueryAttention's cache lengths, as past + n plus this offset: every cache full
CACHE_LENGTHS = {"seqlens_k": -1, "total_sequence_length": 0}


def _full_caches(feeds: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    past = next((a.shape[-2] for k, a in feeds.items() if "past" in k.lower() and a.ndim == 4), 0)
    for name, offset in CACHE_LENGTHS.items():
        if name in feeds:
            feeds[name] = np.full_like(feeds[name], past + seq_len + offset)
    return feeds


def _fill(
    name: str, shape: list[int], dtype: np.dtype, vocab: int | None, rng: np.random.Generator
) -> np.ndarray:
    if "mask" in name:
        mask = np.ones(shape, dtype=dtype)
        if len(shape) >= 2 and shape[0] > 1 and shape[-1] > 2 * PADDED_POSITIONS:
            mask[1, ..., -PADDED_POSITIONS:] = 0
        return mask
    if "position" in name and np.issubdtype(dtype, np.integer):
        return np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
    if "token_type" in name:
        return np.zeros(shape, dtype=dtype)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, vocab or 100, size=shape).astype(dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype=bool)
    return rng.standard_normal(shape).astype(dtype)
