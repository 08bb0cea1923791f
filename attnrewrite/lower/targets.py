"""Targets and their tuning records.

A target is named by ``target_name``: its kind, then the CPU (``mcpu``) or GPU arch, then the
core count for CPUs, e.g. ``llvm-znver3-2c`` or ``cuda-sm_90``. Tuning records for it live in
``attnrewrite/targets/<name>/``: ``target.json`` (the target dict) and meta_schedule's
``database_workload.json`` / ``database_tuning_record.json``. Builds for a target whose folder
exists apply those records automatically (``database_for``). ``ATTNREWRITE_TARGETS`` points at
another records root (a list separated by ``os.pathsep``, searched before the shipped one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).resolve().parent.parent / "targets"


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. ``znver3``, ``skylake-avx512``)."""
    import tvm

    get = tvm.get_global_func("target.llvm_get_system_cpu", allow_missing=True)
    return str(get()) if get is not None else "generic"


def make_target(spec: str | dict[str, Any] | Any = "llvm", num_cores: int | None = None):
    """A ``tvm.target.Target`` from a kind string, a dict, or a Target.

    ``"llvm"`` becomes the host CPU (its mcpu and core count, which meta_schedule requires);
    ``"cuda"`` / ``"cuda:sm_90"`` / ``"sm_80"`` a CUDA target for that arch (default sm_80).
    """
    from tvm.target import Target

    if isinstance(spec, Target):
        return spec
    if isinstance(spec, str):
        kind, _, arch = spec.partition(":")
        if kind.startswith("sm_"):
            kind, arch = "cuda", kind
        if kind == "llvm":
            cores = num_cores or len(os.sched_getaffinity(0))
            return Target({"kind": "llvm", "mcpu": arch or host_cpu(), "num-cores": cores})
        if kind == "cuda":
            return Target({"kind": "cuda", "arch": arch or "sm_80"})
        return Target(spec)
    return Target(dict(spec))


def target_name(target) -> str:
    """The records folder name of a target: kind, cpu or arch, core count."""
    target = make_target(target)
    kind = str(target.kind.name)
    attrs = target.attrs
    parts = [kind]
    if kind == "llvm":
        parts.append(str(attrs["mcpu"]) if "mcpu" in attrs else "generic")
        if "num-cores" in attrs:
            parts.append(f"{int(attrs['num-cores'])}c")
    elif "arch" in attrs:
        parts.append(str(attrs["arch"]))
    return "-".join(parts)


def roots() -> list[Path]:
    extra = os.environ.get("ATTNREWRITE_TARGETS", "")
    return [Path(p) for p in extra.split(os.pathsep) if p] + [SHIPPED]


def records_dir(target, root: Path | None = None) -> Path:
    """Where records for ``target`` are written (``root`` default: the shipped folder)."""
    return (root or SHIPPED) / target_name(target)


def find_records(target) -> Path | None:
    """The first records folder for ``target`` that holds a database, or None."""
    name = target_name(target)
    for root in roots():
        folder = root / name
        if (folder / "database_tuning_record.json").is_file():
            return folder
    return None


def database_for(target):
    """The meta_schedule JSONDatabase recorded for ``target``, or None when there is none."""
    folder = find_records(target)
    if folder is None:
        return None
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(work_dir=str(folder), module_equality="structural")


def write_target_json(target, folder: Path) -> None:
    target = make_target(target)
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": target_name(target), "target": json.loads(str(target))}
    (folder / "target.json").write_text(json.dumps(spec, indent=2) + "\n")
