"""A rewritten ONNX model -> Relax -> a compiled artifact folder, and back.

TVM's ONNX frontend cannot take our ``attnrewrite`` nodes (a custom domain), and it trips on
dynamic shape arithmetic (``Shape -> Slice/ConstantOfShape/Expand`` chains). ``prepare``
therefore (1) inlines the model-local functions (every method's body is standard ops),
(2) fixes every symbolic input dim to a value (``dims``), and (3) constant-folds the graph with
onnxruntime's basic level, which turns the shape arithmetic into constants and leaves only ONNX
domain ops; then (4) unrolls Loops, whose trip counts are now constants (conv-basis sums its
bases with one), and drops zero-extent Concat operands (multipole without a far field), see
``attnrewrite.lower.graph``. ``to_relax`` imports the result with
``relax.frontend.onnx.from_onnx`` plus our converters for the ops TVM lacks (``DFT`` becomes
the TIR four-step FFT of ``attnrewrite.lower.dft``; ``attnrewrite.lower.convert``), and one
artifact is built per set of input shapes.

The artifact folder holds ``model.so`` (``export_library``: code and weights) and
``lower.json`` (inputs in call order with shapes and dtypes, outputs, target, versions).
Loading needs only the TVM runtime::

    import json, numpy as np, tvm, tvm.runtime.vm
    lib = tvm.runtime.load_module("art/model.so")
    vm = tvm.runtime.vm.VirtualMachine(lib, tvm.cpu())
    meta = json.load(open("art/lower.json"))
    args = [tvm.runtime.tensor(inputs[i["name"]]) for i in meta["inputs"]]
    out = vm["main"](*args)   # a Tensor, or an array of them for several outputs

or ``attnrewrite.lower.load("art").run({"input_ids": ..., ...})``. With TVM's runtime library
only (``TVM_USE_RUNTIME_LIB=1``, no ``libtvm_compiler.so``) the same lines work: a CPU
artifact was loaded and run that way here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnx_ir as ir

from attnrewrite.lower import cumsum
from attnrewrite.lower.errors import LowerError
from attnrewrite.lower.graph import DropEmptyOperands, UnrollLoops
from attnrewrite.lower.targets import database_for, make_target, target_name

LIBRARY = "model.so"
META = "lower.json"


def _fix_dims(model: onnx.ModelProto, dims: Mapping[str, int]) -> dict[str, list[int]]:
    init = {i.name for i in model.graph.initializer}
    shapes: dict[str, list[int]] = {}
    missing: list[str] = []
    for value in model.graph.input:
        if value.name in init:
            continue
        shape = []
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                shape.append(dim.dim_value)
                continue
            key = dim.dim_param if dim.HasField("dim_param") else f"{value.name}[{axis}]"
            if key not in dims:
                missing.append(key)
                shape.append(-1)
                continue
            dim.Clear()
            dim.dim_value = int(dims[key])
            shape.append(int(dims[key]))
        shapes[value.name] = shape
    if missing:
        raise LowerError(
            "TVM builds need static shapes: give a value for "
            + ", ".join(sorted(set(missing)))
            + " (dims={'name': value}, --dim name=value)"
        )
    return shapes


def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's basic-level graph optimisation (constant folding) of a static model."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "folded.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = path
        options.log_severity_level = 3  # folding warns about every initializer it drops
        try:
            ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise LowerError(f"onnxruntime could not fold the model: {err}") from err
        return onnx.load(path)


def prepare(model: onnx.ModelProto | str | os.PathLike, dims: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` that ``from_onnx`` imports: inlined, static, shape-folded, Loops
    unrolled, zero-extent Concat operands dropped (``attnrewrite.lower.graph``).

    Protobuf at both ends: onnx's inliner, onnxruntime's folding and TVM's frontend take a
    ModelProto; the graph edits between them run on onnx-ir."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    model = onnx.inliner.inline_local_functions(model)
    _fix_dims(model, dims)
    graph = ir.from_proto(_fold(model))
    if UnrollLoops()(graph).modified:
        graph = ir.from_proto(_fold(ir.to_proto(graph)))
    DropEmptyOperands()(graph)
    folded = ir.to_proto(graph)  # TVM's frontend and onnxruntime's folding take protobuf
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in folded.graph.node if n.domain})
    if foreign:
        raise LowerError(f"ops outside the ONNX domain remain after inlining: {foreign}")
    return folded


def to_relax(model: onnx.ModelProto):
    """Import a prepared model (``prepare``) into a Relax IRModule, weights as constants, with
    our converters (``attnrewrite.lower.convert``) for the ops TVM's frontend lacks."""
    from tvm.relax.frontend import onnx as relax_onnx

    # convert, fast_math and schedules import TVM's compiler: loading an artifact needs only
    # its runtime (TVM_USE_RUNTIME_LIB=1), so they are imported where a build uses them
    from attnrewrite.lower.convert import installed

    try:
        with installed():
            return relax_onnx.from_onnx(model, keep_params_in_input=False)
    except LowerError:
        raise
    except Exception as err:  # the frontend raises assorted TVM errors
        kinds = sorted({n.op_type for n in model.graph.node})
        raise LowerError(f"TVM's ONNX frontend failed ({err}); ops in the graph: {kinds}") from err


def _inputs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    init = {i.name for i in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in init:
            continue
        tensor = value.type.tensor_type
        out.append(
            {
                "name": value.name,
                "shape": [d.dim_value for d in tensor.shape.dim],
                "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)),
            }
        )
    return out


def legalize(mod, target):
    """The module as ``compile_relax`` hands it to the tuning records: every Relax op
    legalized to a PrimFunc, none fused yet (on CPUs: float32 exp and softmax with a
    vectorisable exponential, ``attnrewrite.lower.fast_math``, and cumsum as
    ``cumsum.prefix_sum``). Model tuning (``attnrewrite.lower.tune_model``) extracts its tasks
    from this same module, so the records match structurally."""
    from tvm import relax

    from attnrewrite.lower import fast_math  # TVM's compiler, see to_relax

    custom = {**fast_math.LEGALIZE, **cumsum.LEGALIZE} if target.kind.name == "llvm" else None
    with target:
        return relax.transform.LegalizeOps(customize_legalize_map=custom)(mod)


def compile_relax(mod, target):
    """``tvm.compile`` with the tuning records for ``target`` applied when there are any and
    our default schedules (``attnrewrite.lower.schedules``) for every other function."""
    import tvm
    from tvm import relax

    from attnrewrite.lower.schedules import cpu_pipeline, schedule_gpu  # see to_relax

    target = make_target(target)
    db = database_for(target)
    mod = legalize(mod, target)
    if db is not None:
        with target, db, tvm.transform.PassContext(opt_level=3):
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    if str(target.kind.name) == "cuda":
        # dlight skips the functions the database scheduled (they are marked scheduled)
        return tvm.compile(schedule_gpu(mod, target), target=target)
    with target:
        return tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target))


def build(
    model_path: str | os.PathLike,
    target: Any = "llvm",
    out_dir: str | os.PathLike | None = None,
    dims: Mapping[str, int] | None = None,
) -> Path:
    """Compile a (rewritten) ONNX model for ``target`` into an artifact folder; return it.

    ``dims`` fixes every symbolic input dim (``{"batch": 1, "seq": 11}``). ``out_dir``
    defaults to ``<model folder>/tvm-<target name>``.
    """
    import tvm

    from attnrewrite.export import staged_directory

    target = make_target(target)
    model_path = Path(model_path)
    folded = prepare(model_path, dims or {})
    mod = to_relax(folded)
    executable = compile_relax(mod, target)
    out = Path(out_dir) if out_dir else model_path.parent / f"tvm-{target_name(target)}"
    meta = {
        "model": os.path.relpath(model_path, out),  # the folder may be renamed or moved
        "target": target_name(target),
        "target_str": str(target),
        "dims": dict(dims or {}),
        "inputs": _inputs(folded),
        "outputs": [o.name for o in folded.graph.output],
        "tvm": tvm.__version__,
    }
    with staged_directory(out) as staging:
        executable.export_library(str(staging / LIBRARY))
        (staging / META).write_text(json.dumps(meta, indent=2) + "\n")
    return out


@dataclass
class Artifact:
    """A loaded artifact folder: ``run(inputs)`` -> outputs in graph order.

    Inputs are copied into device buffers allocated on the first run and reused after it
    (a fresh 8 MB tensor per input and run cost 3.7 ms in page faults, a copy into a kept one
    0.6 ms), so one Artifact serves one run at a time."""

    folder: Path
    meta: dict[str, Any]
    vm: Any
    device: Any
    buffers: list[Any] = field(default_factory=list, repr=False)

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.meta["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return list(self.meta["outputs"])

    def run(self, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
        import tvm

        specs = self.meta["inputs"]
        if isinstance(inputs, Mapping):
            missing = [s["name"] for s in specs if s["name"] not in inputs]
            if missing:
                raise KeyError(f"missing inputs: {missing}")
            arrays = [inputs[s["name"]] for s in specs]
        else:
            arrays = list(inputs)
        if not self.buffers:
            self.buffers = [
                tvm.runtime.empty(spec["shape"], spec["dtype"], self.device) for spec in specs
            ]
        for spec, array, buffer in zip(specs, arrays, self.buffers, strict=True):
            array = np.ascontiguousarray(array, dtype=spec["dtype"])
            if list(array.shape) != spec["shape"]:
                raise ValueError(
                    f"{spec['name']}: built for shape {spec['shape']}, got {list(array.shape)}"
                )
            buffer.copyfrom(array)
        out = self.vm["main"](*self.buffers)
        return [t.numpy() for t in _flatten(out)]


def _flatten(value) -> list:
    if hasattr(value, "numpy"):
        return [value]
    out = []
    for item in value:
        out.extend(_flatten(item))
    return out


def _artifact_folder(folder: Path) -> Path:
    """The folder itself, or the single tvm-* artifact inside a rewrite's output folder."""
    if (folder / META).is_file():
        return folder
    found = sorted(p.parent for p in folder.glob(f"tvm-*/{META}"))
    if len(found) != 1:
        raise LowerError(
            f"{folder} holds {len(found)} compiled artifacts (tvm-*/{META}); name one folder"
        )
    return found[0]


def load(folder: str | os.PathLike, device: Any = None) -> Artifact:
    """Load an artifact folder written by ``build`` (needs only the TVM runtime)."""
    import tvm
    import tvm.runtime.vm

    folder = _artifact_folder(Path(folder))
    meta = json.loads((folder / META).read_text())
    lib = tvm.runtime.load_module(str(folder / LIBRARY))
    if device is None:
        device = tvm.cuda() if meta["target"].startswith("cuda") else tvm.cpu()
    vm = tvm.runtime.vm.VirtualMachine(lib, device)
    return Artifact(folder, meta, vm, device)
