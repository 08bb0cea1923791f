"""Hostile files and options: paths that are not models, output folders that must be
refused or replaced, out-of-range and junk option values, report inputs crafted to allocate
without bound or to carry a pickle, and runs interrupted by SIGINT/SIGTERM."""

from __future__ import annotations

import io
import os
import random
import signal
import zipfile
from collections.abc import Callable

import numpy as np

from tests.fuzz.cases import METHODS, OUT, Case, command, pick, write_files
from tests.fuzz.sandbox import Sandbox
from tests.fuzz.seeds import onnx_seeds

GOOD = "gqa_expand"  # a small model every method rewrites


def _model(name: str = GOOD) -> bytes:
    return onnx_seeds()[name]


def _case(label: str, setup, argv, outputs=("{out}",), sig=None) -> Case:
    return Case("hostile", label, setup, tuple(argv), tuple(outputs), sig)


def _with_model(extra: Callable[[Sandbox], None] | None = None, name: str = GOOD):
    def setup(box: Sandbox) -> None:
        box.model.write_bytes(_model(name))
        if extra is not None:
            extra(box)

    return setup


# ---- the model path


def odd_model_path(rng: random.Random) -> Case:
    kind = rng.choice(
        ["folder", "missing", "dangling", "self-link", "loop", "fifo", "empty", "devnull",
         "dash", "unicode", "newline", "pt2-suffix", "zip", "sparse-huge", "link-to-model"]
    )  # fmt: skip
    path = "{dir}/m.onnx"

    def setup(box: Sandbox) -> None:
        target = box.model_dir / "m.onnx"
        if kind == "folder":
            target.mkdir()
        elif kind == "dangling":
            target.symlink_to(box.model_dir / "absent.onnx")
        elif kind == "self-link":
            target.symlink_to(target)
        elif kind == "loop":
            (box.model_dir / "a").symlink_to(target)
            target.symlink_to(box.model_dir / "a")
        elif kind == "fifo":
            os.mkfifo(target)
        elif kind == "empty":
            target.write_bytes(b"")
        elif kind == "zip":
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                archive.writestr("model.onnx", _model())
            target.write_bytes(buffer.getvalue())
        elif kind == "sparse-huge":
            with open(target, "wb") as handle:
                handle.truncate(rng.choice([3 << 30, 40 << 30]))
        elif kind == "link-to-model":
            box.model.write_bytes(_model())
            target.symlink_to(box.model)
        elif kind in ("dash", "unicode", "newline", "pt2-suffix"):
            names = {"dash": "-m.onnx", "unicode": "mödel ☃.onnx", "newline": "m\nx.onnx"}
            (box.model_dir / names.get(kind, "m.pt2")).write_bytes(_model())

    if kind == "devnull":
        path = "/dev/null"
    elif kind in ("dash", "unicode", "newline", "pt2-suffix"):
        names = {"dash": "-m.onnx", "unicode": "mödel ☃.onnx", "newline": "m\nx.onnx"}
        path = "{dir}/" + names.get(kind, "m.pt2")
        if kind == "dash" and rng.random() < 0.5:
            path = "-m.onnx"  # relative: argparse sees an option
    return _case(f"model path {kind}", setup, command(rng, path))


# ---- the output folder


def odd_output(rng: random.Random) -> Case:
    kind = rng.choice(
        ["input", "inside-input", "input-folder", "input-folder-force", "file", "file-force",
         "nonempty", "nonempty-force", "empty", "nested", "under-file", "proc", "long-name",
         "empty-string", "symlink", "symlink-force", "dot", "stale-staging"]
    )  # fmt: skip
    out, force = "{out}", "force" in kind

    def setup(box: Sandbox) -> None:
        box.model.write_bytes(_model())
        cwd_out = box.cwd / "out"
        if kind.startswith("file"):
            cwd_out.write_text("a file\n")
        elif kind.startswith("nonempty"):
            cwd_out.mkdir()
            (cwd_out / "report.html").write_text("an older report\n")
            (cwd_out / "keep").mkdir()
        elif kind == "empty":
            cwd_out.mkdir()
        elif kind == "under-file":
            (box.cwd / "f").write_text("x")
        elif kind.startswith("symlink"):
            cwd_out.symlink_to(box.outside)
        elif kind == "stale-staging":
            (box.cwd / ".out.abc123").mkdir()

    out = {
        "input": "{model}",
        "inside-input": "{model}/sub",
        "input-folder": "{dir}",
        "input-folder-force": "{dir}",
        "nested": "{cwd}/a/b/c",
        "under-file": "{cwd}/f/out",
        "proc": "/proc/attnrewrite-out",
        "long-name": "{cwd}/" + "x" * 300,
        "empty-string": "",
        "dot": ".",
    }.get(kind, out)
    argv = ["{model}", "--method", rng.choice(["exact", "window"]), "-o", out]
    if force:
        argv.append("--force")
    if rng.random() < 0.2:
        argv += ["--report", "--seq-len", "8", "--repeats", "1"]
    outputs = (out if out.startswith("{") else "{cwd}",)
    return _case(f"-o {kind}", setup, argv, outputs)


# ---- option values

NUMBERS = ("0", "-1", "1", "3", "2", "1000000000", str(2**62), str(2**80), "1e3", "nan", "inf",
           "-inf", "x", "", "0x10", " 4", "4.5", "1_000")  # fmt: skip
BOUNDED = ("--repeats", "--batch", "--seq-len", "--verify-seq-len")
PARAMS = {
    "multipole": ("--block", "--coarse", "--levels"),
    "polysketch": ("--degree", "--sketch-size", "--block", "--seed"),
    "convbasis": ("--k", "--probe"),
    "window": ("--width", "--sinks"),
}


def odd_option(rng: random.Random) -> Case:
    roll = rng.random()
    value = rng.choice(NUMBERS)
    if roll < 0.35:
        option = rng.choice(BOUNDED)
        argv = ["{model}", "--method", "exact", option, value, *OUT]
        if option in ("--repeats", "--batch", "--seq-len"):
            argv += ["--report"]
    elif roll < 0.7:
        method = rng.choice(sorted(PARAMS))
        option = rng.choice(PARAMS[method])
        argv = ["{model}", "--method", method, option, value, *OUT]
    elif roll < 0.8:
        option = "--max-error"
        argv = ["{model}", "--method", "auto", "--max-error", value, "--seq-len", "8", *OUT]
    elif roll < 0.9:
        option = "--sweep"
        sweep = rng.choice(["block=", "block=2,4", "k=" + ",".join(["2"] * 50), "=3", "nope=1",
                            "block=" + value, "width=1,2"])  # fmt: skip
        method = rng.choice(["multipole", "window", "convbasis"])
        argv = ["{model}", "--method", method, "--sweep", sweep, "--report", "--seq-len", "8",
                "--repeats", "1", *OUT]  # fmt: skip
    else:
        option = rng.choice(["--target", "--arch", "--tokenizer", "--method"])
        argv = ["{model}", "--method", "exact", option, value or "bogus", *OUT]
    return _case(f"{option} {value!r}", _with_model(), argv)


def odd_command(rng: random.Random) -> Case:
    argv = rng.choice(
        [
            ["inspect"],
            ["inspect", "{model}", "{model}"],
            ["report", "{model}"],
            ["report", "{model}", "{model}"],
            ["report", "{model}", "{dir}/other.onnx"],
            ["report", "{dir}/absent.onnx", "{model}"],
            ["frobnicate", "{model}"],
            [],
            ["--help"],
            ["--version"],
            ["{model}"],
            ["{model}", "--method"],
            ["{model}", "--method", "exact", "--method", "window"],
            ["{model}", "--method", "multipole", "--degree", "4"],
            ["{model}", "--method", "exact", "--sweep", "block=2"],
            ["{model}", "--method", "exact", "--inputs", "{dir}/in.npz", "--text", "{dir}/t"],
            ["{model}", "--method", "exact", "--target", "llvm", "--arch", "sm_90"],
            ["{model}", "--method", "exact", "--arch", "sm_90"],
        ]
    )

    def extra(box: Sandbox) -> None:
        (box.model_dir / "other.onnx").write_bytes(_model("legacy_gpt2_where"))

    outputs = ("{out}", "{dir}") if argv[:1] == ["report"] else ("{out}",)
    return _case(f"command {argv}", _with_model(extra), argv, outputs)


# ---- report inputs


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _huge_header_npz(name: str, shape: tuple[int, ...]) -> bytes:
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    member.write(b"\0" * 64)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}.npy", member.getvalue())
    return buffer.getvalue()


class Payload:
    """Creates `path` when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def odd_inputs(rng: random.Random) -> Case:
    kind = rng.choice(
        ["not-npz", "huge-header", "huge-header-other", "object-payload", "wrong-name",
         "wrong-dtype", "wrong-rank", "nan", "inf", "all-masked", "empty", "text-binary",
         "text-empty", "text-missing", "tokenizer-junk", "scalar"]
    )  # fmt: skip
    x = np.random.default_rng(0).standard_normal((2, 6, 32)).astype(np.float32)
    files: dict[str, bytes | str] = {"model.onnx": _model()}
    argv = ["{model}", "--method", "exact", "--report", "--repeats", "1", *OUT]
    if kind == "not-npz":
        files["in.npz"] = b"PK\x03\x04 not really"
    elif kind == "huge-header":
        files["in.npz"] = _huge_header_npz("x", (2**20, 2**20, 2**20))
    elif kind == "huge-header-other":
        files["in.npz"] = _huge_header_npz("x", (2, 2**33, 32))
    elif kind == "wrong-name":
        files["in.npz"] = _npz({"y": x})
    elif kind == "wrong-dtype":
        files["in.npz"] = _npz({"x": x.astype(np.float64)})
    elif kind == "wrong-rank":
        files["in.npz"] = _npz({"x": x[0]})
    elif kind == "nan":
        files["in.npz"] = _npz({"x": np.full_like(x, np.nan)})
    elif kind == "inf":
        files["in.npz"] = _npz({"x": np.where(x > 0, np.inf, x).astype(np.float32)})
    elif kind == "empty":
        files["in.npz"] = _npz({"x": x[:, :0]})
    elif kind == "scalar":
        files["in.npz"] = _npz({"x": np.float32(1.0)})
    if kind == "all-masked":
        files["model.onnx"] = _model("bert_padding_sub_mul")
        ids = np.zeros((2, 6), dtype=np.int64)
        files["in.npz"] = _npz({"input_ids": ids, "attention_mask": ids})
    if kind.startswith("text") or kind == "tokenizer-junk":
        files["t.txt"] = {"text-binary": os.urandom(4000), "text-empty": b""}.get(kind, b"hi")
        if kind == "text-missing":
            del files["t.txt"]
        files["tok.json"] = b"{not json"
        tokenizer = "{dir}/tok.json" if kind == "tokenizer-junk" else "bytes"
        argv += ["--text", "{dir}/t.txt", "--tokenizer", tokenizer, "--seq-len", "8"]
    elif kind != "object-payload":
        argv += ["--inputs", "{dir}/in.npz"]
    setup = write_files(files)
    if kind == "object-payload":

        def setup(box: Sandbox, files=files) -> None:  # the payload names this sandbox
            write_files(files)(box)
            arrays = {"x": np.array([Payload(str(box.marker))], dtype=object)}
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            (box.model_dir / "in.npz").write_bytes(buffer.getvalue())

        argv += ["--inputs", "{dir}/in.npz"]
    return _case(f"report inputs {kind}", setup, argv)


# ---- interruptions


def interrupted(rng: random.Random) -> Case:
    number = rng.choice([signal.SIGINT, signal.SIGTERM])
    delay = rng.choice([0.01, 0.1, 0.3, 0.6, 1.0, 1.5, 2.5])
    method = rng.choice(METHODS)
    argv = ["{model}", "--method", *method, *OUT]
    if rng.random() < 0.4:
        argv += ["--report", "--seq-len", "8", "--repeats", "1"]
    name = rng.choice(["gqa_expand", "chain3", "gpt2_sdpa_dynamo18", "rotary_qknorm"])
    label = f"{signal.Signals(number).name} after {delay} s"
    return _case(label, _with_model(name=name), argv, sig=(number, delay))


SCENARIOS = (
    (odd_model_path, 3),
    (odd_output, 4),
    (odd_option, 5),
    (odd_command, 2),
    (odd_inputs, 3),
    (interrupted, 3),
)


def make(rng: random.Random) -> Case:
    return pick(SCENARIOS, rng)
