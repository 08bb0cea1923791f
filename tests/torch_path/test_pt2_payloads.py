"""A .pt2 never runs what it carries: every place torch.export.load would run a payload from
(a pickle, Python source in the program's JSON, a module to import, a native library) is
refused with one line naming the entry, and the payload, which creates a folder when it
runs, never does. The control shows that torch's own loader does run it."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest
import torch

from attnrewrite.cli import main
from tests.fuzz import pt2_payloads as payloads
from tests.torch_path.models import HandAttention


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    """A causal attention layer exported with a dynamic length (so it has shape symbols)."""
    torch.manual_seed(0)
    model = HandAttention(dim=8, heads=2, mask="tril").eval()
    seq = torch.export.Dim("seq", min=2, max=15)
    exported = torch.export.export(model, (torch.randn(2, 9, 8),), dynamic_shapes=({1: seq},))
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    torch.export.save(exported, str(path))
    return path.read_bytes()


def _archive(program: bytes, edit, folder: Path) -> tuple[Path, Path]:
    marker = folder / "payload-ran"
    prefix, entries = payloads.read_archive(program)
    edit(entries, str(marker), random.Random(0))
    path = folder / "evil.pt2"
    path.write_bytes(payloads.write_archive(prefix, entries))
    return path, marker


REFUSED = {
    payloads.sample_inputs: "refusing data/sample_inputs/model.pt: it does not load with",
    payloads.pickled_weight: "is stored as a pickle",
    payloads.legacy_weights: "refusing data/weights/model.pt: a legacy pickled file",
    payloads.legacy_constants: "refusing data/constants/model.pt: a legacy pickled file",
    payloads.opaque_constant: "refusing data/constants/opaque_obj_0",
    payloads.custom_constant: "refusing data/constants/custom_obj_0",
    payloads.shape_expression: "expr_str \"__import__('os')",
    payloads.guard: "refusing the program's guards_code",
    payloads.operator_target: "refusing the program's target",
    payloads.attribute_name: "refusing the program's parameter_name",
    payloads.pytree_import: "a pytree context that imports a module",
    payloads.compiled_library: "a compiled library (native code)",
}


@pytest.mark.parametrize("edit", list(REFUSED), ids=lambda e: e.__name__)
@pytest.mark.parametrize("command", ["rewrite", "inspect"])
def test_a_payload_is_refused_by_name_and_never_runs(program, tmp_path, capsys, edit, command):
    path, marker = _archive(program, edit, tmp_path)
    argv = ["inspect", str(path)] if command == "inspect" else [str(path), "--method", "exact"]
    assert main([*argv, "-o", str(tmp_path / "out")] if command == "rewrite" else argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and REFUSED[edit] in err, err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_the_old_archive_format_is_refused(program, tmp_path, capsys) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "old.pt2"
    path.write_bytes(payloads.old_format(str(marker), program))
    assert main(["inspect", str(path)]) == 2
    assert "is not a readable ExportedProgram" in capsys.readouterr().err
    assert not marker.exists()


def test_control_torch_export_load_runs_the_payload(program, tmp_path) -> None:
    path, marker = _archive(program, payloads.pickled_weight, tmp_path)
    with contextlib.suppress(Exception):  # the payload runs before torch notices anything
        torch.export.load(str(path))
    assert marker.exists()


def test_the_untouched_archive_still_loads(program, tmp_path, capsys) -> None:
    path, _ = _archive(program, payloads.untouched, tmp_path)
    assert main([str(path), "--method", "exact", "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.pt2").exists()
