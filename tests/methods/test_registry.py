"""The registry: names, parameters read from the code, CLI coercion, validation, capabilities."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch

from attnrewrite import methods
from attnrewrite.methods import COMMON, METHODS, get

from .test_inputs import F64, rand_qkv


def test_every_method_module_is_registered():
    assert set(METHODS) == {
        "exact",
        "convbasis",
        "polysketch",
        "multipole",
        "window",
        "verticalslash",
    }
    for name, method in METHODS.items():
        assert method.attention is getattr(methods, name).attention
        assert method.summary


def test_parameters_mirror_the_signatures():
    """The registry declares the parameters without torch; the signatures repeat them."""
    for method in METHODS.values():
        sig = inspect.signature(method.attention).parameters
        hints = typing.get_type_hints(method.attention)
        fitted = [f.name for f in method.fitted]
        assert [p.name for p in method.params] == [
            n for n in sig if n not in COMMON and n not in fitted
        ]
        assert all(sig[name].default is None for name in fitted)
        assert fitted == [n for n in sig if n in fitted]  # in the declared order
        for p in method.params:
            assert p.default == sig[p.name].default
            assert hints[p.name] is p.kind and isinstance(p.default, p.kind) and p.help
            method.validate(**method.resolve())  # the defaults are valid


def test_resolve_coerces_cli_strings_and_validates():
    assert get("multipole").resolve({"block": "32", "levels": "2"}) == {
        "block": 32,
        "coarse": 1,
        "levels": 2,
        "sinks": 4,
    }
    assert get("convbasis").resolve({"tol": "0.5"})["tol"] == 0.5
    with pytest.raises(ValueError, match="power of two"):
        get("polysketch").resolve({"block": "100"})
    with pytest.raises(ValueError, match="not a valid int"):
        get("polysketch").resolve({"block": "1.5"})
    with pytest.raises(ValueError, match="unknown parameter"):
        get("window").resolve({"window": 3})
    with pytest.raises(ValueError, match="unknown attention method"):
        get("linformer")


def test_calling_through_the_registry_equals_calling_the_module():
    q, k, v = rand_qkv()
    out = get("convbasis")(q, k, v, scale=0.5, is_causal=True, bases="3")
    ref = methods.convbasis.attention(q, k, v, scale=0.5, is_causal=True, bases=3)
    assert torch.equal(out, ref)


def test_capability_flags_tell_the_truth():
    q, k, v = rand_qkv(sq=10, skv=16)
    alibi = -(torch.arange(10)[:, None] + 6 - torch.arange(16)).abs().to(F64)
    for method in METHODS.values():
        for flag, kwargs in (("full_bias", {"bias": alibi}), ("window", {"window": 4})):
            if getattr(method, flag):
                method(q, k, v, scale=0.5, is_causal=True, **kwargs)
            else:
                with pytest.raises(ValueError):
                    method(q, k, v, scale=0.5, is_causal=True, **kwargs)
        if method.bidirectional:
            method(q, k, v, scale=0.5, is_causal=False)
        else:
            with pytest.raises(ValueError, match="causal only"):
                method(q, k, v, scale=0.5, is_causal=False)


@pytest.mark.parametrize(
    ("name", "params"),
    [("multipole", {"block": 8}), ("convbasis", {"bases": 6}), ("window", {"width": 5})],
)
@pytest.mark.parametrize("causal", [True, False])
def test_exact_up_to_is_the_length_up_to_which_a_method_is_exact(name, params, causal):
    method = get(name)
    resolved = method.resolve(params)
    limit = int(method.exact_up_to(resolved))
    beyond = limit + 1 + (resolved["sinks"] if name == "window" and causal else 0)
    exact = get("exact")
    for n, is_exact in ((limit, True), (beyond, False)):
        q, k, v = rand_qkv(sq=n, skv=n)
        out = method(q, k, v, scale=0.5, is_causal=causal, **params)
        ref = exact(q, k, v, scale=0.5, is_causal=causal)
        error = float((out - ref).norm() / ref.norm())
        assert (error < 1e-12) == is_exact, (n, error)


def test_exact_up_to_for_exact_and_polysketch():
    assert get("exact").exact_up_to({}) == float("inf")
    assert get("polysketch").exact_up_to(get("polysketch").resolve()) is None
