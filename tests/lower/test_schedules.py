"""The default CPU schedules: every einsum form the matmul rule takes (packed or contiguous B,
shapes that need padding, float64, batch broadcast, an epilogue) and the fallback's elementwise
and reduction blocks compute what numpy float64 computes, and really are scheduled (a parallel
loop and a vectorised loop in the lowered function); a rule that raises leaves its function
unscheduled instead of failing the build."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm
import tvm_ffi
from tvm import s_tir, te, tirx
from tvm.s_tir import dlight as dl

from attnrewrite.lower import schedules
from tests.lower.prim import TARGET, prim_func, run


def loop_kinds(func: tirx.PrimFunc) -> set:
    kinds = set()

    def visit(node: tirx.For) -> None:
        kinds.add(node.kind)

    tvm_ffi.structural_walk(func.body, [(tirx.For, visit)], order="post")
    return kinds


def scheduled(func: tirx.PrimFunc, rule: dl.ScheduleRule) -> tirx.PrimFunc:
    """``rule`` alone (no fallback behind it) on ``func``."""
    mod = tvm.IRModule({"main": func})
    with TARGET:
        out = dl.ApplyDefaultSchedule(rule)(mod)["main"]
    assert out.attrs is not None and out.attrs.get("tirx.is_scheduled") == 1, "rule did not apply"
    return out


MATMULS = [  # A shape, B shape, B transposed ([.., J, K]), dtype, epilogue
    ((1, 2, 3, 65, 40), (1, 2, 3, 40, 96), False, "float32", False),  # B rows contiguous
    ((2, 70, 24), (2, 33, 24), True, "float32", True),  # B packed; I, J padded; epilogue
    ((3, 17, 9), (3, 9, 50), False, "float64", False),  # float64, J padded
    ((20, 24, 16), (20, 40, 16), True, "float32", True),  # many batches: B packed per batch
]


@pytest.mark.parametrize("case", MATMULS)
def test_matmul_rule_matches_numpy(case):
    shape_a, shape_b, transposed, dtype, epilogue = case
    a = te.placeholder(shape_a, dtype, name="a")
    b = te.placeholder(shape_b, dtype, name="b")
    k = te.reduce_axis((0, shape_a[-1]), name="k")
    cols = shape_b[-2] if transposed else shape_b[-1]

    def product(*ix):
        lead, i, j = ix[:-2], ix[-2], ix[-1]
        right = b[(*lead, j, k)] if transposed else b[(*lead, k, j)]
        return te.sum(a[(*lead, i, k)] * right, axis=k)

    c = te.compute((*shape_a[:-1], cols), product, name="c")
    out = te.compute(c.shape, lambda *ix: tirx.exp(c(*ix) * 0.01), name="e") if epilogue else c
    func = scheduled(prim_func([a, b, out]), schedules.CpuMatmul())
    assert {tirx.ForKind.PARALLEL, tirx.ForKind.VECTORIZED} <= loop_kinds(func)
    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal(shape_a).astype(dtype), rng.standard_normal(shape_b).astype(dtype)
    want = xa.astype(np.float64) @ (np.swapaxes(xb, -1, -2) if transposed else xb)
    if epilogue:
        want = np.exp(want * 0.01)
    got = run(func, [xa, xb], want.shape, dtype)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert np.abs(got - want).max() <= tol * np.abs(want).max()


def test_matmul_rule_declines_what_is_not_a_matmul():
    x = te.placeholder((4, 32), "float32", name="x")
    r = te.reduce_axis((0, 32), name="r")
    total = te.compute((4,), lambda i: te.sum(x[i, r], axis=r), name="total")
    assert schedules.CpuMatmul().apply(prim_func([x, total]), TARGET, False) is None


def test_fallback_parallelises_elementwise_and_reduction_blocks():
    """A softmax: row max and row sum (reductions, parallel rows) and the elementwise blocks
    (parallel and vectorised)."""
    x = te.placeholder((6, 48), "float32", name="x")
    r = te.reduce_axis((0, 48), name="r")
    top = te.compute((6,), lambda i: te.max(x[i, r], axis=r), name="top")
    e = te.compute((6, 48), lambda i, j: tirx.exp(x[i, j] - top[i]), name="e")
    s = te.reduce_axis((0, 48), name="s")
    total = te.compute((6,), lambda i: te.sum(e[i, s], axis=s), name="total")
    y = te.compute((6, 48), lambda i, j: e[i, j] / total[i], name="y")
    func = scheduled(prim_func([x, y]), schedules.CpuFallback())
    assert {tirx.ForKind.PARALLEL, tirx.ForKind.VECTORIZED} <= loop_kinds(func)
    xs = np.random.default_rng(1).standard_normal((6, 48)).astype("float32")
    want = np.exp(xs - xs.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    assert np.abs(run(func, [xs], (6, 48), "float32") - want).max() <= 1e-6


def test_a_rule_that_raises_leaves_the_function_unscheduled(monkeypatch):
    class Raises(dl.ScheduleRule):
        def apply(self, func, target, tunable):
            raise s_tir.ScheduleError("not this one")

    monkeypatch.setattr(schedules, "_cpu_rules", lambda: [Raises()])
    x = te.placeholder((8,), "float32", name="x")
    y = te.compute((8,), lambda i: x[i] * 2.0, name="y")
    mod = schedules.schedule_cpu(tvm.IRModule({"main": prim_func([x, y])}), TARGET)
    assert "tirx.is_scheduled" not in (mod["main"].attrs or {})
    xs = np.arange(8, dtype="float32")
    assert np.array_equal(run(mod["main"], [xs], (8,), "float32"), 2 * xs)
