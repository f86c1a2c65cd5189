"""``offloader demo``, the README's "run it" command, run to completion."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_to_completion_and_prints_the_table() -> None:
    """``offloader demo`` needs nothing else running, exits 0, shows its
    progress on stderr, and prints a table with a row for the backend
    alone and one for the proxy. (The figures themselves are not
    asserted: speed belongs to the benchmarks.)"""
    result = subprocess.run(
        [sys.executable, "-m", "offloader", "demo"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert "through offloader: 400/400" in result.stderr
    header = re.search(
        r"requests\s+wall time\s+requests/s\s+p50\s+p99", result.stdout
    )
    assert header is not None
    rows: dict[str, int] = {}
    for label in ("backend alone (blocking)", "through offloader"):
        match = re.search(
            re.escape(label) + r"\s+(\d+)\s+([\d.]+) s\s+([\d.]+)",
            result.stdout,
        )
        assert match is not None, result.stdout
        rows[label] = int(match[1])
    assert rows == {"backend alone (blocking)": 40, "through offloader": 400}
