"""Draw the benchmark figures as an SVG, from ``bench/results/latest.json``.

Run by MkDocs before each build (``hooks:`` in ``mkdocs.yml``), or by
hand: ``python docs/plot_bench.py``. It writes ``docs/assets/bench.svg``:
one bar chart per figure, a bar per system. Without results it draws a
note saying how to make them. Plain SVG text, no plotting library: the
docs build needs nothing more than MkDocs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
OUTPUT = ROOT / "docs" / "assets" / "bench.svg"

#: (summary key, chart title, format of a value)
FIGURES = (
    ("rps", "Requests/s at L=0 ms, C=64 (higher is better)", "{:,.0f}"),
    (
        "cpu_us_per_request",
        "CPU per request, µs (lower is better)",
        "{:,.0f} µs",
    ),
    (
        "bytes_per_held",
        "Memory per held offload, C=5000 (lower is better)",
        "{:,.1f} KB",
    ),
    (
        "efficiency",
        "Efficiency at C=1000, L=1 s (higher is better; 0.933 is the most)",
        "{:.3f}",
    ),
)

OURS = "offloader serve"
WIDTH = 760
LABEL = 200
ROW = 22
FONT = "font-family='sans-serif' font-size='12'"


def _value(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    if not isinstance(value, (int, float)):
        return None
    return value / 1000 if key == "bytes_per_held" else float(value)


def render(results: dict[str, Any]) -> str:
    """Return the SVG of *results* (the bench's JSON, as a dict)."""
    summary: dict[str, dict[str, Any]] = results.get("summary", {})
    parts: list[str] = []
    y = 10
    for key, title, pattern in FIGURES:
        rows = [
            (name, value)
            for name, row in summary.items()
            if (value := _value(row, key)) is not None
        ]
        if not rows:
            continue
        parts.append(
            f"<text x='0' y='{y + 14}' {FONT} font-weight='bold'>"
            f"{escape(title)}</text>"
        )
        y += 24
        top = max(value for _, value in rows) or 1.0
        span = WIDTH - LABEL - 110
        for name, value in rows:
            width = max(1.0, span * value / top)
            color = "#3f51b5" if name == OURS else "#9e9e9e"
            parts.append(
                f"<text x='{LABEL - 8}' y='{y + 15}' {FONT} "
                f"text-anchor='end'>{escape(name)}</text>"
                f"<rect x='{LABEL}' y='{y + 3}' width='{width:.1f}' "
                f"height='{ROW - 6}' fill='{color}'/>"
                f"<text x='{LABEL + width + 6:.1f}' y='{y + 15}' {FONT}>"
                f"{escape(pattern.format(value))}</text>"
            )
            y += ROW
        y += 14
    if not parts:
        parts.append(
            f"<text x='0' y='24' {FONT}>No benchmark results yet: run "
            f"nox -s bench to make bench/results/latest.json.</text>"
        )
        y = 40
    started = results.get("started")
    if started:
        parts.append(
            f"<text x='0' y='{y + 4}' {FONT} fill='#616161'>"
            f"Run of {escape(str(started))}, medians; "
            f"{escape(OURS)} in blue.</text>"
        )
        y += 14
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' "
        f"height='{y + 6}' viewBox='0 0 {WIDTH} {y + 6}' role='img'>"
        f"<rect width='100%' height='100%' fill='white'/>"
        + "".join(parts)
        + "</svg>\n"
    )


def write(results_path: Path = RESULTS, output: Path = OUTPUT) -> bool:
    """Write the SVG of *results_path* to *output*; tell whether it
    changed (unchanged files are left alone, so that ``mkdocs serve``
    does not rebuild in a loop)."""
    results = (
        json.loads(results_path.read_text()) if results_path.is_file() else {}
    )
    svg = render(results)
    if output.is_file() and output.read_text() == svg:
        return False
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(svg)
    return True


def on_pre_build(config: Any) -> None:
    """The MkDocs hook: draw the plot before the pages are read."""
    write()


if __name__ == "__main__":
    write()
