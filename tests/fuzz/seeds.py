"""The models the fuzz cases start from: every hand-built case, a sample of the exported
corpus, chains of layers, and saved ExportedPrograms.

The .pt2 seeds are exported in a separate interpreter (`python -m tests.fuzz.seeds DIR`):
the fuzz parent forks a child per case, and a parent that has run torch code (threads)
must not fork.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.corpus.chain import chained_layers
from tests.corpus.handbuilt import all_cases

CORPUS = Path(__file__).parents[1] / "corpus" / "exported"
CORPUS_SAMPLE = (
    "gpt2_sdpa_dynamo18",
    "llama_eager_ts17",
    "bert_sdpa_ts17",
    "t5_eager_dynamo18",
    "hw_manual_padding_ts17",
    "hw_sdpa_causal_dynamo23",
    "qwen2sw_eager_dynamo18",
    "hw_fp16_dynamo18",
)
PT2_SEEDS = ("causal", "dynamic", "sdpa")


@functools.cache
def onnx_seeds() -> dict[str, bytes]:
    """name -> serialized ModelProto."""
    seeds = {case.name: case.model.SerializeToString() for case in all_cases()}
    for name in CORPUS_SAMPLE:
        seeds[name] = (CORPUS / f"{name}.onnx").read_bytes()
    for n in (2, 3):
        seeds[f"chain{n}"] = chained_layers(n).SerializeToString()
    return seeds


@functools.cache
def pt2_seeds() -> dict[str, bytes]:
    """name -> a torch.export.save archive, exported once per process."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "tests.fuzz.seeds", folder],
            check=True,
            cwd=Path(__file__).parents[2],
            capture_output=True,
        )
        return {name: (Path(folder) / f"{name}.pt2").read_bytes() for name in PT2_SEEDS}


def export_pt2_seeds(folder: Path) -> None:
    import torch

    from tests.torch_path.models import HandAttention

    torch.manual_seed(0)
    x = torch.randn(2, 9, 8)
    causal = HandAttention(dim=8, heads=2, mask="tril").eval()
    torch.export.save(torch.export.export(causal, (x,)), str(folder / "causal.pt2"))
    seq = torch.export.Dim("seq", min=2, max=15)
    dynamic = torch.export.export(causal, (x,), dynamic_shapes=({1: seq},))
    torch.export.save(dynamic, str(folder / "dynamic.pt2"))
    sdpa = HandAttention(dim=8, heads=2, mask="none", sdpa=True).eval()
    torch.export.save(torch.export.export(sdpa, (x,)), str(folder / "sdpa.pt2"))


if __name__ == "__main__":
    export_pt2_seeds(Path(sys.argv[1]))
