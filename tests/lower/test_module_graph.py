"""The modules of attnrewrite/lower/ import each other as a DAG, at the top of the module.

Read from the source with ast (no TVM needed): each module's top-level imports of other lower
modules must form no cycle, and an import of a lower module inside a function is allowed only
where it keeps TVM's compiler out of an import that must not need it (``LAZY``).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

LOWER = Path(__file__).resolve().parents[2] / "attnrewrite" / "lower"
PACKAGE = "attnrewrite.lower"

# (importer, imported): lower modules imported inside a function, each because the imported
# module imports TVM's compiler at its top (checked below) and the importer must not.
LAZY = {
    # loading an artifact (relax_import.load) needs only TVM's runtime (TVM_USE_RUNTIME_LIB=1)
    ("relax_import", "convert"),
    ("relax_import", "fast_math"),
    ("relax_import", "schedules"),
    # `attnrewrite tune --help` (tune, which imports runner) answers without TVM
    ("runner", "schedules"),
    ("tune", "schedules"),
}

# imported without TVM: the artifact loader and the tune command (see LAZY)
TVM_FREE = ("__init__", "relax_import", "tune", "tune_model")


def _sources() -> dict[str, str]:
    return {path.stem: path.read_text() for path in LOWER.glob("*.py")}


def _imported(node: ast.stmt, modules: set[str]) -> set[str]:
    """The lower modules an import statement imports (a name imported from the package that
    is not a module, such as ``build``, comes from ``__init__``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return {n.removeprefix(f"{PACKAGE}.").split(".")[0] for n in names if n.startswith(PACKAGE)}
    if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
        return set()
    if node.module == PACKAGE:
        return {a.name if a.name in modules else "__init__" for a in node.names}
    if node.module.startswith(f"{PACKAGE}."):
        return {node.module.removeprefix(f"{PACKAGE}.").split(".")[0]}
    return set()


def _imports_tvm(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "tvm" or a.name.startswith("tvm.") for a in node.names)
    return isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tvm"


def _graphs(sources: dict[str, str]) -> tuple[dict[str, set[str]], set[tuple[str, str]], set[str]]:
    """(top-level imports per module, function-level (importer, imported) pairs, the modules
    that import tvm at the top)."""
    trees = {name: ast.parse(text, name) for name, text in sources.items()}
    names = set(trees)
    top: dict[str, set[str]] = {}
    lazy: set[tuple[str, str]] = set()
    tvm_at_top: set[str] = set()
    for name, tree in trees.items():
        top[name] = set().union(*(_imported(n, names) for n in tree.body)) - {name}
        if any(_imports_tvm(n) for n in tree.body):
            tvm_at_top.add(name)
        inner = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
        for node in (n for n in inner if n not in tree.body):
            lazy |= {(name, imported) for imported in _imported(node, names) - {name}}
    return top, lazy, tvm_at_top


def _cycle(top: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(top).prepare()
    except graphlib.CycleError as err:
        return list(err.args[1])
    return None


def _reached(top: dict[str, set[str]], module: str) -> set[str]:
    reached, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in reached:
            reached.add(current)
            todo.extend(top[current])
    return reached


def test_top_level_imports_form_a_dag() -> None:
    top, _, _ = _graphs(_sources())
    assert {"relax_import", "fft", "scan", "kernel", "errors"} <= set(top)
    cycle = _cycle(top)
    assert cycle is None, f"import cycle among attnrewrite/lower modules: {' -> '.join(cycle)}"


def test_function_level_imports_are_only_the_listed_tvm_avoidance_ones() -> None:
    _, lazy, tvm_at_top = _graphs(_sources())
    assert lazy - LAZY == set(), "import these at the top of the module, or list them in LAZY"
    assert LAZY - lazy == set(), "LAZY lists imports that are no longer there"
    assert {imported for _, imported in LAZY} <= tvm_at_top, "a LAZY import must avoid TVM"


@pytest.mark.parametrize("module", TVM_FREE)
def test_loader_and_tune_command_import_no_tvm_at_the_top(module: str) -> None:
    top, _, tvm_at_top = _graphs(_sources())
    through = _reached(top, module) & tvm_at_top
    assert through == set(), f"{module} imports TVM at import time through {sorted(through)}"


def test_the_old_layout_fails_the_checks() -> None:
    """Before issue 18: graph imported LowerError from relax_import, which imported graph
    inside ``prepare`` to dodge the cycle; hoisting that import closes the cycle."""
    prepare = "def prepare(model):\n    from attnrewrite.lower.graph import unroll_loops\n"
    graph = "from attnrewrite.lower.relax_import import LowerError\n"
    old = {"relax_import": prepare, "graph": graph}
    _, lazy, _ = _graphs(old)
    assert lazy - LAZY == {("relax_import", "graph")}
    hoisted = {**old, "relax_import": "from attnrewrite.lower.graph import unroll_loops\n"}
    assert set(_cycle(_graphs(hoisted)[0]) or []) == {"graph", "relax_import"}
