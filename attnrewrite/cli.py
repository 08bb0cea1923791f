"""Command line: `attnrewrite MODEL --method M [-o OUT] [--report]`, `attnrewrite inspect MODEL`
`attnrewrite report ORIGINAL REWRITTEN` and `attnrewrite tune KERNEL|MODEL.onnx --target T`.

Every failure ends at one boundary (attnrewrite.boundary): one line on stderr, exit status 2
for bad input, bad options or a library failing on the input, 1 for a rewrite that fails its
verification. `-o` is written only when the whole command succeeded (attnrewrite.export).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import onnx
import onnxruntime
from rich.console import Console
from rich.table import Table

from attnrewrite import __version__, boundary
from attnrewrite import methods as references
from attnrewrite.errors import AttnRewriteError, VerificationError
from attnrewrite.export import check_output_folder, new_folder_name, output_folder
from attnrewrite.inputs import dimension_size, generate_inputs
from attnrewrite.pipeline import MODEL_FILE, VERIFY_SEQ_LEN, inspect_model, rewrite_model
from attnrewrite.plan.auto import auto_rewrite
from attnrewrite.report.run import REPORT_BATCH, REPORT_SEQ_LEN, InputChoice, Sweep, report
from attnrewrite.substitute.methods import METHOD_NAMES, Method, get_method

MAX_REPEATS = 1000
MAX_BATCH = 1024
MAX_SEQ_LEN = 1 << 16  # report, calibration and compiled-library inputs
MAX_VERIFY_SEQ_LEN = 1 << 12


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
        "--verbose", action="store_true", help="let the libraries' warnings reach stderr"
    )


def rewrite_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="attnrewrite",
        description="Rewrite every softmax attention of an ONNX model into one attnrewrite "
        "node computing the chosen method. Subcommands: inspect MODEL; report ORIGINAL REWRITTEN; "
        "tune KERNEL|MODEL.onnx --target T.",
    )
    parser.add_argument("model", type=Path, help="the ONNX model to rewrite (never modified)")
    parser.add_argument(
        "--method", required=True, help=f"one of {', '.join(METHOD_NAMES)}, or auto (per head)"
    )
    _add_method_params(parser)
    parser.add_argument("-o", "--out", type=Path, help="output folder (default: ./MODEL-METHOD)")
    parser.add_argument(
        "--force", action="store_true", help="replace a non-empty output folder (never merged)"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime parity run")
    parser.add_argument(
        "--verify-seq-len",
        type=_int_in(1, MAX_VERIFY_SEQ_LEN),
        default=VERIFY_SEQ_LEN,
        help=f"sequence length of the parity run (default {VERIFY_SEQ_LEN}: unlike export lengths)",
    )
    parser.add_argument(
        "--max-error",
        type=float,
        help="--method auto: error budget (relative L2 per head, then end to end on held-out)",
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
    return parser


def _add_input_options(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    group.add_argument(
        "--inputs", "--calib", type=Path, help="report/calibration inputs from a .npz"
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
        "--batch", type=_int_in(1, MAX_BATCH), default=REPORT_BATCH, help="report batch size"
    )
    group.add_argument(
        "--repeats", type=_int_in(1, MAX_REPEATS), default=5, help="timed runs per model (median)"
    )


def _input_choice(args: argparse.Namespace) -> InputChoice:
    if args.inputs is not None and args.text is not None:
        raise AttnRewriteError("choose one of --inputs and --text")
    return InputChoice(args.inputs, args.text, args.tokenizer, args.seq_len, args.batch)


def report_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="attnrewrite report",
        description="Compare a rewritten model with its original: end to end, per block, speed.",
    )
    parser.add_argument("original", type=Path)
    parser.add_argument("rewritten", type=Path)
    parser.add_argument("-o", "--out", type=Path, help="report folder (default: the rewritten's)")
    _add_input_options(parser)
    _add_common_flags(parser)
    return parser


def run_report(argv: Sequence[str], console: Console) -> int:
    args = report_parser().parse_args(argv)
    for path in (args.original, args.rewritten):
        if not path.is_file():
            raise AttnRewriteError(f"no such file: {path}")
    out_dir = args.out or args.rewritten.parent
    for path in (args.original, args.rewritten):
        if out_dir.resolve() == path.resolve() or out_dir.resolve().is_relative_to(path.resolve()):
            raise AttnRewriteError(f"report folder {out_dir} would overwrite the input {path}")
    with boundary.about(args.original, args.rewritten):
        inputs = _input_choice(args).load(args.original)
        result, files = report(args.original, args.rewritten, out_dir, inputs, repeats=args.repeats)
    console.print(_report_line(result, files), highlight=False, soft_wrap=True)
    return 0


def _report_line(result: dict, files: Sequence[Path]) -> str:
    summary, latency = result["summary"], result["latency"]
    text = f"report: worst output rel L2 {_number(summary['worst_output_relative_l2'], '.2e')}"
    if summary["worst_block"] is not None:
        worst = _number(summary["worst_block_relative_l2"], ".2e")
        text += f", worst block {summary['worst_block']} ({worst})"
    logits = [o["logits"] for o in result["outputs"] if o["logits"]]
    if logits:
        text += f", top-1 agreement {_number(logits[0]['top1_agreement'], '.1%')}"
    original, rewritten = (
        _number(latency["original_ms"], ".1f"),
        _number(latency["rewritten_ms"], ".1f"),
    )
    text += f"; {original} -> {rewritten} ms"
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
    parser.add_argument("model", type=Path)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _add_common_flags(parser)
    return parser


def run_rewrite(argv: Sequence[str], console: Console) -> int:
    args = rewrite_parser().parse_args(argv)
    with boundary.about(args.model):
        return _rewrite(args, console)


def _rewrite(args: argparse.Namespace, console: Console) -> int:
    if args.method == "auto":
        return _run_auto(args, console)
    if args.max_error is not None:
        raise AttnRewriteError("--max-error applies to --method auto")
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
        inputs = _input_choice(args).load(args.model) if args.report else None
        verify = not args.no_verify
        outcome = rewrite_model(args.model, method, staging, verify, args.verify_seq_len)
        say(outcome.summary)
        if target is not None:
            say(_compile(staging, target, args))
        if inputs is not None:
            result, files = report(
                args.model,
                staging / MODEL_FILE,
                staging,
                inputs,
                method={"name": method.name, "params": method.params},
                sweep=sweep,
                repeats=args.repeats,
            )
            say(_report_line(result, files))
    return 0


@contextmanager
def _output(
    args: argparse.Namespace, out_dir: Path, console: Console
) -> Iterator[tuple[Path, Callable[[str], None]]]:
    """The staging folder a command writes into (it becomes `out_dir` when the command
    succeeds, see export.output_folder), and `say`, which prints a line; lines and errors
    name `out_dir`, not the staging folder."""
    sources = [p for p in (args.model, args.inputs, args.text) if p is not None]
    check_output_folder(out_dir, args.force, sources)
    with output_folder(out_dir, args.force, keep_on=(VerificationError,)) as staging:

        def say(text: str) -> None:
            console.print(text.replace(str(staging), str(out_dir)), highlight=False, soft_wrap=True)

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
    from attnrewrite.lower import build  # TVM only when asked for

    model = onnx.load(str(out_dir / MODEL_FILE), load_external_data=False)
    dims = {
        dim.dim_param: dimension_size(dim, axis, args.seq_len, args.batch)
        for value in model.graph.input
        for axis, dim in enumerate(value.type.tensor_type.shape.dim)
        if dim.dim_param
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
    folder: Path, path: Path, model: onnx.ModelProto, target: str, args: argparse.Namespace
) -> str:
    """The library against onnxruntime on the rewritten model (attnrewrite.lower.check)."""
    import tvm

    from attnrewrite.lower.check import CHECK, check_artifact, library_tolerance

    if args.no_verify:
        return "library not checked against onnxruntime (--no-verify)"
    if target.startswith("cuda") and not tvm.cuda().exist:
        return "library not run here: no CUDA GPU on this machine"
    feeds = generate_inputs(model, args.seq_len, args.batch)
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


def _run_pt2(args: argparse.Namespace, method: Method, out_dir: Path, console: Console) -> int:
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
        raise AttnRewriteError("--method auto needs --max-error (e.g. 1e-2)")
    _given_params(args, "auto")
    if args.sweep:
        raise AttnRewriteError("--sweep does not apply to --method auto")
    if not args.model.is_file():
        raise AttnRewriteError(f"no such file: {args.model}")
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
        )
        say(outcome.summary)
        if target is not None:
            say(_compile(staging, target, args))
        if args.report:
            result, files = report(
                args.model, staging / MODEL_FILE, staging, calibration, repeats=args.repeats
            )
            say(_report_line(result, files))
    return 0


def run_tune(argv: Sequence[str]) -> int:
    """`attnrewrite tune KERNEL --target cuda --arch sm_90 --trials N` (one kernel,
    attnrewrite.lower.tune) or `attnrewrite tune MODEL.onnx --dim name=value ...` (every
    function of a model, attnrewrite.lower.tune_model): meta_schedule records into
    attnrewrite/targets/."""
    whole_model = bool(argv) and str(argv[0]).endswith(".onnx")
    try:
        if whole_model:
            from attnrewrite.lower.tune_model import main as tune_main
        else:
            from attnrewrite.lower.tune import main as tune_main
    except ImportError:
        raise AttnRewriteError('tune needs TVM: pip install -e ".[tvm]"') from None
    return tune_main(list(argv))


def run_inspect(argv: Sequence[str], console: Console) -> int:
    args = inspect_parser().parse_args(argv)
    with boundary.about(args.model):
        return _inspect(args, console)


def _inspect(args: argparse.Namespace, console: Console) -> int:
    if args.model.suffix == ".pt2":
        from attnrewrite.torch.pt2 import inspect_pt2  # FX code only for .pt2 inputs

        console.print_json(json.dumps(inspect_pt2(args.model)))
        return 0
    found = inspect_model(args.model)
    if args.json:
        payload = {
            "matches": [m.describe() for m in found.matches],
            "not_rewritten": [r.describe() for r in found.refusals],
        }
        console.print_json(json.dumps(payload))
        return 0
    table = Table(title=f"{len(found.matches)} attention block(s) in {args.model}")
    for column in ("anchor", "graph", "mask", "heads/kv", "scale", "q/kv len", "variant"):
        table.add_column(column)
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
        refused = Table(title=f"{len(found.refusals)} Softmax/attention op(s) not rewritten")
        for column in ("node", "op", "graph", "reason"):
            refused.add_column(column)
        for r in found.refusals:
            refused.add_row(r.anchor, r.op_type, r.graph_name, r.reason)
        console.print(refused)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    console = Console()
    verbose = "--verbose" in args
    onnxruntime.set_default_logger_severity(2 if verbose else 3)

    def command() -> int:
        if args and args[0] == "inspect":
            return run_inspect(args[1:], console)
        if args and args[0] == "report":
            return run_report(args[1:], console)
        if args and args[0] == "tune":
            return run_tune(args[1:])
        return run_rewrite(args, console)

    return boundary.run(command, debug="--debug" in args, verbose=verbose)


if __name__ == "__main__":
    sys.exit(main())
