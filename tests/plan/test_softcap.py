"""The planner measures a soft-capped block's candidates with its cap: the one-node models it
runs read the block's `softcap`, so exact measures no error and a window over every key none
either, where a node without the cap would be far off."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import pytest
import torch

from attnrewrite.methods import exact
from attnrewrite.plan.calibrate import BlockOperands
from attnrewrite.plan.candidates import Candidate
from attnrewrite.plan.measure import Bench
from attnrewrite.substitute.signature import Signature

CAP, SCALE = 1.5, 0.3


def _block(softcap: float | None) -> BlockOperands:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (2 * torch.randn(1, 2, 24, 8, generator=gen, dtype=torch.float64) for _ in "qkv")
    out = exact.attention(q, k, v, scale=SCALE, is_causal=True, softcap=CAP)
    sig = Signature(4, ir.DataType.FLOAT, "none", False, True, False, False, False, False, 8)
    operands = (x.float().numpy() for x in (q, k, v))
    return BlockOperands(0, *operands, None, out.float().numpy(), sig, SCALE, None, softcap=softcap)


@pytest.mark.parametrize(
    "candidate", [Candidate("exact"), Candidate("window", {"width": 32, "sinks": 0})]
)
def test_candidates_are_measured_with_the_blocks_cap(candidate: Candidate) -> None:
    block = _block(CAP)
    capped = dataclasses.replace(
        block, signature=dataclasses.replace(block.signature, softcap=True)
    )
    assert Bench(opset=18).errors(candidate, capped).max() < 1e-5
    assert Bench(opset=18).errors(candidate, _block(None)).max() > 1e-2  # no cap: off
