"""``offloader demo``, the README's "run it" command, run to completion."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

from offloader._aiohttp_transport import AiohttpTransport
from offloader._demo import _proxy


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


def test_the_demo_runs_the_proxy_offloader_serve_runs() -> None:
    """The demo's proxy is built as ``offloader serve`` builds it: on
    aiohttp's client (installed with the server extra), offloading
    only to the backend's own host."""
    proxy = _proxy("http://127.0.0.1:9")
    try:
        assert isinstance(proxy.backend_transport, AiohttpTransport)
        assert isinstance(proxy.offloader._async_transport, AiohttpTransport)
        assert proxy.offloader.policy.hosts == ("127.0.0.1",)
    finally:
        asyncio.run(proxy.aclose())
