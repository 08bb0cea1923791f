"""The TE block-scan kernel against numpy float64 and against PolySketch's own scan
(llvm, default schedules, small sizes)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("tvm")

from attnrewrite.lower import scan
from attnrewrite.lower.runner import Runner, compile_kernel
from tests.lower.nvcc import cuda_source, nvcc_compile
from tests.lower.references import block_scan_reference
from tests.lower.relax_kernels import emit_block_scan


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def brute_force(phi_q, phi_k, x, block):
    """far[i] = sum over keys t of whole blocks before query i's block of phi_q[i].phi_k[t] x[t]."""
    sq, skv = phi_q.shape[1], phi_k.shape[1]
    out = np.zeros((phi_q.shape[0], sq, x.shape[-1]))
    for i in range(sq):
        seen = max((i + skv - sq) // block, 0) * block
        out[:, i] = np.einsum("pr,ptr,pte->pe", phi_q[:, i], phi_k[:, :seen], x[:, :seen])
    return out


SHAPES = [  # rows, Sq, Skv, R, E, block
    (2, 64, 64, 4, 3, 16),  # whole blocks
    (2, 37, 37, 5, 3, 8),  # n not a multiple of the block
    (1, 10, 37, 5, 2, 8),  # KV cache: queries are the last 10 positions
    (2, 40, 30, 4, 3, 8),  # more queries than keys: the first ten see nothing
    (1, 5, 5, 3, 2, 8),  # one partial block: nothing before it
]


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_brute_force(shape):
    rows, sq, skv, r, e, block = shape
    rng = np.random.default_rng(sq * skv)
    q, k, x = (rng.standard_normal(s) for s in ((rows, sq, r), (rows, skv, r), (rows, skv, e)))
    want = brute_force(q, k, x, block)
    got = block_scan_reference(q, k, x, block)
    assert np.abs(got - want).max() <= 1e-12 * max(np.abs(want).max(), 1.0)


@pytest.mark.parametrize(("dtype", "tol"), [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("shape", SHAPES[:4])
def test_kernel_matches_reference(shape, dtype, tol):
    rows, sq, skv, r, e, block = shape
    rng = np.random.default_rng(sq + skv)
    q, k, x = (rng.standard_normal(s) for s in ((rows, sq, r), (rows, skv, r), (rows, skv, e)))
    kernel = scan.block_scan_kernel(rows, sq, skv, r, e, block, dtype)
    got = Runner(kernel, "llvm", database=None)(q, k, x)
    assert got.shape == (rows, sq, e) and got.dtype == np.dtype(dtype)
    assert rel(got, block_scan_reference(q, k, x, block)) < tol


def test_single_partial_block_is_zero():
    rng = np.random.default_rng(5)
    q, k, x = rng.standard_normal((1, 5, 3)), rng.standard_normal((1, 5, 3)), np.ones((1, 5, 2))
    got = Runner(scan.block_scan_kernel(1, 5, 5, 3, 2, 8, "float64"), database=None)(q, k, x)
    assert np.array_equal(got, np.zeros((1, 5, 2)))


@pytest.mark.parametrize(("sq", "skv"), [(45, 45), (9, 45)])
def test_kernel_computes_polysketch_far_term(sq, skv):
    """PolySketch's _scan with zero local inputs returns exactly its across-block term, with
    phi' = hq (x) hq features and x = [v, 1]: the kernel on those features must equal it."""
    import torch

    from attnrewrite.methods.polysketch import _scan

    block, r, dv = 16, 4, 3
    gen = torch.Generator().manual_seed(0)
    hq = torch.randn(1, 2, sq, r, generator=gen, dtype=torch.float64)
    hk = torch.randn(1, 2, skv, r, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, skv, dv, generator=gen, dtype=torch.float64)
    x = torch.cat([v, torch.ones(1, 2, skv, 1, dtype=torch.float64)], dim=-1)
    zq, zk = (torch.zeros(1, 2, n, 5, dtype=torch.float64) for n in (sq, skv))
    far = _scan(hq, hk, zq, zk, x, variant="mixed", degree=2, block=block, is_causal=True)
    fq = (hq[..., :, None] * hq[..., None, :]).flatten(-2).reshape(2, sq, r * r).numpy()
    fk = (hk[..., :, None] * hk[..., None, :]).flatten(-2).reshape(2, skv, r * r).numpy()
    want = far.reshape(2, sq, dv + 1).numpy()
    assert np.abs(want).max() > 1.0  # the far term is not trivially zero here
    assert rel(block_scan_reference(fq, fk, x.reshape(2, skv, -1).numpy(), block), want) < 1e-12
    kernel = scan.block_scan_kernel(2, sq, skv, r * r, dv + 1, block, "float64")
    got = Runner(kernel, "llvm", database=None)(fq, fk, x.reshape(2, skv, -1).numpy())
    assert rel(got, want) < 1e-12


def test_emit_block_scan_in_relax():
    import tvm
    from tvm import relax

    rows, sq, skv, r, e, block = 2, 20, 20, 3, 4, 8
    bb = relax.BlockBuilder()
    args = [
        relax.Var(name, relax.TensorType([rows, n, w], "float64"))
        for name, n, w in (("phi_q", sq, r), ("phi_k", skv, r), ("x", skv, e))
    ]
    with bb.function("main", args):
        with bb.dataflow():
            # a Relax op on each side of the kernel: it composes with ordinary graph code
            far = emit_block_scan(bb, bb.emit(relax.op.abs(args[0])), *args[1:], block)
            out = bb.emit_output(bb.emit(relax.op.multiply(far, relax.const(2.0, "float64"))))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target="llvm"), tvm.cpu())
    rng = np.random.default_rng(3)
    q, k, x = (rng.standard_normal(s) for s in ((rows, sq, r), (rows, skv, r), (rows, skv, e)))
    got = vm["main"](*(tvm.runtime.tensor(a) for a in (q, k, x))).numpy()
    assert rel(got, 2 * block_scan_reference(np.abs(q), k, x, block)) < 1e-12


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="dtype"):
        scan.block_scan_kernel(1, 8, 8, 2, 2, 4, "float16")
    with pytest.raises(ValueError, match="positive"):
        scan.block_scan_kernel(1, 8, 8, 2, 2, 0)


@pytest.mark.parametrize("arch", ["sm_90"])
def test_cuda_codegen_compiles(arch):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH")
    kernel = scan.block_scan_kernel(8, 1000, 1000, 64, 64, 256)
    executable = compile_kernel(kernel, f"cuda:{arch}", database=None)
    assert "__global__" in cuda_source(executable)
    (binary,) = nvcc_compile(executable, f"cuda:{arch}")
    assert len(binary) > 1000


def test_shipped_records_apply_and_match():
    """The records shipped for this machine's target schedule the benchmark's n = 1k shape,
    and the tuned kernel still computes the scan."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from attnrewrite.lower import targets

    target = targets.make_target("llvm")
    folder = targets.SHIPPED / targets.target_name(target)
    if not (folder / "database_tuning_record.json").is_file():
        pytest.skip(f"no shipped records for {targets.target_name(target)}")
    db = ms.database.JSONDatabase(work_dir=str(folder), module_equality="structural")
    kernel = scan.block_scan_kernel(8, 1024, 1024, 64, 64, 256)
    if ms.tir_integration.compile_tir(db, tvm.IRModule({kernel.name: kernel.func}), target) is None:
        pytest.skip(f"no scan record for {targets.target_name(target)}")
    rng = np.random.default_rng(7)
    q, k = rng.standard_normal((2, 8, 1024, 64))
    x = rng.standard_normal((8, 1024, 64))
    got = Runner(kernel, target, database=db)(q, k, x)
    assert rel(got, block_scan_reference(q, k, x, 256)) < 1e-5
