"""Rendering of report dicts: Markdown numbers and warnings, a self-contained HTML page that
loads in headless chromium without errors, and the three files written atomically."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from attnrewrite.report import render
from attnrewrite.report.render import WARNING, render_html, render_markdown, write_report

HEADS = [
    [0.011, 0.012, 0.0105, 0.013],
    [0.021, 0.024, 0.0198, 0.022],
    [0.043, 0.21, 0.051, 0.047],  # block 2 exceeds 0.1 through head 1
    [0.031, 0.029, 0.035, 0.033],
]
BLOCK_ERRORS = [0.0118, 0.0214, 0.1375, 0.0325]
PLOTS = 6  # block bars, block line, heads heatmap, sweep error, sweep latency, latency bars


def make_report() -> dict:
    """A realistic report: 2 outputs (one logits), 4 blocks with heads, a 3-point sweep."""
    blocks = [
        {
            "index": i,
            "name": f"/model/layers.{i}/self_attn/Softmax",
            "output": f"/model/layers.{i}/self_attn/MatMul_1_output_0",
            "method": "polysketch",
            "params": {"degree": 4, "sketch_size": 64},
            "fallback": None,
            "relative_l2": BLOCK_ERRORS[i],
            "max_abs": BLOCK_ERRORS[i] * 3.1,
            "heads": HEADS[i],
        }
        for i in range(4)
    ]
    return {
        "schema_version": 1,
        "tool": {"name": "attnrewrite", "version": "0.1.0"},
        "environment": {
            "python": "3.11.7",
            "onnx": "1.17.0",
            "onnxruntime": "1.20.1",
            "platform": "Linux-x86_64",
            "cpu_count": 2,
        },
        "models": {"original": "tiny_lm.onnx", "rewritten": "tiny_lm.polysketch.onnx"},
        "inputs": {
            "source": "generated",
            "path": None,
            "batch": 2,
            "seq_len": 128,
            "names": ["input_ids", "attention_mask"],
        },
        "method": {"name": "polysketch", "params": {"degree": 4, "sketch_size": 64}},
        "outputs": [
            {
                "name": "logits",
                "shape": [2, 128, 1000],
                "max_abs": 0.8123,
                "relative_l2": 0.04567,
                "cosine": 0.998957,
                "finite": True,
                "logits": {
                    "top1_agreement": 0.9844,
                    "kl_original_rewritten": 0.00312,
                    "perplexity_original": 12.345,
                    "perplexity_rewritten": 12.789,
                },
            },
            {
                "name": "last_hidden_state",
                "shape": [2, 128, 64],
                "max_abs": 0.2071,
                "relative_l2": 0.03125,
                "cosine": 0.999512,
                "finite": True,
                "logits": None,
            },
        ],
        "blocks": blocks,
        "latency": {
            "original_ms": 12.3,
            "rewritten_ms": 8.09,
            "speedup": 1.5204,
            "repeats": 20,
            "threads": 2,
        },
        "sweep": {
            "param": "sketch_size",
            "points": [
                {
                    "value": 16,
                    "outputs_relative_l2": 0.0912,
                    "top1_agreement": 0.9531,
                    "blocks_relative_l2": [0.02, 0.04, 0.25, 0.06],
                    "rewritten_ms": 6.5,
                },
                {
                    "value": 32,
                    "outputs_relative_l2": 0.0623,
                    "top1_agreement": 0.9712,
                    "blocks_relative_l2": [0.015, 0.03, 0.18, 0.045],
                    "rewritten_ms": 7.2,
                },
                {
                    "value": 64,
                    "outputs_relative_l2": 0.04567,
                    "top1_agreement": 0.9844,
                    "blocks_relative_l2": BLOCK_ERRORS,
                    "rewritten_ms": 8.09,
                },
            ],
        },
        "summary": {
            "worst_output_relative_l2": 0.04567,
            "worst_block": "/model/layers.2/self_attn/Softmax",
            "worst_block_relative_l2": 0.1375,
        },
    }


HEADLINE = ["polysketch (degree=4, sketch_size=64)", "0.0457", "98.44%", "1.52×"]


@pytest.fixture(scope="module")
def report() -> dict:
    return make_report()


@pytest.fixture(scope="module")
def html_text(report: dict) -> str:
    return render_html(report)


def _row(markdown: str, startswith: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(startswith))


def test_markdown_headline_and_tables(report: dict) -> None:
    text = render_markdown(report)
    for value in HEADLINE:
        assert value in text
    assert "measured, not estimated" in text
    assert "12.30 ms → 8.09 ms" in text
    logits = _row(text, "| logits |")
    assert "2×128×1000" in logits and "0.0457" in logits and "0.812" in logits
    assert "0.00312" in logits and "12.345 → 12.789" in logits
    for i, error in enumerate(["0.0118", "0.0214", "0.138", "0.0325"]):
        assert error in _row(text, f"| {i} | /model/layers.{i}/")
    assert "h1: 0.21" in _row(text, "| 2 |")
    sweep = _row(text, "| 16 |")
    assert "0.0912" in sweep and "95.31%" in sweep and "0.25" in sweep and "6.50 ms" in sweep


def test_markdown_flags_only_blocks_above_threshold(report: dict) -> None:
    text = render_markdown(report)
    assert WARNING in _row(text, "| 2 |")
    for i in (0, 1, 3):
        assert WARNING not in _row(text, f"| {i} |")
    assert f"{WARNING}: 1 block(s) above relative L2 0.1" in text


def test_markdown_without_optional_parts(report: dict) -> None:
    bare = copy.deepcopy(report)
    bare.update(sweep=None, method=None, blocks=[])
    bare["outputs"][0]["logits"] = None
    text = render_markdown(bare)
    assert "Sweep" not in text and "Top-1 agreement:** n/a" in text
    assert "No attention block was rewritten." in text
    assert "<svg" not in render_html(bare)


def test_html_escapes_strings(report: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "figures", lambda report: [])  # tables only: faster
    nasty = copy.deepcopy(report)
    nasty["blocks"][0]["name"] = "<script>alert(1)</script>"
    page = render_html(nasty)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page


def test_html_survives_awkward_values(report: dict) -> None:
    odd = copy.deepcopy(report)
    odd["outputs"][1].update(relative_l2=float("nan"), max_abs=float("inf"), finite=False)
    odd["blocks"][0].update(heads=None, fallback="mask layout not supported")
    odd["blocks"][1]["heads"] = [0.01, 0.02]  # fewer heads than the others
    odd["blocks"][3]["relative_l2"] = 0.0
    for point, value in zip(odd["sweep"]["points"], ["lo", "mid", "hi"], strict=True):
        point.update(value=value, top1_agreement=None)
    text = render_markdown(odd)
    assert WARNING in _row(text, "| last_hidden_state |") and "| NO |" in text
    assert "mask layout not supported" in text and "| lo |" in text
    assert render_html(odd).count("data:image/svg+xml") == PLOTS


def _chromium() -> str:
    for candidate in ("/usr/lib/chromium/chromium", "/usr/bin/chromium"):
        if Path(candidate).is_file():
            return candidate
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium binary (run .ci/install-browser)")
    return found


def test_html_opens_in_chromium_without_errors(html_text: str, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    page_path = tmp_path / "report.html"
    page_path.write_text(html_text, encoding="utf-8")
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            response = page.goto(page_path.as_uri(), wait_until="load")
            assert response is None or response.ok
            sizes = page.eval_on_selector_all(
                "svg, img",
                "els => els.map(e => { const r = e.getBoundingClientRect();"
                " return [r.width, r.height, e.complete !== false, e.naturalWidth ?? 1]; })",
            )
            body = page.inner_text("body")
        finally:
            browser.close()
    assert errors == []
    assert [r for r in requests if not r.startswith(("file:", "data:"))] == []
    assert len(sizes) == PLOTS
    for width, height, complete, natural in sizes:
        assert width > 50 and height > 50 and complete and natural > 0
    for value in HEADLINE:
        assert value in body
    assert WARNING in body


def test_write_report_writes_three_files(
    report: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render, "figures", lambda report: [])  # plots are tested above
    folder = tmp_path / "out"
    paths = write_report(report, folder)
    assert [p.name for p in paths] == ["report.json", "report.md", "report.html"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert json.loads(paths[0].read_text(encoding="utf-8")) == report
    assert paths[0].read_text(encoding="utf-8").startswith('{\n  "schema_version": 1,')
    assert paths[1].read_text(encoding="utf-8") == render_markdown(report)
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.json", "report.md"]
    write_report(report, folder)  # overwrites in place, leaves no temporary behind
    assert len(list(folder.iterdir())) == 3
