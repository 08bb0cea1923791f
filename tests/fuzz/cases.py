"""A fuzz case, the commands cases run, and the seeded case list over every family.

A case is a setup (files written into a fresh sandbox) and a command line whose {model},
{dir}, {out}, ... placeholders name the sandbox's paths. Cases are generated in the parent
from `random.Random(f"{seed}:{family}:{index}")`, so a case list is the same on every run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz.sandbox import Sandbox


@dataclass(frozen=True)
class Case:
    family: str
    label: str
    setup: Callable[[Sandbox], None]
    argv: tuple[str, ...]
    outputs: tuple[str, ...] = ("{out}",)  # where a successful run may write
    signal: tuple[int, float] | None = None  # (signal number, seconds after the start)


def write_files(files: dict[str, bytes | str]) -> Callable[[Sandbox], None]:
    """A setup writing `files` into the model's folder; a str value is a symlink target
    (with the sandbox's placeholders filled in)."""

    def setup(box: Sandbox) -> None:
        for name, content in files.items():
            path = box.model_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.symlink_to(box.fill(content))
            else:
                path.write_bytes(content)

    return setup


# small parameters, so every method runs in well under a second on the seed models
METHODS = (
    ("exact",),
    ("multipole", "--block", "2"),
    ("multipole",),
    ("window", "--width", "2", "--sinks", "1"),
    ("polysketch", "--degree", "2", "--sketch-size", "4", "--block", "4"),
    ("convbasis", "--k", "2"),
)
OUT = ("-o", "{out}")


def command(rng: random.Random, model: str = "{model}") -> tuple[str, ...]:
    """A command a user would run on a model: mostly rewrites, some inspections, reports
    and per-head plans."""
    roll = rng.random()
    if roll < 0.30:
        return (model, "--method", "exact", *OUT)
    if roll < 0.42:
        return ("inspect", model, *rng.choice([(), ("--json",)]))
    if roll < 0.67:
        return (model, "--method", *rng.choice(METHODS), *OUT)
    if roll < 0.77:
        return (model, "--method", "exact", "--no-verify", *OUT)
    if roll < 0.85:
        length = str(rng.choice([1, 2, 3, 5, 17, 33]))
        return (model, "--method", "exact", "--verify-seq-len", length, *OUT)
    if roll < 0.92:
        method = rng.choice(METHODS[:4])
        report = ("--report", "--seq-len", "8", "--repeats", "1")
        return (model, "--method", *method, *report, *OUT)
    if roll < 0.96:
        plan = ("--max-error", "0.5", "--seq-len", "8", "--batch", "2")
        return (model, "--method", "auto", *plan, *OUT)
    return (model, "--method", "exact")  # the default output folder, ./MODEL-exact


Family = Callable[[random.Random], Case]


def pick(scenarios: tuple[tuple[Family, int], ...], rng: random.Random) -> Case:
    """A case of one of the (scenario, weight) pairs, chosen by weight."""
    makers, weights = zip(*scenarios, strict=True)
    return rng.choices(makers, weights)[0](rng)


def families() -> dict[str, tuple[Family, int]]:
    """family -> (case maker, weight in a case list)."""
    from tests.fuzz import bytes_damage, hostile, protobuf_damage, pt2_payloads, unusual

    return {
        "bytes": (bytes_damage.make, 20),
        "protobuf": (protobuf_damage.make, 34),
        "hostile": (hostile.make, 22),
        "unusual": (unusual.make, 14),
        "pt2": (pt2_payloads.make, 10),
    }


def case_list(count: int, seed: int = 0, only: str | None = None) -> list[Case]:
    """`count` cases, interleaved over the families by weight (or of one family)."""
    table = families()
    names = [only] if only else list(table)
    total = sum(table[n][1] for n in names)
    cases = []
    for name in names:
        make, weight = table[name]
        share = max(1, round(count * weight / total))
        cases += [
            (index / share, make(random.Random(f"{seed}:{name}:{index}"))) for index in range(share)
        ]
    return [case for _, case in sorted(cases, key=lambda c: c[0])]


def here() -> Path:
    return Path(__file__).parent
