"""Command line: `attnrewrite MODEL --method M [-o OUT] [--report]`, `attnrewrite inspect MODEL`
`attnrewrite report ORIGINAL REWRITTEN` and `attnrewrite tune KERNEL|MODEL.onnx --target T`.

Every failure ends at one boundary (attnrewrite.boundary): one line on stderr, exit status 2
for bad input, bad options or a library failing on the input, 1 for a rewrite that fails its
verification; a report whose verdict fails a gate (--max-error, --min-top1, --require-speedup)
exits 3, after writing everything. `-o` is written only when the whole command succeeded
(attnrewrite.export.output_folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from attnrewrite import __version__, boundary
from attnrewrite import methods as references
from attnrewrite.defaults import (
    LONG_CONTEXT,
    REPORT_BATCH,
    REPORT_SEQ_LEN,
    VERIFY_SEQ_LEN,
    default_batch,
)
from attnrewrite.errors import AttnRewriteError, VerificationError

if TYPE_CHECKING:
    import onnx_ir as ir

    from attnrewrite.match import FindResult
    from attnrewrite.report.run import InputChoice
    from attnrewrite.report.verdict import Gates
    from attnrewrite.substitute.methods import ResolvedMethod

# onnx, onnxruntime, torch and TVM take seconds to import: each command imports what it
# uses when it runs, so --version, --help and errors about the arguments answer at once.
METHOD_NAMES = tuple(references.METHODS)

MAX_REPEATS = 1000
MAX_BATCH = 1024
MAX_SEQ_LEN = 1 << 16  # report, calibration and compiled-library inputs
MAX_VERIFY_SEQ_LEN = 1 << 12
TUNE_NEEDS_TVM = 'tune needs TVM: pip install -e ".[tvm]"'
MODEL_HELP = (
    "an ONNX model, a .pt2 program, a transformers checkpoint folder (config.json + "
    "safetensors) or a .gguf file; the last two are exported to ONNX once and cached "
    "($ATTNREWRITE_CACHE, default ~/.cache/attnrewrite), their tokenizer used for --text"
)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, as every other error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise AttnRewriteError(message)


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an int in [low, high]."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="let the libraries' warnings and logs reach stderr (TVM's compiler among them)",
    )


def rewrite_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="attnrewrite",
        description="Rewrite every softmax attention of an ONNX model into one attnrewrite "
        "node computing the chosen method. Subcommands: inspect MODEL; report ORIGINAL REWRITTEN; "
        "tune KERNEL|MODEL.onnx --target T.",
    )
    parser.add_argument(
        "model", type=Path, help=f"the model to rewrite (never modified): {MODEL_HELP}"
    )
    parser.add_argument(
        "--method",
        required=True,
        help=f"one of {', '.join(METHOD_NAMES)}, or auto (per head, within --max-error)",
    )
    _add_method_params(parser)
    parser.add_argument("-o", "--out", type=Path, help="output folder (default: ./MODEL-METHOD)")
    parser.add_argument(
        "--force", action="store_true", help="replace a non-empty output folder (never merged)"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime parity run")
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="fit the method's per-head parameters to the model on calibration inputs "
        "(--text/--tokenizer or --calib; at --seq-len): multipole's expansion points, "
        "polysketch's feature map or convbasis's query centres, written into the model beside "
        "each node; rewrite.json "
        "records each head's error, default and fitted. With --method auto: also offer "
        "multipole fitted per head (blocks 128, 256)",
    )
    parser.add_argument(
        "--verify-seq-len",
        type=_int_in(1, MAX_VERIFY_SEQ_LEN),
        default=VERIFY_SEQ_LEN,
        help=f"sequence length of the parity run (default {VERIFY_SEQ_LEN}: unlike export lengths)",
    )
    parser.add_argument("--version", action="version", version=f"attnrewrite {__version__}")
    _add_common_flags(parser)
    lowering = parser.add_argument_group("compiled library through TVM (needs the tvm extra)")
    lowering.add_argument("--target", help="also compile for llvm (this CPU) or cuda")
    lowering.add_argument("--arch", help="with --target cuda: sm_80, sm_90, ...")
    reporting = parser.add_argument_group("accuracy report (report.json, report.md, report.html)")
    reporting.add_argument("--report", action="store_true", help="write the accuracy report")
    reporting.add_argument(
        "--sweep", metavar="NAME=V1,V2", help="also rewrite at each value of one method parameter"
    )
    _add_input_options(reporting)
    _add_gates(parser, auto=True)
    return parser


def _add_gates(parser: argparse.ArgumentParser, auto: bool) -> None:
    """The verdict's gates: checked on the report's measurements, exit 3 when one fails."""
    budget = (
        " With --method auto it is also the planning budget: the plan's end-to-end error "
        "(relative L2 of every output, and top-1 disagreement for logits) stays within E on "
        "the calibration rows and on held-out rows; a single head may err more, as its "
        "error is diluted in the model."
        if auto
        else ""
    )
    gates = parser.add_argument_group(
        "verdict (exit 3 when a gate fails, after every file is written)"
    )
    gates.add_argument(
        "--max-error",
        type=_positive_float,
        metavar="E",
        help="largest end-to-end error accepted: the worst output's relative L2, "
        f"||rewritten - original|| / ||original||, on the report's inputs.{budget}",
    )
    gates.add_argument(
        "--costs",
        type=Path,
        metavar="FILE",
        help="--method auto: a table of measured node costs (ms), read where it exists and "
        "written back with what this run timed: plans become repeatable and skip the timing",
    )
    gates.add_argument(
        "--no-speed-check",
        action="store_true",
        help="--method auto: keep the plan within budget even if the whole model does not run "
        "faster with it than with exact attention everywhere (timed at the target length)",
    )
    gates.add_argument(
        "--min-top1",
        type=_fraction,
        metavar="P",
        help="lowest top-1 agreement accepted on logits (0.99 or 99%%)",
    )
    gates.add_argument(
        "--require-speedup",
        type=_positive_float,
        nargs="?",
        const=1.0,
        metavar="X",
        help="require the rewritten model to be X times as fast as the original "
        "(default 1: faster at all), timed in the report",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be at most 1 (or 100%), got {text}")
    return value


def _verdict_gates(args: argparse.Namespace) -> Gates:
    from attnrewrite.report.verdict import Gates

    return Gates(args.max_error, args.min_top1, args.require_speedup)


def _add_input_options(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    group.add_argument(
        "--inputs",
        "--calib",
        type=Path,
        metavar="NPZ",
        help="report and calibration inputs: a .npz with one array per model input, named as "
        "the input, e.g. np.savez('batch.npz', input_ids=ids, attention_mask=mask) with int64 "
        "[batch, seq] arrays for a language model (a missing or misshapen one is named in the "
        "error). Rows are sequences: --method auto chooses on the first half of the rows and "
        "checks on the second, so give at least 2 (README: Calibration inputs)",
    )
    group.add_argument("--text", type=Path, help="report inputs: token ids of this text file")
    group.add_argument("--tokenizer", help="with --text: a tokenizer.json, or 'bytes' (UTF-8)")
    group.add_argument(
        "--seq-len",
        type=_int_in(1, MAX_SEQ_LEN),
        default=REPORT_SEQ_LEN,
        help="target sequence length: of generated/text report and calibration inputs, and of "
        f"auto's cost model (default {REPORT_SEQ_LEN}; a --calib file sets its own)",
    )
    group.add_argument(
        "--batch",
        type=_int_in(1, MAX_BATCH),
        help=f"report and calibration batch size (default {REPORT_BATCH}; 1 beyond "
        f"{LONG_CONTEXT} tokens, except for --method auto)",
    )
    group.add_argument(
        "--repeats", type=_int_in(1, MAX_REPEATS), default=5, help="timed runs per model (median)"
    )


def _input_choice(args: argparse.Namespace) -> InputChoice:
    from attnrewrite.report.run import InputChoice

    if args.inputs is not None and args.text is not None:
        raise AttnRewriteError("choose one of --inputs and --text")
    return InputChoice(args.inputs, args.text, args.tokenizer, args.seq_len, _batch(args))


def _batch(args: argparse.Namespace) -> int:
    """--batch, or its default for this length and method (`defaults.default_batch`)."""
    if args.batch is not None:
        return args.batch
    return default_batch(args.seq_len, auto=getattr(args, "method", None) == "auto")


def report_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="attnrewrite report",
        description="Compare a rewritten model with its original: end to end, per block, speed.",
    )
    parser.add_argument("original", type=Path, help=MODEL_HELP)
    parser.add_argument("rewritten", type=Path)
    parser.add_argument("-o", "--out", type=Path, help="report folder (default: the rewritten's)")
    _add_input_options(parser)
    _add_gates(parser, auto=False)
    _add_common_flags(parser)
    return parser


def run_report(argv: Sequence[str], console: Console) -> int:
    args = report_parser().parse_args(argv)
    args.original = _model_path(args.original, args)
    _require_file(args.rewritten)
    out_dir = args.out or args.rewritten.parent
    for path in (args.original, args.rewritten):
        if out_dir.resolve() == path.resolve() or out_dir.resolve().is_relative_to(path.resolve()):
            raise AttnRewriteError(f"report folder {out_dir} would overwrite the input {path}")
    _quiet_libraries(args.verbose)
    from attnrewrite.report.run import report

    with boundary.about(args.original, args.rewritten):
        inputs = _input_choice(args).load(args.original)
        gates = _verdict_gates(args)
        result, files = report(
            args.original, args.rewritten, out_dir, inputs, repeats=args.repeats, gates=gates
        )
    return _print_report(result, files, _printer(console))


def _print_report(result: dict, files: Sequence[Path], say: Callable[[str], None]) -> int:
    """The report's summary, its warnings, and the verdict as the last line: exit 3 when a
    gate failed."""
    from attnrewrite.report.verdict import EXIT_GATE_FAILED

    say(_report_line(result, files))
    verdict = result["verdict"]
    for warning in verdict["warnings"]:
        say(f"warning: {warning}")
    say(f"verdict: {verdict['line']}")
    return 0 if verdict["passed"] else EXIT_GATE_FAILED


def _printer(console: Console) -> Callable[[str], None]:
    return lambda text: console.print(text, highlight=False, soft_wrap=True)


def _report_line(result: dict, files: Sequence[Path]) -> str:
    summary, latency = result["summary"], result["latency"]
    text = f"report: worst output rel L2 {_number(summary['worst_output_relative_l2'], '.2e')}"
    if summary["worst_block"] is not None:
        worst = _number(summary["worst_block_relative_l2"], ".2e")
        text += f", worst block {summary['worst_block']} ({worst})"
    logits = [o["logits"] for o in result["outputs"] if o["logits"]]
    if logits:
        text += f", top-1 agreement {_number(logits[0]['top1_agreement'], '.1%')}"
    before, after = (_number(latency[k], ".1f") for k in ("original_ms", "rewritten_ms"))
    text += f"; {before} -> {after} ms (medians of {latency['repeats']} runs)"
    text += f"; peak memory {result['memory']['peak_rss_mb'] / 1024:.1f} GiB"
    return f"{text} -> {', '.join(str(f) for f in files)}"


def _number(value: float | None, spec: str) -> str:
    """A metric as the report writes it: null (not finite) reads "n/a"."""
    return "n/a" if value is None else format(value, spec)


ALIASES = {"bases": ["--k"]}  # the conv-basis paper's name for the number of bases


def _method_params() -> dict[str, dict[str, str]]:
    """{param: {method: help}} over the methods the tool offers."""
    table: dict[str, dict[str, str]] = {}
    for name in METHOD_NAMES:
        for param in references.get(name).params:
            table.setdefault(param.name, {})[name] = f"{param.help} (default {param.default})"
    return table


def _add_method_params(parser: argparse.ArgumentParser) -> None:
    """One --flag per method parameter; values are converted and checked by the method."""
    group = parser.add_argument_group("method parameters (defaults in brackets)")
    for name, helps in _method_params().items():
        text = "; ".join(f"{method}: {h}" for method, h in helps.items())
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, *ALIASES.get(name, []), dest=name, metavar="V", help=text)


def _given_params(args: argparse.Namespace, method: str) -> dict[str, str]:
    """The parameter flags the user set, refusing those the chosen method does not have."""
    given = {n: getattr(args, n) for n in _method_params() if getattr(args, n) is not None}
    own = {p.name for p in references.get(method).params} if method in METHOD_NAMES else set()
    stray = sorted(set(given) - own)
    if stray:
        flags = ", ".join("--" + n.replace("_", "-") for n in stray)
        raise AttnRewriteError(f"{flags} does not apply to --method {method}")
    return given


def inspect_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="attnrewrite inspect", description="List what the finder sees.")
    parser.add_argument("model", type=Path, help=MODEL_HELP)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _add_common_flags(parser)
    return parser


def _model_path(path: Path, args: argparse.Namespace) -> Path:
    """The ONNX (or .pt2) file a command reads. A transformers checkpoint folder or a .gguf
    file is exported to ONNX first, once, into a cache (attnrewrite.ingest; what happens and
    where it lives is said on stderr), and its tokenizer becomes --text's default."""
    from attnrewrite.ingest import checkpoint_of, exported_model  # torch only for an export

    checkpoint = checkpoint_of(path)
    if checkpoint is None:
        _require_file(path)
        return path
    status = Console(file=boundary.user_stderr())

    def say(line: str) -> None:
        status.print(line, highlight=False, soft_wrap=True)

    exported = exported_model(checkpoint, say)
    say(exported.summary())
    if getattr(args, "tokenizer", None) is None and exported.tokenizer is not None:
        args.tokenizer = str(exported.tokenizer)
    return exported.onnx


def _require_file(path: Path) -> None:
    """A missing input is reported before any library is imported."""
    if not path.is_file():
        raise AttnRewriteError(
            f"no such file: {path}" if not path.exists() else f"not a file: {path}"
        )


def _quiet_libraries(verbose: bool) -> None:
    """onnxruntime logs errors only (warnings too with --verbose)."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(2 if verbose else 3)


def run_rewrite(argv: Sequence[str], console: Console) -> int:
    args = rewrite_parser().parse_args(argv)
    with boundary.about(args.model):
        return _rewrite(args, console)


def _rewrite(args: argparse.Namespace, console: Console) -> int:
    if args.method not in (*METHOD_NAMES, "auto"):
        raise AttnRewriteError(
            f"unknown method '{args.method}'; choose one of {', '.join(METHOD_NAMES)}, "
            "or auto (per head, within --max-error)"
        )
    if args.calibrate:
        _check_calibrate(args)
    args.model = _model_path(args.model, args)
    _quiet_libraries(args.verbose)
    if args.method == "auto":
        return _run_auto(args, console)
    if args.costs is not None or args.no_speed_check:
        raise AttnRewriteError("--costs and --no-speed-check apply to --method auto")
    gates = _verdict_gates(args)
    if gates.any() and not args.report:
        raise AttnRewriteError(
            "--max-error, --min-top1 and --require-speedup are checked on the accuracy report: "
            "add --report"
        )
    from attnrewrite.export import new_folder_name
    from attnrewrite.pipeline import MODEL_FILE, rewrite_model
    from attnrewrite.report.run import Sweep, report
    from attnrewrite.substitute.methods import get_method

    method = get_method(args.method, _given_params(args, args.method))
    out_dir = args.out or new_folder_name(Path.cwd() / f"{args.model.stem}-{method.name}")
    if args.model.suffix == ".pt2":
        return _run_pt2(args, method, out_dir, console)
    sweep = Sweep.parse(args.sweep, {"k": "bases"}) if args.sweep else None
    if sweep is not None and sweep.param not in method.params:
        raise AttnRewriteError(f"--sweep {sweep.param}: not a parameter of {method.name}")
    if sweep is not None and not args.report:
        raise AttnRewriteError("--sweep needs --report")
    target = _target(args)
    with _output(args, out_dir, console) as (staging, say):
        wanted = args.report or args.calibrate
        inputs = _input_choice(args).load(args.model) if wanted else None
        verify = not args.no_verify
        if args.calibrate:
            from attnrewrite.plan.calibrated import calibrated_rewrite

            outcome = calibrated_rewrite(
                args.model, method, staging, inputs, verify, args.verify_seq_len
            )
        else:
            outcome = rewrite_model(args.model, method, staging, verify, args.verify_seq_len)
        say(outcome.summary)
        if target is not None:
            say(_compile(staging, target, args))
        if not args.report:
            return 0
        result, files = report(
            args.model,
            staging / MODEL_FILE,
            staging,
            inputs,
            method={"name": method.name, "params": method.params},
            sweep=sweep,
            repeats=args.repeats,
            gates=gates,
        )
        return _print_report(result, files, say)


def _check_calibrate(args: argparse.Namespace) -> None:
    """--calibrate: a method with something to fit, and real calibration inputs."""
    fitted = [name for name, m in references.METHODS.items() if m.fitted]
    if args.method != "auto" and not references.METHODS[args.method].fitted:
        raise AttnRewriteError(
            f"--calibrate fits {', '.join(fitted)}; {args.method} has no parameters to fit"
        )
    if args.model.suffix == ".pt2":
        raise AttnRewriteError("--calibrate rewrites ONNX models; export the program to ONNX")
    if args.inputs is None and args.text is None:
        raise AttnRewriteError(
            "--calibrate needs calibration inputs: --text FILE --tokenizer TOKENIZER "
            "(or --calib NPZ)"
        )
    if args.sweep:
        raise AttnRewriteError("--sweep does not apply to --calibrate (each point needs a fit)")


@contextmanager
def _output(
    args: argparse.Namespace, out_dir: Path, console: Console
) -> Iterator[tuple[Path, Callable[[str], None]]]:
    """The staging folder a command writes into (it becomes `out_dir` when the command ends
    without an error, see export.output_folder), and `say`, which prints a line; lines and
    errors name `out_dir`, not the staging folder."""
    from attnrewrite.export import check_output_folder, output_folder

    sources = [p for p in (args.model, args.inputs, args.text) if p is not None]
    check_output_folder(out_dir, args.force, sources)
    with output_folder(out_dir, args.force, keep_on=(VerificationError,)) as staging:
        shown = _printer(console)

        def say(text: str) -> None:
            shown(text.replace(str(staging), str(out_dir)))

        try:
            yield staging, say
        except AttnRewriteError as err:
            err.args = (str(err).replace(str(staging), str(out_dir)),)
            raise


def _target(args: argparse.Namespace) -> str | None:
    """ "llvm" or "cuda:sm_XX", checked before any work is done."""
    if args.target is None:
        if args.arch:
            raise AttnRewriteError("--arch needs --target cuda")
        return None
    if args.target not in ("llvm", "cuda"):
        raise AttnRewriteError(f"--target must be llvm or cuda, got '{args.target}'")
    if args.target == "llvm" and args.arch:
        raise AttnRewriteError("--arch applies to --target cuda")
    try:
        import tvm  # noqa: F401
    except ImportError:
        raise AttnRewriteError('--target needs TVM: pip install -e ".[tvm]"') from None
    return f"cuda:{args.arch}" if args.target == "cuda" and args.arch else args.target


def _compile(out_dir: Path, target: str, args: argparse.Namespace) -> str:
    """The rewritten model compiled for `target` at the --batch / --seq-len shapes."""
    import onnx_ir as ir

    from attnrewrite.inputs import dimension_size
    from attnrewrite.lower import build  # TVM only when asked for
    from attnrewrite.pipeline import MODEL_FILE

    model = ir.load(str(out_dir / MODEL_FILE))  # the weights stay on disk: signature only
    dims = {
        dim.value: dimension_size(dim, axis, args.seq_len, _batch(args))
        for value in model.graph.inputs
        for axis, dim in enumerate(value.shape or ())
        if isinstance(dim, ir.SymbolicDim) and dim.value
    }
    try:
        folder = build(out_dir / MODEL_FILE, target, None, dims)
    except Exception as err:  # TVM's frontends and passes raise many types: all mean "cannot"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AttnRewriteError(
            f"TVM could not compile the rewritten model for {target}: {reason[:300]}"
        ) from None
    shapes = ", ".join(f"{k}={v}" for k, v in dims.items())
    built = f"compiled for {target} ({shapes}) -> {folder}"
    usage = f"attnrewrite.load('{out_dir}').run(inputs)"
    return f"{built}; {usage}\n{_check_compiled(folder, out_dir / MODEL_FILE, model, target, args)}"


def _check_compiled(
    folder: Path, path: Path, model: ir.Model, target: str, args: argparse.Namespace
) -> str:
    """The library against onnxruntime on the rewritten model (attnrewrite.lower.check)."""
    import tvm

    from attnrewrite.inputs import generate_inputs
    from attnrewrite.lower.check import CHECK, check_artifact, library_tolerance

    if args.no_verify:
        return "library not checked against onnxruntime (--no-verify)"
    if target.startswith("cuda") and not tvm.cuda().exist:
        return "library not run here: no CUDA GPU on this machine"
    feeds = generate_inputs(model, args.seq_len, _batch(args))
    try:
        check = check_artifact(folder, path, feeds, library_tolerance(model), args.repeats)
    except Exception as err:  # the TVM runtime and onnxruntime raise their own types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AttnRewriteError(f"the library in {folder} did not run: {reason[:300]}") from None
    if not check.passed:
        raise AttnRewriteError(
            f"the library in {folder} differs from onnxruntime on the rewritten model by "
            f"{check.worst:.1e} (tolerance {check.tolerance:.0e}): do not use it "
            f"({folder / CHECK})"
        )
    return f"library {check.summary()}"


def _run_pt2(
    args: argparse.Namespace, method: ResolvedMethod, out_dir: Path, console: Console
) -> int:
    """A saved torch.export program: rewritten in FX, saved as .pt2 and ONNX."""
    if args.report or args.sweep:
        raise AttnRewriteError(
            "--report/--sweep read ONNX: run `attnrewrite report` on OUTDIR/model.onnx"
        )
    from attnrewrite.torch.pt2 import rewrite_pt2  # FX code only for .pt2 inputs

    with _output(args, out_dir, console) as (staging, say):
        _, summary = rewrite_pt2(args.model, method.name, method.params, staging)
        say(summary)
    return 0


def _run_auto(args: argparse.Namespace, console: Console) -> int:
    if args.max_error is None:
        raise AttnRewriteError("--method auto needs --max-error, its error budget (e.g. 1e-2)")
    _given_params(args, "auto")
    if args.sweep:
        raise AttnRewriteError("--sweep does not apply to --method auto")
    from attnrewrite.export import new_folder_name
    from attnrewrite.pipeline import MODEL_FILE
    from attnrewrite.plan.auto import auto_rewrite
    from attnrewrite.report.run import report

    out_dir = args.out or new_folder_name(Path.cwd() / f"{args.model.stem}-auto")
    target = _target(args)
    with _output(args, out_dir, console) as (staging, say):
        calibration = _input_choice(args).load(args.model)
        outcome = auto_rewrite(
            args.model,
            staging,
            args.max_error,
            calibration,
            verify=not args.no_verify,
            verify_seq_len=args.verify_seq_len,
            costs=args.costs,
            check_speed=not args.no_speed_check,
            fitted=args.calibrate,
        )
        say(outcome.summary)
        if target is not None:
            say(_compile(staging, target, args))
        if not args.report:
            return 0
        result, files = report(
            args.model,
            staging / MODEL_FILE,
            staging,
            calibration,
            method=outcome.report["method"],
            repeats=args.repeats,
            gates=_verdict_gates(args),
        )
        return _print_report(result, files, say)


def run_tune(argv: Sequence[str]) -> int:
    """`attnrewrite tune KERNEL --target cuda --arch sm_90 --trials N` (one kernel,
    attnrewrite.lower.tune) or `attnrewrite tune MODEL.onnx --dim name=value ...` (every
    function of a model, attnrewrite.lower.tune_model): meta_schedule records into
    attnrewrite/targets/."""
    if not argv:
        raise AttnRewriteError(
            "tune needs a kernel (conv_basis, irfft, rfft, scan) or a MODEL.onnx; "
            "see attnrewrite tune --help"
        )
    if argv[0] in ("-h", "--help"):
        return _tune_help()
    whole_model = str(argv[0]).endswith(".onnx")
    try:
        if whole_model:
            from attnrewrite.lower.tune_model import main as tune_main
        else:
            from attnrewrite.lower.tune import main as tune_main
    except ImportError:
        raise AttnRewriteError(TUNE_NEEDS_TVM) from None
    return tune_main(list(argv))


def _tune_help() -> int:
    """Both forms of `tune`, each with its own options."""
    try:
        from attnrewrite.lower import tune, tune_model
    except ImportError:
        raise AttnRewriteError(TUNE_NEEDS_TVM) from None
    forms = (tune.arguments(), tune_model.arguments())
    print("attnrewrite tune has two forms: one kernel, or every function of a model.\n")
    print("\n\n".join(form.format_help() for form in forms), end="")
    return 0


def run_inspect(argv: Sequence[str], console: Console) -> int:
    """What the finder sees; a model without attention says so and exits 2, as the rewrite
    does. Cells wrap rather than being cut, and output that is not a terminal gets the
    tables' full width."""
    args = inspect_parser().parse_args(argv)
    args.model = _model_path(args.model, args)
    _quiet_libraries(args.verbose)
    with boundary.about(args.model):
        return _inspect(args, console)


def _inspect(args: argparse.Namespace, console: Console) -> int:
    if args.model.suffix == ".pt2":
        from attnrewrite.torch.pt2 import inspect_pt2  # FX code only for .pt2 inputs

        console.print_json(json.dumps(inspect_pt2(args.model)))
        return 0
    from attnrewrite.pipeline import inspect_model, no_attention

    found = inspect_model(args.model)
    if args.json:
        payload = {
            "matches": [m.describe() for m in found.matches],
            "not_rewritten": [r.describe() for r in found.refusals],
        }
        console.print_json(json.dumps(payload))
    else:
        _print_findings(found, args.model, console)
    if not found.matches:
        raise no_attention(args.model, found)
    return 0


def _print_findings(found: FindResult, model: Path, console: Console) -> None:
    if not console.is_terminal:
        console = Console(width=UNBOUNDED)
    if found.matches:
        table = _table(
            f"{len(found.matches)} attention block(s) in {model}",
            ("anchor", "graph", "mask", "heads/kv", "scale", "q/kv len", "variant"),
        )
        for m in found.matches:
            table.add_row(
                m.anchor,
                m.graph_name,
                m.mask.value + (f" w={m.window}" if m.window else ""),
                f"{m.q_heads}/{m.kv_heads}",
                f"{m.scale:.4g} ({m.scale_source})",
                f"{m.q_len}/{m.kv_len}",
                " ".join(m.variant),
            )
        console.print(table)
    if found.refusals:
        refused = _table(
            f"{len(found.refusals)} Softmax/attention op(s) not rewritten",
            ("node", "op", "graph", "reason"),
        )
        for r in found.refusals:
            refused.add_row(r.anchor, r.op_type, r.graph_name, r.reason)
        console.print(refused)


UNBOUNDED = 10_000  # columns: a table printed to a file or a pipe is never cut or wrapped


def _table(title: str, columns: Sequence[str]) -> Table:
    """A table whose long names fold onto more lines instead of ending in '...'."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)

    def command() -> int:
        console = Console()
        if args and args[0] == "inspect":
            return run_inspect(args[1:], console)
        if args and args[0] == "report":
            return run_report(args[1:], console)
        if args and args[0] == "tune":
            return run_tune(args[1:])
        return run_rewrite(args, console)

    return boundary.run(command, debug="--debug" in args, verbose="--verbose" in args)


if __name__ == "__main__":
    sys.exit(main())
