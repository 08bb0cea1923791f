"""Sliding windows wider than the lengths a mask is first evaluated at (6 and 9).

Real models use windows of 512 or 4096: at short lengths such a mask is plain causal, so
the finder also evaluates it, from its own ancestry, at a length beyond any window its
constants could hold, and the exact rewrite must keep the window there.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from attnrewrite.match import MaskKind
from attnrewrite.patterns.masks import MAX_PROBE, merge, probe_length
from attnrewrite.verify import tolerance_for
from tests.conftest import find_and_rewrite, max_relative_error, run
from tests.corpus.handbuilt import add_bias, attend, qkv_heads, simple_case, sliding_bias


def _windowed(window: int):
    return simple_case(
        f"sliding_{window}",
        {},
        seed=window,
        body=lambda b, x: attend(b, *qkv_heads(b, x), mask=add_bias(sliding_bias(window))),
        note="",
    )


@pytest.mark.parametrize("window", [512, 4096])
def test_a_real_models_window_is_found(window: int) -> None:
    case = _windowed(window)
    found, result, rewritten = find_and_rewrite(case.model)
    (match,) = found.matches
    assert (match.mask, match.window) == (MaskKind.SLIDING_WINDOW, window)
    assert not result.failed
    if window == 512:  # the exact rewrite keeps the window where it matters
        feeds = case.feeds(window + 40)
        error = max_relative_error(run(case.model, feeds), run(rewritten, feeds))
        assert error <= tolerance_for(ir.from_proto(case.model))


def test_a_window_too_wide_to_look_for_keeps_the_whole_mask() -> None:
    case = _windowed(MAX_PROBE + 10)
    found, _, rewritten = find_and_rewrite(case.model)
    (match,) = found.matches
    assert match.mask == MaskKind.CAUSAL_BIAS and match.window is None
    assert "mask:window-unchecked" in match.variant and match.bias is not None
    feeds = case.feeds(9)
    assert max_relative_error(run(case.model, feeds), run(rewritten, feeds)) <= 1e-5


def test_probe_length_reads_integer_widths_and_stored_tables() -> None:
    small = [np.array(1), np.array([0], np.int64), np.array(-1.0e4, np.float32)]
    assert probe_length(small, 9) is None  # nothing wider than what was evaluated
    assert probe_length([*small, np.array(-512)], 9) == 514  # Greater(j, i - 512)
    assert probe_length([np.array(2**62)], 9) is None  # a Slice end, not a window
    assert probe_length([np.ones((1, 1, 64, 64), bool)], 9) == 64  # a causal buffer


def test_merge_reads_causal_at_short_lengths_as_the_window_seen_beyond() -> None:
    causal, window = (MaskKind.CAUSAL, None), (MaskKind.SLIDING_WINDOW, 20)
    assert merge([(*causal, 6), (*causal, 9), (*window, 22)]) == window
    assert merge([(*causal, 6), (*window, 22), (*window, 30)]) == window
    assert merge([(*causal, 6), (*causal, 30), (*window, 22)]) == (MaskKind.BIAS, None)
    band = (MaskKind.BIAS, None)  # a bidirectional band: no mask at short lengths
    assert merge([(MaskKind.NONE, None, 6), (*band, 22)]) == band
