"""Every size a user controls is bounded: option ranges, method parameters, and inputs sized
from a model's shapes or an .npz header are refused, naming the size, before allocation."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from attnrewrite.cli import main
from attnrewrite.errors import AttnRewriteError
from attnrewrite.inputs import generate_inputs
from tests.corpus.handbuilt import all_cases

CASES = {case.name: case for case in all_cases()}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(CASES["gqa_expand"].model, str(path))
    return path


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--repeats", str(10**9), "--repeats: must be between 1 and 1000"),
        ("--batch", "0", "--batch: must be between 1 and 1024"),
        ("--seq-len", str(2**40), "--seq-len: must be between 1 and 65536"),
        ("--verify-seq-len", "100000", "--verify-seq-len: must be between 1 and 4096"),
    ],
)
def test_option_ranges(model, tmp_path, capsys, option, value, expected) -> None:
    argv = [str(model), "--method", "exact", "--report", option, value, "-o", str(tmp_path / "o")]
    assert main(argv) == 2
    assert expected in _error(capsys)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (["multipole", "--block", str(2**80)], "multipole block must be at most 1024"),
        (["window", "--width", "1025"], "window width must be at most 1024"),
        (["polysketch", "--sketch-size", "65"], "polysketch sketch_size must be at most 64"),
        (["multipole", "--levels", "21"], "multipole levels must be at most 20"),
        (["convbasis", "--k", str(10**12)], "convbasis bases must be at most 1024"),
    ],
)
def test_method_parameters_have_upper_bounds(model, tmp_path, capsys, method, expected) -> None:
    assert main([str(model), "--method", *method, "-o", str(tmp_path / "o")]) == 2
    assert expected in _error(capsys)


def test_a_huge_model_dimension_is_refused_at_load(tmp_path, capsys) -> None:
    proto = onnx.ModelProto()
    proto.CopyFrom(CASES["gqa_expand"].model)
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2**40
    path = tmp_path / "huge.onnx"
    onnx.save(proto, str(path))
    assert main([str(path), "--method", "exact", "-o", str(tmp_path / "o")]) == 2
    err = _error(capsys)
    assert f"{path}: value x of shape [2, 1099511627776, 32] would take 256.0 TiB" in err
    assert "more than the memory budget" in err
    assert not (tmp_path / "o").exists()


def test_generated_inputs_are_sized_before_allocation() -> None:
    proto = onnx.ModelProto()
    proto.CopyFrom(CASES["gqa_expand"].model)
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "S"  # sized by --seq-len
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 2**30
    with pytest.raises(AttnRewriteError, match=r"the generated inputs \(x \[2, 65536, 1073741824"):
        generate_inputs(ir.from_proto(proto), seq_len=65536)


def test_an_initializer_holding_less_than_its_shape_is_refused(tmp_path, capsys) -> None:
    """Shape inference would allocate what the dims declare (2**40 values): refused first."""
    proto = onnx.ModelProto()
    proto.CopyFrom(CASES["gqa_expand"].model)
    weight = proto.graph.initializer[0]
    weight.ClearField("dims")
    weight.dims.append(2**40)
    path = tmp_path / "odd.onnx"
    onnx.save(proto, str(path))
    assert main([str(path), "--method", "exact", "-o", str(tmp_path / "o")]) == 2
    expected = f"{path}: tensor {weight.name} declares shape [1099511627776] but holds"
    assert expected in _error(capsys)


def _npz_member(name: str, header: dict, payload: bytes = b"") -> bytes:
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    member.write(payload)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(f"{name}.npy", member.getvalue())
    return archive.getvalue()


def test_an_npz_header_is_sized_before_its_array_is_read(model, tmp_path, capsys) -> None:
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**20, 2**20, 2**20)}
    (tmp_path / "in.npz").write_bytes(_npz_member("x", header, b"\0" * 64))
    argv = [str(model), "--method", "exact", "--report", "--inputs", str(tmp_path / "in.npz")]
    assert main([*argv, "-o", str(tmp_path / "o")]) == 2
    assert f"the arrays in {tmp_path / 'in.npz'} would take 4096.0 PiB" in _error(capsys)


class Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_an_npz_of_python_objects_is_refused_unread(model, tmp_path, capsys) -> None:
    marker = tmp_path / "payload-ran"
    np.savez(tmp_path / "in.npz", x=np.array([Payload(str(marker))], dtype=object))
    argv = [str(model), "--method", "exact", "--report", "--inputs", str(tmp_path / "in.npz")]
    assert main([*argv, "-o", str(tmp_path / "o")]) == 2
    assert "x.npy holds Python objects, which would need pickle" in _error(capsys)
    assert not marker.exists()


def test_a_model_file_above_two_gib_is_refused_unread(tmp_path, capsys) -> None:
    path = tmp_path / "sparse.onnx"
    with path.open("wb") as handle:
        handle.truncate(3 << 30)  # sparse: takes no disk space
    assert main([str(path), "--method", "exact", "-o", str(tmp_path / "o")]) == 2
    assert "is 3.0 GiB: an ONNX protobuf is at most 2 GiB" in _error(capsys)
