"""Byte-level damage: a seed model's bytes flipped, cut, spliced, repeated or padded."""

from __future__ import annotations

import random

from tests.fuzz.cases import Case, command, write_files
from tests.fuzz.seeds import onnx_seeds

INTERESTING = (
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\xff" * 10,
    b"\x08\x01",
    b"\x12\xff\xff\xff\x0f",
)


def _flip(rng: random.Random, data: bytearray) -> str:
    count = rng.choice([1, 2, 4, 16, 64])
    for _ in range(count):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return f"flip {count} bits"


def _truncate(rng: random.Random, data: bytearray) -> str:
    keep = rng.randrange(len(data))
    del data[keep:]
    return f"cut at {keep}"


def _insert(rng: random.Random, data: bytearray) -> str:
    at = rng.randrange(len(data) + 1)
    data[at:at] = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randbytes(8)
    return f"insert at {at}"


def _delete(rng: random.Random, data: bytearray) -> str:
    at = rng.randrange(len(data))
    del data[at : at + rng.randint(1, 64)]
    return f"delete at {at}"


def _repeat(rng: random.Random, data: bytearray) -> str:
    at, size = rng.randrange(len(data)), rng.randint(1, 256)
    data[at:at] = data[at : at + size]
    return f"repeat {size} at {at}"


def _overwrite(rng: random.Random, data: bytearray) -> str:
    value = rng.choice(INTERESTING)
    at = rng.randrange(len(data))
    data[at : at + len(value)] = value
    return f"overwrite at {at}"


def _append(rng: random.Random, data: bytearray) -> str:
    data += rng.randbytes(rng.choice([1, 7, 100]))
    return "append garbage"


def _splice(rng: random.Random, data: bytearray) -> str:
    other = onnx_seeds()[rng.choice(sorted(onnx_seeds()))]
    data[rng.randrange(len(data)) :] = other[rng.randrange(len(other)) :]
    return "splice"


MUTATIONS = (_flip, _truncate, _insert, _delete, _repeat, _overwrite, _append, _splice)


def make(rng: random.Random) -> Case:
    name = rng.choice(sorted(onnx_seeds()))
    data = bytearray(onnx_seeds()[name])
    done = [rng.choice(MUTATIONS)(rng, data) for _ in range(rng.choice([1, 1, 2, 3]))]
    if not data:
        data += b"\x00"
    label = f"{name}: {', '.join(done)}"
    return Case("bytes", label, write_files({"model.onnx": bytes(data)}), command(rng))
