"""The CPU legalization of float32 exp and softmax (a polynomial exponential) against numpy
float64, masked logits (-inf) included; float64 keeps the exact exponential."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm
from tvm import relax

from attnrewrite.lower.relax_import import compile_relax, legalize
from attnrewrite.lower.targets import make_target


def module(op, dtype: str, shape: tuple[int, ...]) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(shape), dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(op(x))
        bb.emit_func_output(y)
    return bb.get()


def built(op, dtype: str, shape: tuple[int, ...]):
    vm = relax.VirtualMachine(compile_relax(module(op, dtype, shape), "llvm"), tvm.cpu())
    return lambda array: vm["main"](tvm.runtime.tensor(array)).numpy()


def test_llvm_legalizes_float32_only_with_the_polynomial_exponential():
    def names(op, dtype: str) -> set[str]:
        legal = legalize(module(op, dtype, (4, 8)), make_target("llvm"))
        return {gvar.name_hint for gvar in legal.functions} - {"main"}

    softmax = lambda x: relax.op.nn.softmax(x, axis=-1)  # noqa: E731
    assert names(relax.op.exp, "float32") == {"fast_exp"}
    assert names(softmax, "float32") == {"fast_softmax"}
    assert names(relax.op.exp, "float64") == {"exp"}
    assert names(softmax, "float64") == {"softmax"}


def test_float32_exp_within_a_few_ulp():
    xs = np.random.default_rng(0).uniform(-80, 10, (64, 1000)).astype("float32")
    got = built(relax.op.exp, "float32", xs.shape)(xs)
    want = np.exp(xs.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 5e-7


def test_float32_softmax_with_masked_logits():
    rng = np.random.default_rng(1)
    xs = (4 * rng.standard_normal((6, 40, 130))).astype("float32")
    xs[:, :, 100:] = -np.inf  # masked keys
    got = built(lambda x: relax.op.nn.softmax(x, axis=-1), "float32", xs.shape)(xs)
    ref = xs.astype(np.float64)
    want = np.exp(ref - ref.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    assert np.max(np.abs(got - want)) < 1e-6
    assert np.max(got[:, :, 100:]) < 1e-30


def test_float64_keeps_the_exact_exponential():
    xs = np.random.default_rng(2).uniform(-30, 30, (8, 100))
    got = built(relax.op.exp, "float64", xs.shape)(xs)
    assert np.max(np.abs(got - np.exp(xs)) / np.exp(xs)) < 1e-14
