"""Where report inputs come from: generated from the signature, a user's .npz, or text.

Every source is checked against the model's signature, so a mismatch is one clear error
instead of an onnxruntime traceback.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from attnrewrite.budget import array_bytes, check_bytes
from attnrewrite.errors import AttnRewriteError
from attnrewrite.inputs import array_type, generate_inputs, vocabulary_sizes

TEXT_BYTES_PER_TOKEN = 64  # read at most this much text per token needed (a tokenizer's worst)


@dataclass(frozen=True)
class ReportInputs:
    feeds: dict[str, np.ndarray]
    source: str  # "generated" | "npz" | "text"
    path: str | None = None

    @property
    def token_ids(self) -> np.ndarray | None:
        """[B, S] integer ids, the first integer input of rank 2 (next-token labels)."""
        for name, value in self.feeds.items():
            if value.ndim == 2 and np.issubdtype(value.dtype, np.integer) and "mask" not in name:
                return value
        return None

    @property
    def keep(self) -> np.ndarray | None:
        """[B, S] attention mask (1 = real token), if the model takes one."""
        for name, value in self.feeds.items():
            if "attention_mask" in name and value.ndim == 2:
                return value
        return None

    def is_logits(self, array: np.ndarray) -> bool:
        """[B, S, V] beside [B, S] token ids: next-token logits."""
        ids = self.token_ids
        return ids is not None and array.ndim == 3 and array.shape[:2] == ids.shape

    def describe(self) -> dict:
        ids = self.token_ids
        first = next(iter(self.feeds.values()))
        return {
            "source": self.source,
            "path": self.path,
            "batch": int(first.shape[0]) if first.ndim else 1,
            "seq_len": int(ids.shape[1]) if ids is not None else int(first.shape[-1]),
            "names": list(self.feeds),
        }


def graph_inputs(model: ir.Model) -> list[ir.Value]:
    return [v for v in model.graph.inputs if not v.is_initializer()]


def _signature(model: ir.Model) -> str:
    """`input_ids int64 [batch, seq], attention_mask int64 [batch, seq]`."""
    parts = []
    for value in graph_inputs(model):
        dims = ", ".join(str(d) if isinstance(d, int) else d.value or "0" for d in _dims(value))
        parts.append(f"{value.name} {array_type(value)} [{dims}]")
    return ", ".join(parts)


def _dims(value: ir.Value) -> tuple[int | ir.SymbolicDim, ...]:
    return tuple(value.shape or ())


def check_fits(model: ir.Model, feeds: dict[str, np.ndarray], label: str) -> None:
    """Every model input present with its rank, element type and fixed sizes."""
    for value in graph_inputs(model):
        name = value.name or ""
        if name not in feeds:
            raise AttnRewriteError(
                f"{label} has no input '{name}' that the model needs (it holds "
                f"{', '.join(sorted(feeds)) or 'nothing'}; the model takes {_signature(model)})"
            )
        array = feeds[name]
        want = array_type(value)
        if array.dtype != want:
            raise AttnRewriteError(
                f"{label}: input '{name}' is {array.dtype}, the model expects {want}"
            )
        dims = _dims(value)
        if array.ndim != len(dims):
            raise AttnRewriteError(
                f"{label}: input '{name}' has rank {array.ndim}, the model expects {len(dims)}"
            )
        for axis, dim in enumerate(dims):
            if isinstance(dim, int) and dim != array.shape[axis]:
                raise AttnRewriteError(
                    f"{label}: input '{name}' axis {axis} is {array.shape[axis]}, the "
                    f"model expects {dim}"
                )
    vocab = vocabulary_sizes(model.graph)
    for name, size in vocab.items():
        ids = feeds.get(name)
        if ids is not None and ids.size and (ids.min() < 0 or ids.max() >= size):
            raise AttnRewriteError(
                f"{label}: token ids in '{name}' fall outside the vocabulary [0, {size})"
            )


def from_npz(model: ir.Model, path: Path) -> ReportInputs:
    try:
        with np.load(path) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive of named arrays")
            check_bytes(
                f"the arrays in {path}", sum(_npy_bytes(data.zip, m) for m in data.zip.namelist())
            )
            feeds = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise AttnRewriteError(f"{path} is not a readable .npz file ({err})") from None
    check_fits(model, feeds, str(path))
    wanted = {v.name for v in graph_inputs(model)}
    return ReportInputs({k: v for k, v in feeds.items() if k in wanted}, "npz", str(path))


def _npy_bytes(archive: zipfile.ZipFile, member: str) -> int:
    """An array's size from its .npy header, before the array is read; object arrays (which
    np.load would unpickle) are refused."""
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"{member}: .npy format {version} is not supported")
    if dtype.hasobject:
        raise ValueError(f"{member} holds Python objects, which would need pickle")
    return array_bytes(member, shape, dtype)


def from_text(
    model: ir.Model, path: Path, tokenizer: str, seq_len: int, batch: int
) -> ReportInputs:
    """Token ids from a text file: `tokenizer` is a tokenizer.json, or "bytes" (UTF-8)."""
    if not path.is_file():
        raise AttnRewriteError(f"no such text file: {path}")
    with path.open("rb") as stream:  # the start is all that is used: never the whole of a huge file
        text = stream.read(TEXT_BYTES_PER_TOKEN * batch * seq_len).decode("utf-8", "replace")
    if tokenizer == "bytes":
        ids = list(text.encode("utf-8"))
    else:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise AttnRewriteError("--tokenizer needs the 'tokenizers' package") from None
        try:
            ids = Tokenizer.from_file(tokenizer).encode(text).ids
        except Exception as err:  # tokenizers raises its own exception type
            raise AttnRewriteError(f"cannot read tokenizer {tokenizer}: {err}") from None
    if len(ids) < batch * seq_len:
        raise AttnRewriteError(
            f"{path} gives {len(ids)} tokens; {batch} x {seq_len} are needed (lower --seq-len)"
        )
    rows = np.asarray(ids[: batch * seq_len], dtype=np.int64).reshape(batch, seq_len)
    feeds = generate_inputs(model, seq_len, batch)
    (ids_name,) = [n for n, v in feeds.items() if v.ndim == 2 and "mask" not in n][:1] or [None]
    if ids_name is None:
        raise AttnRewriteError("--text needs a model with a token-id input [batch, seq]")
    feeds[ids_name] = rows.astype(feeds[ids_name].dtype)
    for name in feeds:
        if "attention_mask" in name:
            feeds[name] = np.ones_like(feeds[name])
    check_fits(model, feeds, str(path))
    return ReportInputs(feeds, "text", str(path))


def generated(model: ir.Model, seq_len: int, batch: int) -> ReportInputs:
    return ReportInputs(generate_inputs(model, seq_len, batch), "generated")
