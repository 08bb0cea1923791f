"""Each operand rule on an ONNX graph, on an FX graph, and on a spelling it must not match."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from attnrewrite.patterns.view import ONNX
from attnrewrite.rules.operands import (
    Layout,
    attention_operands,
    constant_scalar,
    key_operand,
    strip_scale,
    ungroup_kv,
    upstream_scale,
)
from attnrewrite.torch.view import FX
from tests.rules.graphs import fx_input, fx_output, onnx_values

B, H, S, D = 2, 3, 5, 4
TWO, HALF = np.array(2.0, np.float32), np.array(0.5, np.float32)


def _numbers(view, factors) -> list[tuple[float, bool]]:
    return [(constant_scalar(view, f.value), f.divide) for f in factors]


# --- scale: x / c -> x, 1/c;  x * c -> x, c;  c * x -> x, c -------------------------------------


def test_scale_onnx_peels_div_and_both_mul_orders() -> None:
    values = onnx_values(
        [
            helper.make_node("Div", ["q", "two"], ["a"]),
            helper.make_node("Mul", ["a", "half"], ["b"]),
            helper.make_node("Mul", ["half", "b"], ["out"]),
        ],
        {"q": [B, H, S, D]},
        {"two": TWO, "half": HALF},
    )
    source, factors = strip_scale(ONNX, values["out"])
    assert source is values["q"]
    assert _numbers(ONNX, factors) == [(0.5, False), (0.5, False), (2.0, True)]
    assert [f.product.name for f in factors] == ["out", "b", "a"]


def test_scale_onnx_takes_a_runtime_scalar_the_finder_evaluates() -> None:
    values = onnx_values(
        [helper.make_node("Mul", ["q", "s"], ["out"])], {"q": [B, H, S, D], "s": [1]}
    )
    source, [factor] = strip_scale(ONNX, values["out"])
    assert source is values["q"] and factor.value is values["s"]
    assert constant_scalar(ONNX, factor.value) is None


def test_scale_fx_peels_constants() -> None:
    out = fx_output(lambda q: 0.5 * ((q / 2.0) * torch.full([], 3.0)), torch.randn(B, H, S, D))
    source, factors = strip_scale(FX, out)
    assert source is fx_input(out, 0)
    assert _numbers(FX, factors) == [(0.5, False), (3.0, False), (2.0, True)]


def test_scale_must_not_match_a_tensor_product() -> None:
    values = onnx_values([helper.make_node("Mul", ["q", "w"], ["out"])], {"q": [B, S], "w": [B, S]})
    assert strip_scale(ONNX, values["out"]) == (values["out"], [])
    out = fx_output(lambda q, w: q * w, torch.randn(B, S), torch.randn(B, S))
    assert strip_scale(FX, out) == (out, [])  # FX: a runtime value is no scale (not evaluated)
    out = fx_output(lambda q, s: q * s, torch.randn(B, S), torch.randn(1))
    assert strip_scale(FX, out) == (out, [])


def test_upstream_scale_is_reported_through_layout_ops() -> None:
    values = onnx_values(
        [
            helper.make_node("Mul", ["x", "half"], ["a"]),
            helper.make_node("Transpose", ["a"], ["out"], perm=[0, 2, 1, 3]),
        ],
        {"x": [B, S, H, D]},
        {"half": HALF},
    )
    assert _numbers(ONNX, upstream_scale(ONNX, values["out"])) == [(0.5, False)]
    assert upstream_scale(ONNX, values["a"]) == []  # the scale itself is no layout op


# --- K^T ----------------------------------------------------------------------------------------

KEY_CASES = {  # perm of Transpose(x) -> (layout, tag, source is x)
    (0, 1, 3, 2): (Layout.BHSD, "k:transpose", True),
    (0, 2, 3, 1): (Layout.BSHD, "k:transpose-bshd", True),
    (1, 0, 2, 3): (Layout.BHDS, "k:stored-transposed", False),  # must not match: heads swapped
}


@pytest.mark.parametrize("perm", KEY_CASES)
def test_key_onnx_transposes(perm: tuple[int, ...]) -> None:
    layout, tag, from_x = KEY_CASES[perm]
    values = onnx_values(
        [
            helper.make_node("Transpose", ["x"], ["kt"], perm=list(perm)),
            helper.make_node("Mul", ["kt", "half"], ["out"]),
        ],
        {"x": [B, H, S, D]},
        {"half": HALF},
    )
    key = key_operand(ONNX, values["out"])
    assert (key.layout, key.tag) == (layout, tag)
    assert key.value is (values["x"] if from_x else values["kt"])
    assert _numbers(ONNX, key.factors) == [(0.5, False)]


@pytest.mark.parametrize("perm", KEY_CASES)
def test_key_fx_transposes_and_permutes(perm: tuple[int, ...]) -> None:
    layout, tag, from_x = KEY_CASES[perm]
    out = fx_output(lambda k: k.permute(*perm) / 2.0, torch.randn(B, H, S, D))
    key = key_operand(FX, out)
    assert (key.layout, key.tag) == (layout, tag)
    x, kt = fx_input(out, 0), out.args[0]
    assert key.value is (x if from_x else kt)
    assert _numbers(FX, key.factors) == [(2.0, True)]
    assert key.through == ((out, kt) if from_x else (out,))


def test_key_two_transposes_compose() -> None:
    values = onnx_values(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", ["t"], ["out"], perm=[0, 2, 3, 1]),
        ],
        {"x": [B, H, S, D]},
    )
    key = key_operand(ONNX, values["out"])
    assert (key.value, key.layout) == (values["x"], Layout.BHSD)
    out = fx_output(lambda k: k.transpose(1, 2).permute(0, 2, 3, 1), torch.randn(B, H, S, D))
    key = key_operand(FX, out)
    assert (key.value, key.layout) == (fx_input(out, 0), Layout.BHSD)


def _merged(k: torch.Tensor, target: tuple[int, ...]) -> torch.Tensor:
    return k.reshape(B * H, S, D).transpose(1, 2).reshape(*target)


@pytest.mark.parametrize(("target", "matches"), [((B, H, D, S), True), ((B, H, S, D), False)])
def test_key_reshape_transpose_reshape(target: tuple[int, ...], matches: bool) -> None:
    values = onnx_values(
        [
            helper.make_node("Reshape", ["k", "flat"], ["a"]),
            helper.make_node("Transpose", ["a"], ["b"], perm=[0, 2, 1]),
            helper.make_node("Reshape", ["b", "split"], ["out"]),
        ],
        {"k": [B, H, S, D]},
        {"flat": np.array([B * H, S, D]), "split": np.array(target)},
    )
    key = key_operand(ONNX, values["out"])
    assert key.value is (values["k"] if matches else values["out"])
    assert key.tag == ("k:reshape-transpose-reshape" if matches else "k:stored-transposed")
    out = fx_output(lambda k: _merged(k, target), torch.randn(B, H, S, D))
    key = key_operand(FX, out)
    assert key.value is (fx_input(out, 0) if matches else out)
    assert len(key.through) == (3 if matches else 0)


# --- grouped-query K, V ---------------------------------------------------------------------------

G = 2


def _repeat_nodes(name: str, axis: int) -> list:
    return [
        helper.make_node("Unsqueeze", [name, "axes"], [f"{name}_u"]),
        helper.make_node("Expand", [f"{name}_u", "grouped"], [f"{name}_e"]),
        helper.make_node("Reshape", [f"{name}_e", "merged"], [f"{name}_r"]),
    ], np.array([axis])


@pytest.mark.parametrize(("axis", "matches"), [(2, True), (-3, True), (1, False)])
def test_repeat_kv_onnx(axis: int, matches: bool) -> None:
    k_nodes, axes = _repeat_nodes("k", axis)
    v_nodes, _ = _repeat_nodes("v", axis)
    grouped = [B, H, G, S, D] if axis != 1 else [B, G, H, S, D]
    values = onnx_values(
        [*k_nodes, *v_nodes, helper.make_node("Add", ["k_r", "v_r"], ["out"])],
        {"k": [B, H, S, D], "v": [B, H, S, D]},
        {"axes": axes, "grouped": np.array(grouped), "merged": np.array([B, H * G, S, D])},
    )
    found = ungroup_kv(ONNX, values["k_r"], values["v_r"])
    assert found == ((values["k"], values["v"]) if matches else None)


def _repeat(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, None].expand(B, H, G, S, D).reshape(B, H * G, S, D)


def test_repeat_kv_fx_expand_and_repeat_interleave() -> None:
    k, v = torch.randn(B, H, S, D), torch.randn(B, H, S, D)
    out = fx_output(lambda k, v: _repeat(k) + v.repeat_interleave(G, dim=1), k, v)
    k_r, v_r = out.args
    assert ungroup_kv(FX, k_r, v_r) == (fx_input(out, 0), fx_input(out, 1))


def test_repeat_kv_must_not_match_different_groups_or_axes() -> None:
    k, v = torch.randn(B, H, S, D), torch.randn(B, H, S, D)
    out = fx_output(
        lambda k, v: _repeat(k) + v.repeat_interleave(G, dim=1).repeat(1, 1, 1, 1), k, v
    )
    assert ungroup_kv(FX, *out.args) is None  # v is not a plain repeat
    out = fx_output(
        lambda k, v: (
            k.repeat_interleave(G, dim=2) @ v.repeat_interleave(G, dim=2).transpose(-1, -2)
        ),
        k,
        v,
    )
    assert ungroup_kv(FX, out.args[0], out.args[1].args[0]) is None  # repeated along the sequence
    out = fx_output(lambda k, v: _repeat(k).sum() + v.repeat_interleave(3, dim=1).sum(), k, v)
    k_sum, v_sum = out.args
    assert ungroup_kv(FX, k_sum.args[0], v_sum.args[0]) is None  # groups 2 and 3
    assert ungroup_kv(FX, k_sum.args[0], k_sum.args[0]) == (fx_input(out, 0),) * 2


# --- all three: q @ kt and p @ v ------------------------------------------------------------------


def test_operands_onnx_scale_transpose_and_repeat() -> None:
    k_nodes, axes = _repeat_nodes("k", 2)
    v_nodes, _ = _repeat_nodes("v", 2)
    values = onnx_values(
        [
            helper.make_node("Mul", ["q", "half"], ["qs"]),
            *k_nodes,
            *v_nodes,
            helper.make_node("Transpose", ["k_r"], ["kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["qs", "kt"], ["out"]),
        ],
        {"q": [B, H * G, S, D], "k": [B, H, S, D], "v": [B, H, S, D]},
        {
            "half": HALF,
            "axes": axes,
            "grouped": np.array([B, H, G, S, D]),
            "merged": np.array([B, H * G, S, D]),
        },
    )
    found = attention_operands(ONNX, values["qs"], values["kt"], values["v_r"])
    assert (found.q, found.key.value, found.v, found.kv_repeat) == (
        values["q"],
        values["k"],
        values["v"],
        True,
    )
    assert (found.key.layout, _numbers(ONNX, found.q_factors)) == (Layout.BHSD, [(0.5, False)])


def test_operands_fx_and_a_layout_the_caller_cannot_take() -> None:
    q, k, v = torch.randn(B, H * G, S, D), torch.randn(B, H, S, D), torch.randn(B, H, S, D)
    out = fx_output(
        lambda q, k, v: (q / 2.0) @ _repeat(k).transpose(-1, -2) + _repeat(v).sum(), q, k, v
    )
    matmul, v_sum = out.args
    found = attention_operands(FX, *matmul.args, v_sum.args[0])
    assert (found.q, found.key.value, found.v) == (
        fx_input(out, 0),
        fx_input(out, 1),
        fx_input(out, 2),
    )
    assert found.kv_repeat and _numbers(FX, found.q_factors) == [(2.0, True)]
    bshd = fx_output(lambda q, k: q @ k.permute(0, 2, 3, 1), q, torch.randn(B, S, H * G, D))
    found = attention_operands(FX, *bshd.args, q, layouts=(Layout.BHSD, Layout.BHDS))
    assert (found.key.layout, found.key.value, found.kv_repeat) == (
        Layout.BHDS,
        bshd.args[1],
        False,
    )
    assert attention_operands(FX, *bshd.args, q).key.layout == Layout.BSHD
