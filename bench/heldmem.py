"""Where the memory of a held offload goes, layer by layer (tracemalloc).

The bench's memory figure is resident memory: it says how much, not
whose. This script says whose. For the aiohttp reference proxy and for
the proxy ``offloader serve`` builds, each in a fresh process of its
own, it runs the proxy on uvicorn (uvloop, httptools) with tracemalloc
on, has a client process hold N offloads on the bench's slow service,
and splits the Python memory that the held offloads added by the code
that allocated it::

    python -m bench.heldmem              # 1,000 held offloads
    python -m bench.heldmem --held 300   # quicker

Each allocation counts for the innermost frame of its traceback that
belongs to a known package (``offloader``, ``aiohttp``, ``uvicorn``,
``httpx``, ``anyio``...); an allocation made by the standard library
or by C code alone (uvloop's transports, say) counts as "event loop and
standard library". Results go to ``bench/results/heldmem.json``.

tracemalloc sees Python's allocations only, and slows the proxy down a
lot: the figures are for comparing layers and systems, not for the
speed or the resident memory the main bench measures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SYSTEMS = ("aiohttp reference", "offloader serve")
PACKAGES = (
    "offloader", "bench", "aiohttp", "aiohappyeyeballs", "yarl",
    "multidict", "propcache", "uvicorn", "httptools", "httpx", "httpcore",
    "anyio", "h11", "idna",
)  # fmt: skip
# How packages are grouped in the table.
LAYERS = {
    "offloader": "offloader",
    "bench": "the reference's own code",
    "httpx": "httpx",
    "httpcore": "httpx",
    "h11": "httpx",
    "idna": "httpx",
    "anyio": "anyio",
    "aiohttp": "aiohttp",
    "aiohappyeyeballs": "aiohttp",
    "yarl": "aiohttp",
    "multidict": "aiohttp",
    "propcache": "aiohttp",
    "uvicorn": "uvicorn",
    "httptools": "uvicorn",
}
EVENT_LOOP = "event loop and standard library"

# The client: N connections, each sending one request and waiting.
CLIENT = r"""
import asyncio, sys

count, port, ms = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

async def one(ms):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET /offload?ms={ms} HTTP/1.1\r\nHost: proxy\r\n\r\n"
    writer.write(request.encode())
    await writer.drain()
    await reader.read(65536)
    writer.close()

async def main():
    await asyncio.gather(*(one(0) for _ in range(50)))
    print("warm", flush=True)
    sys.stdin.readline()
    await asyncio.gather(
        *(one(ms) for _ in range(count)), return_exceptions=True
    )

asyncio.run(main())
"""


def _origin_of(traceback: tracemalloc.Traceback) -> tuple[str, str]:
    """The layer that made an allocation, and the line in that layer."""
    # Frames run from the oldest to the most recent.
    for frame in reversed(traceback):
        path = Path(frame.filename)
        if path.name == "heldmem.py":
            continue  # this script runs the loop, it holds no offload
        for package in PACKAGES:
            if package in path.parts:
                start = path.parts.index(package)
                line = "/".join(path.parts[start:]) + f":{frame.lineno}"
                return LAYERS[package], line
    return EVENT_LOOP, ""


def _held(slow_port: int) -> int:
    url = f"http://127.0.0.1:{slow_port}/stats"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return int(json.load(answer)["held"])


def _make_app(system: str, backend: str) -> Any:
    if system == "aiohttp reference":
        os.environ["BENCH_BACKEND"] = backend
        from bench import ref_proxy

        return ref_proxy.app
    import httpx

    from offloader._cli import build_proxy

    return build_proxy(httpx.URL(backend), hosts=None, max_offloads=20_000)


async def _measure(
    system: str, backend_port: int, slow_port: int, held: int, frames: int
) -> dict[str, Any]:
    import uvicorn

    from bench.run import free_port

    app = _make_app(system, f"http://127.0.0.1:{backend_port}")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, loop="none",
            http="httptools", log_level="error", lifespan="on",
            backlog=8192,
        )
    )  # fmt: skip
    serving = asyncio.create_task(server.serve())
    # uvicorn tells that it has started with a flag only.
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(held), str(port), "60000",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert client.stdin is not None
        assert client.stdout is not None
        await client.stdout.readline()
        await asyncio.sleep(0.5)
        gc.collect()
        tracemalloc.start(frames)
        before = tracemalloc.take_snapshot()
        client.stdin.write(b"go\n")
        await client.stdin.drain()
        count = 0
        end = time.monotonic() + 50
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            count = await loop.run_in_executor(None, _held, slow_port)
            if count >= held:
                break
        await asyncio.sleep(1)
        gc.collect()
        after = tracemalloc.take_snapshot()
        count = await loop.run_in_executor(None, _held, slow_port)
        tracemalloc.stop()
    finally:
        client.kill()
        await client.wait()
    layers: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    for stat in after.compare_to(before, "traceback"):
        layer, line = _origin_of(stat.traceback)
        layers[layer] += stat.size_diff
        if line:
            lines[line] += stat.size_diff
    server.should_exit = True
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(serving, 10)
    return {
        "system": system,
        "held": count,
        "bytes_per_held": {
            layer: size / max(count, 1) for layer, size in layers.items()
        },
        "top_lines": [
            (line, size / max(count, 1))
            for line, size in lines.most_common(40)
        ],
    }


def _child(argv: list[str]) -> None:
    system, backend_port, slow_port, held, frames = argv
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    result = run(
        _measure(system, int(backend_port), int(slow_port), int(held),
                 int(frames))
    )  # fmt: skip
    print(json.dumps(result), flush=True)


def _table(results: list[dict[str, Any]]) -> str:
    layers = sorted(
        {layer for result in results for layer in result["bytes_per_held"]},
        key=lambda layer: (
            -max(result["bytes_per_held"].get(layer, 0) for result in results)
        ),
    )
    names = [f"{r['system']} ({r['held']} held)" for r in results]
    lines = [
        "| allocated by | " + " | ".join(names) + " |",
        "|---" * (len(results) + 1) + "|",
    ]
    for layer in layers:
        cells = [
            f"{result['bytes_per_held'].get(layer, 0) / 1000:.1f} KB"
            for result in results
        ]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    totals = [
        f"{sum(result['bytes_per_held'].values()) / 1000:.1f} KB"
        for result in results
    ]
    lines.append("| **total** | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument(
        "--lines",
        action="store_true",
        help="also print the lines that allocated the most",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results" / "heldmem.json"
    )
    args = parser.parse_args(argv)

    from bench.run import free_port, wait_port

    backend_port, slow_port = free_port(), free_port()
    servers = subprocess.Popen(
        [sys.executable, str(HERE / "servers.py"),
         "--backend-port", str(backend_port),
         "--slow-port", str(slow_port)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    results = []
    try:
        wait_port(slow_port, servers)
        for system in SYSTEMS:
            # Nothing of the last system may count as held by this one.
            while _held(slow_port):
                time.sleep(0.2)
            out = subprocess.run(
                [sys.executable, "-m", "bench.heldmem", "--child", system,
                 str(backend_port), str(slow_port), str(args.held),
                 str(args.frames)],
                cwd=ROOT, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        servers.kill()
        servers.wait()
    print(_table(results))
    if args.lines:
        for result in results:
            print(f"\n{result['system']}, bytes per held offload:")
            for line, size in result["top_lines"]:
                print(f"{size:8.0f}  {line}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2:])
    else:
        main()
