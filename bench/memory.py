"""Peak memory of a client forwarding and relaying 200 MiB bodies.

Runs real loopback servers in a separate process, so that their memory
is not counted, and each measurement in a fresh client process using
the httpx response hook (sync and async)::

    python bench/memory.py            # 200 MiB each way
    python bench/memory.py --mib 50   # a quicker run

Two cases:

- ``forward``: the backend answers a GET with a 200 MiB body and
  ``Offload-Forward-Body``; the offloader streams it as the body of a
  POST to the offload server, which counts the bytes.
- ``relay``: the offload server answers with a 200 MiB body, which the
  client streams through and counts.
- ``control``: the relay case, but the client reads the body whole into
  memory; its growth near 200 MiB shows the meter works.

The figure is the client's peak resident memory (``ru_maxrss``) minus
its resident memory just before the transfer, after a warm-up
offload: an upper bound of the growth the transfer caused. The issue's
target is under 32 MiB. Needs Linux or macOS (the ``resource`` module).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

MIB = 1024 * 1024
CHUNK = 64 * 1024
TARGET_MIB = 32

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# -- the server process -------------------------------------------------------


def _size_of(scope: Scope) -> int:
    query = scope["query_string"].decode()
    for item in query.split("&"):
        if item.startswith("size="):
            return int(item[len("size=") :])
    return 0


async def _stream(send: Send, size: int, headers: list[Any]) -> None:
    block = b"x" * CHUNK
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(size).encode()), *headers],
        }
    )
    left = size
    while left > 0:
        chunk = block if left >= CHUNK else block[:left]
        left -= len(chunk)
        await send(
            {"type": "http.response.body", "body": chunk, "more_body": True}
        )
    await send({"type": "http.response.body", "body": b""})


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """Backend and offload server in one app, told apart by path."""
    if scope["type"] != "http":
        return
    received = 0
    while True:
        message = await receive()
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    path = scope["path"]
    size = _size_of(scope)
    base = f"http://127.0.0.1:{scope['server'][1]}"
    if path == "/backend/forward":
        # A large body the offloader must forward to the sink.
        headers = [
            (b"offload-requested", b"1"),
            (b"offload-url", f"{base}/offload/sink".encode()),
            (b"offload-method", b"POST"),
            (b"offload-forward-body", b"1"),
            (b"content-type", b"application/octet-stream"),
        ]
        await _stream(send, size, headers)
    elif path == "/backend/relay":
        # A small answer asking for a large offload body.
        url = f"{base}/offload/source?size={size}".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"offload-requested", b"1"),
                    (b"offload-url", url),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"ignored"})
    elif path == "/offload/source":
        await _stream(send, size, [])
    else:
        body = json.dumps({"received": received}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def serve() -> None:
    """Serve `_app` on a free loopback port; print the port; stop when
    stdin closes (the parent ended)."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(_app, log_level="warning", lifespan="off")
    )

    def stop_when_parent_leaves() -> None:
        sys.stdin.read()
        server.should_exit = True

    threading.Thread(target=stop_when_parent_leaves, daemon=True).start()
    print(sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])


# -- the client process -------------------------------------------------------


def _rss_bytes() -> int:
    """The current resident set size of this process."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back on the peak so far
        return _peak_bytes()


def _peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak if sys.platform == "darwin" else peak * 1024


def _sync_run(base: str, case: str, size: int) -> dict[str, Any]:
    import httpx

    from offloader import Offloader
    from offloader.hooks.httpx import hooks

    offloader = Offloader()
    bound = hooks(offloader)
    with httpx.Client(
        event_hooks={"response": [bound.response_hook]}, timeout=120
    ) as client:

        def once(nbytes: int) -> int:
            path = "relay" if case == "control" else case
            url = f"{base}/backend/{path}?size={nbytes}"
            with client.stream("GET", url) as response:
                response.raise_for_status()
                if case == "forward":
                    return int(json.loads(response.read())["received"])
                if case == "control":
                    return len(response.read())
                return sum(len(chunk) for chunk in response.iter_raw())

        once(4 * MIB)  # warm up: imports, pools, buffers
        before = _rss_bytes()
        started = time.perf_counter()
        moved = once(size)
        seconds = time.perf_counter() - started
        peak = _peak_bytes()
    offloader.close()
    return {"bytes": moved, "seconds": seconds, "growth": peak - before}


async def _async_run(base: str, case: str, size: int) -> dict[str, Any]:
    import httpx

    from offloader import Offloader
    from offloader.hooks.httpx import hooks

    offloader = Offloader()
    bound = hooks(offloader)
    async with httpx.AsyncClient(
        event_hooks={"response": [bound.async_response_hook]}, timeout=120
    ) as client:

        async def once(nbytes: int) -> int:
            url = f"{base}/backend/{case}?size={nbytes}"
            async with client.stream("GET", url) as response:
                response.raise_for_status()
                if case == "forward":
                    body = await response.aread()
                    return int(json.loads(body)["received"])
                total = 0
                async for chunk in response.aiter_raw():
                    total += len(chunk)
                return total

        await once(4 * MIB)
        before = _rss_bytes()
        started = time.perf_counter()
        moved = await once(size)
        seconds = time.perf_counter() - started
        peak = _peak_bytes()
    await offloader.aclose()
    return {"bytes": moved, "seconds": seconds, "growth": peak - before}


def client(base: str, case: str, mode: str, size: int) -> None:
    """Measure one case in this (fresh) process; print JSON."""
    if case == "control":
        # The relay case, but the client reads the whole body into
        # memory: shows that the meter sees a buffered body.
        result = _sync_run(base, case, size)
    elif mode == "sync":
        result = _sync_run(base, case, size)
    else:
        result = asyncio.run(_async_run(base, case, size))
    print(json.dumps(result), flush=True)


# -- the driver ---------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=200, help="body size")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.mib * MIB
    if args.serve:
        serve()
        return 0
    if args.client:
        base, case, mode = args.client
        client(base, case, mode, size)
        return 0

    here = os.path.abspath(__file__)
    root = os.path.dirname(os.path.dirname(here))
    env = {**os.environ, "PYTHONPATH": root}
    server = subprocess.Popen(
        [sys.executable, here, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    failed = False
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        print(f"python {sys.version.split()[0]} on {sys.platform}")
        print(
            f"{'case':<8} {'mode':<6} {'MiB':>5} {'MiB/s':>7} "
            f"{'peak RSS growth':>16}  target < {TARGET_MIB} MiB"
        )
        runs = [
            (case, mode)
            for case in ("forward", "relay")
            for mode in ("sync", "async")
        ]
        for case, mode in [*runs, ("control", "sync")]:
            out = subprocess.run(
                [
                    sys.executable,
                    here,
                    "--mib",
                    str(args.mib),
                    "--client",
                    base,
                    case,
                    mode,
                ],
                capture_output=True,
                text=True,
                env=env,
                check=True,
                timeout=600,
            )
            result = json.loads(out.stdout)
            growth = result["growth"] / MIB
            whole = result["bytes"] == size
            ok = whole and growth < TARGET_MIB
            if case == "control":
                ok = growth >= args.mib / 2
            else:
                failed = failed or not ok
            rate = result["bytes"] / MIB / result["seconds"]
            print(
                f"{case:<8} {mode:<6} {result['bytes'] / MIB:>5.0f} "
                f"{rate:>7.0f} {growth:>12.1f} MiB  "
                f"{'ok' if ok else 'FAIL'}"
                f"{'' if whole else ' (bytes missing)'}"
            )
        print(
            "control: the client reads the relayed body whole; "
            "'ok' there means the meter saw it"
        )
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
