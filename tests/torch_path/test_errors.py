"""Bad input gets one clear line (AttnRewriteError), naming the part that failed."""

from __future__ import annotations

import pytest
import torch

import attnrewrite.torch as art
from tests.torch_path.models import Branchy, HandAttention


def test_untraceable_model_names_the_failing_line() -> None:
    with pytest.raises(art.AttnRewriteError) as info:
        art.rewrite(Branchy(), (torch.randn(2, 8),))
    text = str(info.value)
    assert "\n" not in text
    assert "cannot trace Branchy" in text
    assert "models.py" in text and "if x.sum() > 0:" in text
    assert "strict:" in text and "non-strict:" in text  # both modes were tried


def test_unknown_method_and_parameter() -> None:
    x = torch.randn(1, 3, 8)
    with pytest.raises(art.AttnRewriteError, match="unknown attention method"):
        art.rewrite(HandAttention(), (x,), "fastest")
    with pytest.raises(art.AttnRewriteError, match="unknown parameter"):
        art.rewrite(HandAttention(), (x,), "multipole", bases=3)


def test_not_a_module() -> None:
    with pytest.raises(art.AttnRewriteError, match=r"expected a torch\.nn\.Module"):
        art.rewrite(lambda x: x, (torch.randn(2),))
