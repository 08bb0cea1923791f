"""Open a saved ExportedProgram (.pt2) without running anything the archive holds.

torch.export.load trusts its file: it unpickles sample inputs (falling back from
weights_only=True to the full unpickler), weights and constants marked as pickled, legacy
weight and constant files and opaque objects; sympy evaluates the program's shape
expressions as Python; ExportedProgram.module() execs its guards and writes parameter names
into generated source; operator targets resolve to any attribute under `torch`; a pytree
context imports the module it names; AOTInductor entries are native libraries. Each of these
runs code from the archive.

So the archive is checked first, with torch's own reader, and refused with one line naming
the entry:
- entries that need pickle or native code: legacy weight/constant files, payloads marked
  use_pickle, custom and opaque objects, compiled libraries, the pre-2.8 format;
- sample inputs that do not load with weights_only=True (then torch never falls back);
- strings the deserializer evaluates that are not plain data: a shape expression may only
  be sympy arithmetic on symbols and small integers, a guard may only compare input sizes,
  a target must name an operator of aten, prims or the higher-order ops (not one that reads
  or writes files), a name must be a dotted identifier, a pytree context may not import.
Then torch loads the program while an audit hook refuses every global the standard
unpickler would resolve, and the loaded graphs' targets are checked again as objects.
"""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import re
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.export.pt2_archive import constants as layout
from torch.export.pt2_archive._package import PT2ArchiveReader, load_pt2

from attnrewrite.budget import check_bytes
from attnrewrite.errors import AttnRewriteError

NATIVE_DIRS = (layout.AOTINDUCTOR_DIR, layout.EXECUTORCH_DIR, layout.MTIA_DIR)
NAME_KEYS = frozenset(
    {
        "name",
        "as_name",
        "parameter_name",
        "buffer_name",
        "tensor_constant_name",
        "custom_obj_name",
        "user_input_name",
        "fqn",
        "class_fqn",
    }
)
NAME = re.compile(r"[\w.]*")  # dotted identifiers (FX writes them into Python source)
SYMBOL = re.compile(r"[a-z]+\d+")  # s0, u3, zuf1: the names torch gives shape symbols
TARGET = re.compile(r"torch\.ops\.(aten|prims|higher_order)\.[A-Za-z_]\w*(\.[A-Za-z_]\w*)?")
OP_NAMESPACES = frozenset({"aten", "prims", "higher_order"})
FILE_OPS = frozenset({"from_file", "save"})  # aten ops that read or write a path
OPERATORS = frozenset(
    {
        "getitem",
        "add",
        "sub",
        "mul",
        "floordiv",
        "truediv",
        "mod",
        "pow",
        "neg",
        "pos",
        "abs",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and_",
        "or_",
        "xor",
        "not_",
        "invert",
        "lshift",
        "rshift",
    }
)
EXPRESSION_FUNCTIONS = frozenset(
    {
        "Symbol",
        "Integer",
        "Rational",
        "Float",
        "Add",
        "Mul",
        "Pow",
        "Max",
        "Min",
        "Mod",
        "Abs",
        "floor",
        "ceiling",
        "sqrt",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "StrictLessThan",
        "StrictGreaterThan",
        "LessThan",
        "GreaterThan",
        "Equality",
        "Unequality",
        "And",
        "Or",
        "Not",
        "Piecewise",
        "ExprCondPair",
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "FloatPow",
        "FloatTrueDiv",
        "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
    }
)
EXPRESSION_NAMES = frozenset({"true", "false", "oo", "zoo", "nan", "True", "False"})
GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
MAX_EXPRESSION = 2000  # characters
MAX_INTEGER = 1 << 64
MAX_EXPONENT = 64
PURE_NODES = (
    ast.Expression, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
    ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE,
)  # fmt: skip


def load_program(path: Path) -> torch.export.ExportedProgram:
    """The program in a .pt2 file, refusing every archive that would run code to load."""
    check_archive(path)
    with _pickle_forbidden():
        contents = load_pt2(str(path))
    program = contents.exported_programs.get("model")
    if program is None:
        raise AttnRewriteError(f"{path} holds no program named 'model'")
    check_graph(program, path)
    return program


def check_archive(path: Path) -> None:
    """Every entry torch.export.load would read, checked as described in the module doc."""
    _check_sizes(path)
    reader = PT2ArchiveReader(str(path))
    names = set(reader.get_file_names())
    version = layout.ARCHIVE_VERSION_PATH
    if version not in names or reader.read_string(version) != layout.ARCHIVE_VERSION_VALUE:
        raise AttnRewriteError(f"{path} is not a torch.export archive of this torch version")
    for name in sorted(names):
        if name.startswith(NATIVE_DIRS):
            raise AttnRewriteError(f"{path}: refusing {name}, a compiled library (native code)")
    prefix, suffix = layout.MODELS_FILENAME_FORMAT.split("{}")
    models = [n[len(prefix) : -len(suffix)] for n in names if n.startswith(layout.MODELS_DIR)]
    for model in models:
        _check_payloads(path, reader, names, model)
        _check_sample_inputs(path, reader, model)
        program = json.loads(reader.read_string(layout.MODELS_FILENAME_FORMAT.format(model)))
        _check_program(path, program)


def _check_sizes(path: Path) -> None:
    """Entries are read whole into memory: their unpacked sizes must fit the budget."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as err:
        raise AttnRewriteError(f"{path} is not a readable ExportedProgram ({err})") from None
    check_bytes(f"the entries of {path}", unpacked)


def _refuse(path: Path, entry: str, why: str) -> AttnRewriteError:
    return AttnRewriteError(f"{path}: refusing {entry}: {why}; only archives that load without "
                            "pickle are read")  # fmt: skip


def _check_payloads(path: Path, reader: PT2ArchiveReader, names: set[str], model: str) -> None:
    """Weights and constants must be raw tensor bytes, never pickles or objects."""
    for folder in (layout.WEIGHTS_DIR, layout.CONSTANTS_DIR):
        legacy = f"{folder}{model}.pt"
        if legacy in names:
            raise _refuse(path, legacy, "a legacy pickled file")
    for config_name, folder in (
        (layout.WEIGHTS_CONFIG_FILENAME_FORMAT.format(model), layout.WEIGHTS_DIR),
        (layout.CONSTANTS_CONFIG_FILENAME_FORMAT.format(model), layout.CONSTANTS_DIR),
    ):
        if config_name not in names:
            continue
        config = json.loads(reader.read_string(config_name)).get("config", {})
        for fqn, meta in config.items():
            entry = f"{folder}{meta.get('path_name')}"
            if meta.get("use_pickle"):
                raise _refuse(path, entry, f"'{fqn}' is stored as a pickle")
            if folder == layout.CONSTANTS_DIR and not str(meta.get("path_name")).startswith(
                layout.TENSOR_CONSTANT_FILENAME_PREFIX
            ):
                raise _refuse(path, entry, f"'{fqn}' is a Python or script object")


def _check_sample_inputs(path: Path, reader: PT2ArchiveReader, model: str) -> None:
    """torch tries weights_only=True first; inputs that need more are refused here."""
    entry = layout.SAMPLE_INPUTS_FILENAME_FORMAT.format(model)
    data = reader.read_bytes(entry)
    if not data:
        return
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # the safe unpickler's refusal, whatever its type
        raise _refuse(path, entry, "it does not load with weights_only=True") from None


def _check_program(path: Path, program: object) -> None:
    """The strings of the program's JSON that torch evaluates, resolves or writes as code."""
    for key, value in _strings(program):
        if key == "expr_str":
            problem = _expression_problem(value)
        elif key == "guards_code":
            problem = _guard_problem(value)
        elif key in ("target", "as_operator"):
            problem = None if _target_allowed(value) else "not an aten, prims or HOP operator"
        elif key in NAME_KEYS:
            problem = None if NAME.fullmatch(value) else "not a dotted identifier"
        elif key in ("in_spec", "out_spec"):
            problem = _treespec_problem(value)
        else:
            continue
        if problem:
            raise AttnRewriteError(
                f"{path}: refusing the program's {key} {value[:80]!r}: {problem}"
            )


def _strings(value: object, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, string) for every string in a JSON value, lists taking their key."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, item in value.items():
            yield from _strings(item, k)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)


def _target_allowed(target: str) -> bool:
    if TARGET.fullmatch(target) and "__" not in target:
        return target.split(".")[3] not in FILE_OPS
    module, _, name = target.partition(".")
    if module == "_operator":
        return name in OPERATORS
    if module == "math":
        return callable(getattr(math, name, None)) and not name.startswith("_")
    return module == "torch" and re.fullmatch(r"sym_[a-z_]+", name) is not None


def _plain_problem(text: str, rule: Callable[[ast.AST], str | None]) -> str | None:
    """`text` parsed as one expression of arithmetic, comparisons and accepted constants, every
    other node passing `rule` (which names what is wrong, or returns None)."""
    if len(text) > MAX_EXPRESSION:
        return f"longer than {MAX_EXPRESSION} characters"
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "not an expression"
    for node in ast.walk(tree):
        if isinstance(node, PURE_NODES):
            continue
        problem = _constant_problem(node.value) if isinstance(node, ast.Constant) else rule(node)
        if problem:
            return problem
    return None


def _expression_problem(text: str) -> str | None:
    """A sympy expression as torch writes it: Mul(Integer(2), Symbol('s0', positive=True))."""
    return _plain_problem(text, _sympy_node_problem)


def _sympy_node_problem(node: ast.AST) -> str | None:
    if isinstance(node, ast.keyword):
        ok = node.arg and node.arg.isidentifier() and not node.arg.startswith("_")
        return None if ok else "an odd keyword"
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id in EXPRESSION_FUNCTIONS):
            return "calls something other than sympy arithmetic"
        return None if node.func.id != "Pow" or _small_power(node) else "a power too large"
    if isinstance(node, ast.Name):
        known = node.id in EXPRESSION_FUNCTIONS | EXPRESSION_NAMES or SYMBOL.fullmatch(node.id)
        return None if known else f"names {node.id!r}"
    return f"holds a {type(node).__name__}"


def _small_power(node: ast.Call) -> bool:
    """Pow(base, Integer(k)) with |k| <= 64 and no power inside the base: sympy evaluates
    numeric powers eagerly, and 9**9**9 never finishes."""
    if len(node.args) != 2:
        return False
    base, exponent = node.args
    if any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Pow" for n in ast.walk(base)):
        return False
    values = [n.value for n in ast.walk(exponent) if isinstance(n, ast.Constant)]
    return all(isinstance(v, int) and abs(v) <= MAX_EXPONENT for v in values)


def _constant_problem(value: object) -> str | None:
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return None
    if isinstance(value, int):
        return None if abs(value) < MAX_INTEGER else "an integer too large"
    if isinstance(value, str):
        return None if SYMBOL.fullmatch(value) or value.isidentifier() else "an odd string"
    return f"a constant of type {type(value).__name__}"


def _guard_problem(text: str) -> str | None:
    """A guard compares input sizes: L['x'].size()[1] <= 15, Max(...), math.floor(...)."""
    return _plain_problem(text, _guard_node_problem)


def _guard_node_problem(node: ast.AST) -> str | None:
    if isinstance(node, ast.Subscript | ast.Slice):
        return None
    if isinstance(node, ast.Call):
        func = node.func
        method = isinstance(func, ast.Attribute) and func.attr in GUARD_METHODS
        named = isinstance(func, ast.Name) and func.id in EXPRESSION_FUNCTIONS
        in_math = isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "math"
        ok = (method or named or in_math) and not node.keywords
        return None if ok else "calls something other than a size"
    if isinstance(node, ast.Attribute):
        return None if not node.attr.startswith("_") else f"reads attribute {node.attr!r}"
    if isinstance(node, ast.Name):
        return None if node.id in {"L", "math"} | EXPRESSION_FUNCTIONS else f"names {node.id!r}"
    return f"holds a {type(node).__name__}"


def _treespec_problem(text: str) -> str | None:
    """Pytree contexts are JSON; a defaultdict's names a module to import, an enum's too."""
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError):
        return "not JSON"
    for _, value in _strings(spec):
        try:
            context = json.loads(value)
        except (ValueError, RecursionError):
            continue
        if _mentions(context, ("default_factory_module", "__enum__")):
            return "a pytree context that imports a module"
    return None


def _mentions(value: object, keys: tuple[str, ...]) -> bool:
    if isinstance(value, dict):
        return any(k in value for k in keys) or any(_mentions(v, keys) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, keys) for v in value)
    return False


def check_graph(program: torch.export.ExportedProgram, path: Path) -> None:
    """The loaded graphs call operators only (the JSON check, again on the objects)."""
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if isinstance(graph, torch.fx.Graph) else ():
            if node.op == "call_function" and not _callable_allowed(node.target):
                raise AttnRewriteError(f"{path}: refusing node {node.name}: calls {node.target}")


def _callable_allowed(target: object) -> bool:
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        namespace, _, name = target._schema.name.partition("::")
        return namespace in OP_NAMESPACES and name not in FILE_OPS
    if isinstance(target, torch._ops.HigherOrderOperator):
        return True
    if getattr(target, "__module__", None) == "_operator":
        return getattr(operator, target.__name__, None) is target and target.__name__ in OPERATORS
    if getattr(target, "__module__", None) == "math":
        return True
    return (
        getattr(target, "__name__", "").startswith("sym_")
        and getattr(torch, target.__name__, None) is target
    )


@contextmanager
def _pickle_forbidden() -> Iterator[None]:
    """While torch loads the archive, resolving any global in the standard unpickler (the
    only way a pickle reaches code) raises. torch's weights_only unpickler is not affected.
    Audit hooks cannot be removed, so the hook checks a flag this context sets."""
    _install_hook()
    _FORBIDDEN.append(True)
    try:
        yield
    finally:
        _FORBIDDEN.pop()


_FORBIDDEN: list[bool] = []
_HOOKED: list[bool] = []


def _install_hook() -> None:
    if _HOOKED:
        return

    def hook(event: str, args: tuple) -> None:
        if _FORBIDDEN and event == "pickle.find_class":
            raise AttnRewriteError(f"the archive needs pickle to load ({args[0]}.{args[1]})")

    sys.addaudithook(hook)
    _HOOKED.append(True)
