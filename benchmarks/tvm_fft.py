"""TVM four-step FFT (attnrewrite.lower.fft) against numpy and torch.fft.

CPU (default): batched float32 rfft at a few lengths; TVM uses the tuned records of this
machine's llvm target when attnrewrite/targets has them (``--untuned`` to ignore them).

    python -m benchmarks.tvm_fft --sizes 256 1024 4096 --batch 64 --json fft_cpu.json

GPU in two steps, so that the GPU machine needs only TVM's runtime (no compiler, no nvcc):

    python -m benchmarks.tvm_fft --export-cuda dist/gpu/fft --arch sm_90     # here: nvcc
    TVM_USE_RUNTIME_LIB=1 python benchmarks/tvm_fft.py --run-cuda dist/gpu/fft  # on the GPU

``--export-cuda`` builds the staged Relax modules of tests/lower/fft_staged.py
(``rfft_module`` / ``irfft_module`` / ``conv_basis_staged_module``, dlight schedules per
stage) and writes, per module, the exported library (which holds CUDA source) and the fatbin
nvcc made from that source; ``--run-cuda`` registers a ``tvm_callback_cuda_compile`` that
hands TVM the prebuilt fatbin, checks each kernel against numpy and times it against torch.fft
on the GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np


def conv_reference(kern: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float64 numpy: sum over bases of causal convolutions (as tests/lower/references.py's
    conv_basis_reference, which imports attnrewrite: the GPU side runs with TVM's runtime and
    numpy only)."""
    length = kern.shape[-1]
    n = 1 << max(1, (2 * length - 1).bit_length())
    kf = np.fft.rfft(kern.astype(np.float64), n=n, axis=-1)
    xf = np.fft.rfft(x.astype(np.float64), n=n, axis=-2)
    return np.fft.irfft(np.einsum("bhin,bhinc->bhnc", kf, xf), n=n, axis=-2)[:, :, :length]


def cpu(args) -> list[dict]:
    import torch

    from attnrewrite.lower import fft
    from attnrewrite.lower.fft_plan import split
    from attnrewrite.lower.runner import Runner
    from attnrewrite.lower.targets import find_records, make_target, target_name
    from attnrewrite.timing import median_ms

    target = make_target("llvm")
    records = None if args.untuned else find_records(target)
    rows = []
    rng = np.random.default_rng(0)
    for n in args.sizes:
        x = rng.standard_normal((args.batch, n)).astype(np.float32)
        kernel = fft.rfft_kernel(args.batch, n, "float32")
        runner = Runner(kernel, target, database=None if args.untuned else "auto")
        spec = runner(x)
        ref = np.fft.rfft(x.astype(np.float64))
        err = float(np.abs(spec[..., 0] + 1j * spec[..., 1] - ref).max() / np.abs(ref).max())
        t_tvm = runner.time(x, number=args.number, repeat=args.repeat)
        np_ms = median_ms(lambda x=x: np.fft.rfft(x), args.repeat, args.number)
        xt = torch.from_numpy(x)
        torch_ms = median_ms(lambda xt=xt: torch.fft.rfft(xt), args.repeat, args.number)
        rows.append(
            {
                "n": n,
                "batch": args.batch,
                "dtype": "float32",
                "split": list(split(n)),
                "tvm_ms": t_tvm * 1e3,
                "numpy_ms": np_ms,
                "torch_ms": torch_ms,
                "tvm_gflops": kernel.flops / t_tvm / 1e9,
                "rel_err_vs_numpy_f64": err,
            }
        )
    print(
        f"target {target_name(target)}, TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', '-')}"
        f", torch threads {torch.get_num_threads()}, records: {records or 'none (untuned)'}"
    )
    return rows


def export_cuda(args) -> None:
    """Compile the staged Relax FFT modules (dlight schedules) for a CUDA arch, no GPU."""
    from attnrewrite.lower.fft_plan import split
    from attnrewrite.lower.relax_import import compile_relax
    from attnrewrite.lower.targets import make_target
    from tests.lower.fft_staged import conv_basis_staged_module, irfft_module, rfft_module
    from tests.lower.nvcc import cuda_sources, nvcc_compile

    target = make_target(f"cuda:{args.arch}")
    out = Path(args.export_cuda)
    out.mkdir(parents=True, exist_ok=True)
    b, h, k, length, c = args.conv
    jobs = []
    for n in args.sizes:
        n1, n2 = split(n)
        jobs.append((f"rfft_{args.batch}x{n}", rfft_module(args.batch, n), [[args.batch, n]]))
        spec = [args.batch, n2 // 2 + 1, n1, 2]
        jobs.append((f"irfft_{args.batch}x{n}", irfft_module(args.batch, n), [spec]))
    jobs.append(
        (
            f"conv_{b}x{h}x{k}x{length}x{c}",
            conv_basis_staged_module(b, h, k, length, c),
            [[b, h, k, length], [b, h, k, length, c]],
        )
    )
    index = []
    for name, mod, inputs in jobs:
        executable = compile_relax(mod, target)
        executable.export_library(str(out / f"{name}.so"))
        sources = cuda_sources(executable)
        for source, fatbin in zip(sources, nvcc_compile(executable, target), strict=True):
            digest = hashlib.sha256(source.encode()).hexdigest()
            (out / f"{digest}.fatbin").write_bytes(bytes(fatbin))
            print(f"{name}: {len(source)} chars of CUDA, fatbin {len(fatbin)} bytes")
        index.append({"name": name, "inputs": inputs})
    (out / "index.json").write_text(json.dumps({"arch": args.arch, "kernels": index}, indent=1))


def run_cuda(args) -> list[dict]:
    import tvm
    import tvm.runtime.vm  # not imported by TVM_USE_RUNTIME_LIB=1
    import tvm_ffi

    folder = Path(args.run_cuda)
    if tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is None:
        # TVM_USE_RUNTIME_LIB=1 skips the backend autoload: load the CUDA runtime sidecar.
        import ctypes

        lib_dir = Path(tvm.__file__).parent / "lib"
        ctypes.CDLL(str(lib_dir / "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_GLOBAL)

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _prebuilt(code, *_):
        digest = hashlib.sha256(code.encode()).hexdigest()
        return bytearray((folder / f"{digest}.fatbin").read_bytes())

    import torch

    dev = tvm.cuda()
    index = json.loads((folder / "index.json").read_text())
    rng = np.random.default_rng(0)
    rows = []
    for spec in index["kernels"]:
        name = spec["name"]
        lib = tvm.runtime.load_module(str(folder / f"{name}.so"))
        vm = tvm.runtime.vm.VirtualMachine(lib, dev)
        host = [rng.standard_normal(s).astype(np.float32) for s in spec["inputs"]]
        ins = [tvm.runtime.tensor(a, device=dev) for a in host]
        got = vm["main"](*ins).numpy()
        kind = name.split("_")[0]
        if kind == "rfft":
            bsz, n = spec["inputs"][0]
            ref = np.fft.rfft(host[0].astype(np.float64))
            got = got.reshape(bsz, -1, 2)[:, : n // 2 + 1]
            err = np.abs(got[..., 0] + 1j * got[..., 1] - ref).max() / np.abs(ref).max()
            xt = torch.from_numpy(host[0]).cuda()
            torch_fn = lambda xt=xt: torch.fft.rfft(xt)  # noqa: E731
        elif kind == "irfft":
            bsz, h2, n1, _ = spec["inputs"][0]
            n = got.shape[1]
            half = host[0].reshape(bsz, h2 * n1, 2)[:, : n // 2 + 1].astype(np.float64)
            ref = np.fft.irfft(half[..., 0] + 1j * half[..., 1], n)
            err = np.abs(got - ref).max() / np.abs(ref).max()
            zt = torch.from_numpy(half[..., 0] + 1j * half[..., 1]).to(torch.complex64).cuda()
            torch_fn = lambda zt=zt, n=n: torch.fft.irfft(zt, n)  # noqa: E731
        else:
            ref = conv_reference(host[0], host[1])
            err = np.abs(got - ref).max() / np.abs(ref).max()
            kt = torch.from_numpy(host[0]).cuda()
            xt = torch.from_numpy(host[1]).cuda()
            length = host[0].shape[-1]
            nfft = 1 << (2 * length - 1).bit_length()

            def torch_fn(kt=kt, xt=xt, length=length, nfft=nfft):
                kf = torch.fft.rfft(kt, n=nfft, dim=-1)
                xf = torch.fft.rfft(xt, n=nfft, dim=-2)
                y = torch.fft.irfft(torch.einsum("bhin,bhinc->bhnc", kf, xf), n=nfft, dim=-2)
                return y[:, :, :length]

        evaluator = vm.time_evaluator("main", dev, number=50, repeat=5)
        t_tvm = float(np.median(evaluator(*ins).results))
        torch_fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(5):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(50):
                torch_fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / 50 / 1e3)
        t_torch = float(np.median(times))
        rows.append(
            {
                "kernel": name,
                "tvm_ms": t_tvm * 1e3,
                "torch_ms": t_torch * 1e3,
                "rel_err_vs_numpy_f64": float(err),
                "device": torch.cuda.get_device_name(),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = [k for k in rows[0] if k != "device"]
    lines = ["  ".join(f"{k:>14}" for k in keys)]
    for row in rows:
        cells = []
        for k in keys:
            v = row[k]
            if isinstance(v, float):
                cells.append(f"{v:14.3e}" if k.startswith("rel") else f"{v:14.3f}")
            else:
                cells.append(f"{v!s:>14}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--number", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--untuned", action="store_true", help="ignore tuning records")
    parser.add_argument("--json", type=Path, default=Path("tvm_fft.json"), help="rows go here")
    parser.add_argument("--export-cuda", default=None, metavar="DIR")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--run-cuda", default=None, metavar="DIR")
    parser.add_argument(
        "--conv", type=int, nargs=5, default=[1, 8, 4, 1024, 64], metavar=("B", "H", "K", "L", "C")
    )
    args = parser.parse_args(argv)
    if args.export_cuda:
        export_cuda(args)
        return 0
    rows = run_cuda(args) if args.run_cuda else cpu(args)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
