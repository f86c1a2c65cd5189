"""The docs' benchmark plot: drawn from the bench's JSON, or a note."""

from __future__ import annotations

import importlib.util
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _plot_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "plot_bench", ROOT / "docs" / "plot_bench.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RESULTS = {
    "started": "2026-01-02T03:04:05Z",
    "summary": {
        "aiohttp reference": {
            "rps": 3000.0,
            "cpu_us_per_request": 300.0,
            "bytes_per_held": 30000.0,
            "efficiency": 0.91,
        },
        "offloader serve": {
            "rps": 4500.0,
            "cpu_us_per_request": None,
            "bytes_per_held": 21500.0,
            "efficiency": 0.925,
        },
    },
}


def test_plot_shows_each_system_and_figure() -> None:
    """Every measured value appears, formatted, beside its system; a
    missing value draws no bar."""
    plot = _plot_module()

    svg = plot.render(RESULTS)

    root = ET.fromstring(svg)  # noqa: S314 - our own SVG, not untrusted
    texts = [element.text for element in root.iter() if element.text]
    bars = [e for e in root.iter() if e.tag.endswith("rect")]
    assert "4,500" in texts
    assert "3,000" in texts
    assert "21.5 KB" in texts
    assert "0.925" in texts
    assert "300 µs" in texts
    assert texts.count("offloader serve") == 3
    # A white background, then 2 + 1 + 2 + 2 bars.
    assert len(bars) == 1 + 7
    assert any("2026-01-02T03:04:05Z" in text for text in texts)


def test_plot_without_results_says_how_to_make_them(tmp_path: Path) -> None:
    """With no JSON, the plot is a note naming the bench session, and
    writing it again leaves the file alone."""
    plot = _plot_module()
    output = tmp_path / "bench.svg"

    first = plot.write(tmp_path / "missing.json", output)
    second = plot.write(tmp_path / "missing.json", output)

    assert first is True
    assert second is False
    assert "nox -s bench" in output.read_text()
    ET.fromstring(output.read_text())  # noqa: S314 - our own SVG


def test_plot_reads_the_json_file(tmp_path: Path) -> None:
    """`write` draws what the JSON file holds."""
    plot = _plot_module()
    results = tmp_path / "latest.json"
    results.write_text(json.dumps(RESULTS))
    output = tmp_path / "bench.svg"

    plot.write(results, output)

    assert output.read_text() == plot.render(RESULTS)
