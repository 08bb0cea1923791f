"""Saved ExportedPrograms (.pt2) that carry a payload, or are damaged.

A payload creates the sandbox's marker folder if it ever runs: a pickle (os.mkdir by
__reduce__) as sample inputs, as a weight or constant marked as pickled, as a legacy weights
or constants file, as an opaque or custom object; Python source where the program's JSON
holds code (a shape expression sympy evaluates, a guard exec'd when the module is built, an
operator target resolved by name, a module a pytree context imports); an archive of the old
format whose state dict is a pickle. Damaged archives (bytes, JSON, configs) and untouched
ones run too, so that the refusals are not all the family sees.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import zipfile
from collections.abc import Callable

from tests.fuzz.cases import METHODS, OUT, Case
from tests.fuzz.sandbox import Sandbox
from tests.fuzz.seeds import PT2_SEEDS, pt2_seeds

Entries = dict[str, bytes]
Edit = Callable[[Entries, str, random.Random], str]


class Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def payload_pickle(marker: str) -> bytes:
    return pickle.dumps(Payload(marker), protocol=2)


def python_payload(marker: str) -> str:
    return f"__import__('os').mkdir({marker!r})"


def read_archive(data: bytes) -> tuple[str, Entries]:
    """(the archive's folder name, entries by their name inside it)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        prefix = names[0].split("/", 1)[0]
        return prefix, {n.split("/", 1)[1]: archive.read(n) for n in names}


def write_archive(prefix: str, entries: Entries) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in entries.items():
            archive.writestr(f"{prefix}/{name}" if prefix else name, content)
    return buffer.getvalue()


def _program(entries: Entries) -> dict:
    return json.loads(entries["models/model.json"])


def _save_program(entries: Entries, program: dict) -> None:
    entries["models/model.json"] = json.dumps(program).encode()


def _config(entries: Entries, kind: str) -> dict:
    return json.loads(entries[f"data/{kind}/model_{kind}_config.json"])


def _save_config(entries: Entries, kind: str, config: dict) -> None:
    entries[f"data/{kind}/model_{kind}_config.json"] = json.dumps(config).encode()


# ---- pickles


def sample_inputs(entries: Entries, marker: str, rng: random.Random) -> str:
    entries["data/sample_inputs/model.pt"] = payload_pickle(marker)
    return "pickle as sample inputs"


def pickled_weight(entries: Entries, marker: str, rng: random.Random) -> str:
    config = _config(entries, "weights")
    fqn = rng.choice(sorted(config["config"]))
    meta = config["config"][fqn]
    meta["use_pickle"] = True
    entries[f"data/weights/{meta['path_name']}"] = payload_pickle(marker)
    _save_config(entries, "weights", config)
    return f"weight {fqn} marked as pickled"


def legacy_weights(entries: Entries, marker: str, rng: random.Random) -> str:
    entries["data/weights/model.pt"] = payload_pickle(marker)
    return "legacy weights file"


def legacy_constants(entries: Entries, marker: str, rng: random.Random) -> str:
    entries["data/constants/model.pt"] = payload_pickle(marker)
    return "legacy constants file"


def _constant(entries: Entries, marker: str, path_name: str, use_pickle: bool) -> None:
    config = _config(entries, "constants")
    config["config"]["c0"] = {
        "path_name": path_name,
        "is_param": False,
        "use_pickle": use_pickle,
        "tensor_meta": None,
    }
    entries[f"data/constants/{path_name}"] = payload_pickle(marker)
    _save_config(entries, "constants", config)


def opaque_constant(entries: Entries, marker: str, rng: random.Random) -> str:
    _constant(entries, marker, "opaque_obj_0", True)
    return "opaque object constant"


def custom_constant(entries: Entries, marker: str, rng: random.Random) -> str:
    _constant(entries, marker, "custom_obj_0", True)
    return "custom object constant"


def pickled_tensor_constant(entries: Entries, marker: str, rng: random.Random) -> str:
    _constant(entries, marker, "tensor_0", True)
    return "tensor constant marked as pickled"


# ---- code in the program's JSON


def _walk(value, key: str):
    """Every dict in `value` that has `key`."""
    if isinstance(value, dict):
        if key in value:
            yield value
        for item in value.values():
            yield from _walk(item, key)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item, key)


def shape_expression(entries: Entries, marker: str, rng: random.Random) -> str:
    program = _program(entries)
    holders = list(_walk(program, "expr_str")) or [{}]
    rng.choice(holders)["expr_str"] = python_payload(marker)
    if not holders[0]:
        program["range_constraints"][python_payload(marker)] = {"min_val": 2, "max_val": 9}
    _save_program(entries, program)
    return "code as a shape expression"


def guard(entries: Entries, marker: str, rng: random.Random) -> str:
    program = _program(entries)
    program["guards_code"] = [f"{python_payload(marker)} is None"]
    _save_program(entries, program)
    return "code as a guard"


def operator_target(entries: Entries, marker: str, rng: random.Random) -> str:
    program = _program(entries)
    nodes = program["graph_module"]["graph"]["nodes"]
    node = rng.choice(nodes)
    node["target"] = rng.choice(
        ["torch.os.mkdir", "_operator.call", "torch.serialization.os.mkdir"]
    )
    node["inputs"] = [{"name": "path", "arg": {"as_string": marker}, "kind": 1}]
    _save_program(entries, program)
    return f"operator target {node['target']}"


def attribute_name(entries: Entries, marker: str, rng: random.Random) -> str:
    """A parameter name that would break out of the quotes FX writes it between."""
    program = _program(entries)
    config = _config(entries, "weights")
    evil = f'q") or {python_payload(marker)} or getattr(self, "q'
    spec = next(iter(_walk(program, "parameter_name")))
    old = spec["parameter_name"]
    spec["parameter_name"] = evil
    config["config"][evil] = config["config"].pop(old)
    _save_program(entries, program)
    _save_config(entries, "weights", config)
    return "parameter name with code"


def pytree_import(entries: Entries, marker: str, rng: random.Random) -> str:
    program = _program(entries)
    context = {
        "default_factory_module": "tests.fuzz.tripwire",
        "default_factory_name": "make",
        "dict_context": [],
    }
    spec = [1, {"type": "collections.defaultdict", "context": json.dumps(context),
                "children_spec": []}]  # fmt: skip
    for holder in _walk(program, "in_spec"):
        holder["in_spec"] = json.dumps(spec)
    _save_program(entries, program)
    return "pytree context importing a module"


def compiled_library(entries: Entries, marker: str, rng: random.Random) -> str:
    entries["data/aotinductor/model/model.so"] = b"\x7fELF" + os.urandom(64)
    entries["data/aotinductor/model/model.wrapper.cpp"] = b"int main() {}"
    return "AOTInductor library"


# ---- damage and untouched


def damaged_json(entries: Entries, marker: str, rng: random.Random) -> str:
    program = _program(entries)
    holders = [h for h in _walk(program, "name")] or [program]
    holder = rng.choice(holders)
    key = rng.choice(sorted(holder))
    holder[key] = rng.choice([None, 0, -1, 2**70, "", "x" * 1000, [], {}, [[[]]]])
    _save_program(entries, program)
    return f"JSON field {key} damaged"


def damaged_config(entries: Entries, marker: str, rng: random.Random) -> str:
    config = _config(entries, "weights")
    meta = config["config"][rng.choice(sorted(config["config"]))]
    sizes = meta["tensor_meta"]["sizes"]
    sizes[0] = {"as_int": rng.choice([0, -1, 2**40, 2**62])}
    meta["tensor_meta"]["dtype"] = rng.choice([meta["tensor_meta"]["dtype"], 0, 99])
    _save_config(entries, "weights", config)
    return "weight metadata damaged"


def missing_entry(entries: Entries, marker: str, rng: random.Random) -> str:
    name = rng.choice(sorted(entries))
    del entries[name]
    return f"{name} missing"


def untouched(entries: Entries, marker: str, rng: random.Random) -> str:
    return "untouched"


EDITS: tuple[tuple[Edit, int], ...] = (
    (sample_inputs, 3),
    (pickled_weight, 3),
    (legacy_weights, 2),
    (legacy_constants, 2),
    (opaque_constant, 2),
    (custom_constant, 1),
    (pickled_tensor_constant, 1),
    (shape_expression, 3),
    (guard, 2),
    (operator_target, 2),
    (attribute_name, 2),
    (pytree_import, 2),
    (compiled_library, 1),
    (damaged_json, 3),
    (damaged_config, 2),
    (missing_entry, 2),
    (untouched, 2),
)


def old_format(marker: str, seed: bytes) -> bytes:
    """The pre-2.8 layout: top-level `version` and a pickled state dict."""
    _, entries = read_archive(seed)
    return write_archive(
        "",
        {
            "version": b"8.13",
            "serialized_exported_program.json": entries["models/model.json"],
            "serialized_state_dict.json": payload_pickle(marker),
            "serialized_constants.json": payload_pickle(marker),
            "serialized_example_inputs.json": payload_pickle(marker),
        },
    )


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    damaged = bytearray(data)
    for _ in range(rng.choice([1, 8, 64])):
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
    return bytes(damaged)


def make(rng: random.Random) -> Case:
    seed_name = rng.choice(PT2_SEEDS)
    roll = rng.random()
    if roll < 0.06:
        label, build = "old archive format", _build_old(seed_name)
    elif roll < 0.14:
        label, build = "archive bytes flipped", _build_flipped(seed_name, rng.random())
    else:
        edits, weights = zip(*EDITS, strict=True)
        edit = rng.choices(edits, weights)[0]
        label, build = edit.__name__, _build_edited(seed_name, edit, rng.random())
    if rng.random() < 0.3:
        argv: tuple[str, ...] = ("inspect", "{dir}/model.pt2")
    else:
        argv = ("{dir}/model.pt2", "--method", *rng.choice(METHODS[:2]), *OUT)
    return Case("pt2", f"{seed_name}: {label}", build, argv)


def _build_edited(seed_name: str, edit: Edit, seed: float):
    def setup(box: Sandbox) -> None:
        prefix, entries = read_archive(pt2_seeds()[seed_name])
        edit(entries, str(box.marker), random.Random(seed))
        (box.model_dir / "model.pt2").write_bytes(write_archive(prefix, entries))

    return setup


def _build_old(seed_name: str):
    def setup(box: Sandbox) -> None:
        data = old_format(str(box.marker), pt2_seeds()[seed_name])
        (box.model_dir / "model.pt2").write_bytes(data)

    return setup


def _build_flipped(seed_name: str, seed: float):
    def setup(box: Sandbox) -> None:
        data = flip_bytes(pt2_seeds()[seed_name], random.Random(seed))
        (box.model_dir / "model.pt2").write_bytes(data)

    return setup
