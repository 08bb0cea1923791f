"""Inputs generated from a model's signature: what verification and reports run on.

Token ids stay inside the vocabulary (read off the embedding Gather), attention masks get
some padding (the last positions of the second row), position ids count up, floats are
standard normal. Symbolic dimensions: the first axis is the batch, names with "past" are
cache lengths, every other one is the sequence length.
"""

from __future__ import annotations

import numpy as np
import onnx

from attnrewrite.budget import array_bytes, check_bytes
from attnrewrite.errors import AttnRewriteError
from attnrewrite.protograph import readers

DEFAULT_BATCH = 2
DEFAULT_PAST = 3
PADDED_POSITIONS = 2


SHAPE_ONLY_OPS = frozenset({"Reshape", "Cast", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
# ops that look ids up in a table: (ids input, table input) pairs
LOOKUPS = {
    "Gather": ((1, 0),),
    "EmbedLayerNormalization": ((0, 2), (1, 4)),  # onnxruntime's fused BERT embedding
}


def vocabulary_sizes(graph: onnx.GraphProto) -> dict[str, int]:
    """Input name -> rows of the smallest embedding table it indexes (Gather(table, ids)),
    following the ids through reshapes and casts."""
    tables = {init.name: init.dims[0] for init in graph.initializer if init.dims}
    for node in graph.node:  # tied weights arrive through Identity
        if node.op_type == "Identity" and node.input[0] in tables:
            tables[node.output[0]] = tables[node.input[0]]
    reading = readers(graph)
    sizes = {}
    for value in graph.input:
        frontier, found = [value.name], []
        for _ in range(6):
            following = []
            for name in frontier:
                for node in reading.get(name, []):
                    found += [
                        tables[node.input[table]]
                        for ids, table in LOOKUPS.get(node.op_type, ())
                        if len(node.input) > table
                        and node.input[ids] == name
                        and node.input[table] in tables
                    ]
                    if node.op_type in SHAPE_ONLY_OPS and node.input[0] == name:
                        following.append(node.output[0])
            frontier = following
        if found:
            sizes[value.name] = min(found)
    return sizes


def dimension_size(
    dim: onnx.TensorShapeProto.Dimension | int | str | None,
    axis: int,
    seq_len: int,
    batch: int = DEFAULT_BATCH,
) -> int:
    """A concrete size for one dimension of an input, from its name and position."""
    if isinstance(dim, onnx.TensorShapeProto.Dimension):
        dim = dim.dim_value if dim.HasField("dim_value") else dim.dim_param
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
    model: onnx.ModelProto, seq_len: int, batch: int = DEFAULT_BATCH, seed: int = 0
) -> dict[str, np.ndarray]:
    """One array per graph input, sized and checked against the memory budget before any
    is allocated."""
    rng = np.random.default_rng(seed)
    initializers = {init.name for init in model.graph.initializer}
    vocab = vocabulary_sizes(model.graph)
    planned = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [
            dimension_size(dim, axis, seq_len, batch)
            for axis, dim in enumerate(tensor_type.shape.dim)
        ]
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        except (KeyError, ValueError):
            raise AttnRewriteError(
                f"input '{value.name}' has element type {tensor_type.elem_type}, which has no "
                "array type to generate"
            ) from None
        planned[value.name] = (shape, dtype)
    total = sum(array_bytes(f"input '{n}'", s, d) for n, (s, d) in planned.items())
    shapes = ", ".join(f"{n} {s}" for n, (s, _) in planned.items())
    check_bytes(f"the generated inputs ({shapes[:200]})", total)
    feeds = {
        name: _fill(name.lower(), shape, dtype, vocab.get(name), rng)
        for name, (shape, dtype) in planned.items()
    }
    return _full_caches(feeds, seq_len)


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
