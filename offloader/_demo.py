"""``offloader demo``: offloading at work, on loopback, in under a minute.

Three servers start in this process, each on 127.0.0.1 and a free port:

- a backend with four worker slots, like an application server with four
  workers. ``/blocking`` holds a slot while it waits one second for a
  slow service itself; ``/offload`` answers at once, asking the proxy to
  make that one-second call instead;
- the slow service, which answers after one second;
- the offloading proxy in front of the backend, built as ``offloader
  serve`` builds it (on aiohttp's client when it is installed).

The demo then sends requests straight to ``/blocking`` and many more
through the proxy to ``/offload``, all at once, and prints a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Literal, TextIO

import httpx

from ._cli import build_proxy

if TYPE_CHECKING:
    from .hooks.asgi import OffloadProxy

__all__ = ["run_demo"]

_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]

SLOTS = 4
LATENCY = 1.0


async def _answer(send: _Send, body: bytes, headers: list[Any]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _SlowService:
    """Answers every request after `LATENCY` seconds."""

    async def __call__(
        self, scope: _Message, receive: _Receive, send: _Send
    ) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(LATENCY)
        await _answer(send, b"done\n", [])


class _Backend:
    """An application with `SLOTS` workers, each busy for a whole call."""

    def __init__(self, slow_url: str) -> None:
        self.slow_url = slow_url
        self._slots: asyncio.Semaphore | None = None

    async def __call__(
        self, scope: _Message, receive: _Receive, send: _Send
    ) -> None:
        if scope["type"] != "http":
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(SLOTS)
        async with self._slots:
            if scope["path"] == "/blocking":
                # The worker waits for the slow service itself.
                await asyncio.sleep(LATENCY)
                await _answer(send, b"done\n", [])
            else:
                # The worker hands the call to the proxy and is free.
                await _answer(
                    send,
                    b"",
                    [
                        (b"offload-requested", b"1"),
                        (b"offload-url", self.slow_url.encode()),
                    ],
                )


@contextlib.contextmanager
def _serving(
    app: Any, lifespan: Literal["on", "off"] = "off"
) -> Iterator[str]:
    """Run *app* under uvicorn in a thread; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="error",
            lifespan=lifespan,
            proxy_headers=False,
            backlog=4096,
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("a demo server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class _Progress:
    """Counts finished requests and shows them on a stream."""

    def __init__(self, label: str, total: int, stream: TextIO) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream
        self._tty = stream.isatty()
        self._shown = -1

    def step(self) -> None:
        self.done += 1
        if self._tty:
            self.stream.write(f"\r  {self.label}: {self.done}/{self.total}")
            if self.done == self.total:
                self.stream.write("\n")
        else:
            quarter = 4 * self.done // self.total
            if quarter > self._shown:
                self._shown = quarter
                self.stream.write(
                    f"  {self.label}: {self.done}/{self.total}\n"
                )
        self.stream.flush()


async def _load(url: str, count: int, progress: _Progress) -> _Result:
    """Send *count* GETs to *url* at once; return their timings."""
    # Several small pools: one httpx pool slows down with the square of
    # its concurrent requests, and the client must not be the bottleneck.
    shards = max(1, math.ceil(count / 50))
    clients = [httpx.AsyncClient(timeout=120) for _ in range(shards)]

    async def one(client: httpx.AsyncClient) -> tuple[float, bool]:
        started = time.monotonic()
        try:
            response = await client.get(url)
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        progress.step()
        return time.monotonic() - started, ok

    started = time.monotonic()
    try:
        outcomes = await asyncio.gather(
            *(one(clients[index % shards]) for index in range(count))
        )
    finally:
        for client in clients:
            await client.aclose()
    wall = time.monotonic() - started
    return _Result(
        count,
        wall,
        sorted(latency for latency, _ in outcomes),
        sum(1 for _, ok in outcomes if not ok),
    )


class _Result:
    def __init__(
        self, count: int, wall: float, latencies: list[float], failed: int
    ) -> None:
        self.count = count
        self.wall = wall
        self.latencies = latencies
        self.failed = failed

    def percentile(self, fraction: float) -> float:
        index = min(
            len(self.latencies) - 1,
            max(0, math.ceil(fraction * len(self.latencies)) - 1),
        )
        return self.latencies[index]

    def row(self, label: str) -> str:
        return (
            f"{label:<26}{self.count:>9}{self.wall:>10.1f} s"
            f"{self.count / self.wall:>12.1f}"
            f"{self.percentile(0.5):>8.2f} s{self.percentile(0.99):>8.2f} s"
        )


def _proxy(backend_url: str) -> OffloadProxy:
    """The proxy `offloader serve` would run in front of *backend_url*:
    on aiohttp's client if it is installed, offloading only to the
    backend's own host."""
    backend = httpx.URL(backend_url)
    return build_proxy(backend, hosts=(backend.host,))


def run_demo(
    *,
    blocking: int = 40,
    offloaded: int = 400,
    out: TextIO | None = None,
    progress: TextIO | None = None,
) -> int:
    """Run the demo; return 0, or 1 if any request failed.

    Args:
        blocking: Requests sent straight to the backend's blocking
            endpoint. Four slots at one second each: 40 take 10 s.
        offloaded: Requests sent through the proxy.
        out: Where the table goes; standard output by default.
        progress: Where progress goes; standard error by default.
    """
    out = out or sys.stdout
    progress = progress or sys.stderr
    progress.write(
        f"Starting a backend with {SLOTS} worker slots, a slow service "
        f"({LATENCY:g} s per call) and the proxy on 127.0.0.1...\n"
    )
    with (
        _serving(_SlowService()) as slow_url,
        _serving(_Backend(slow_url + "/work")) as backend_url,
        _serving(_proxy(backend_url), lifespan="on") as proxy_url,
    ):
        direct = asyncio.run(
            _load(
                backend_url + "/blocking",
                blocking,
                _Progress("backend alone", blocking, progress),
            )
        )
        through = asyncio.run(
            _load(
                proxy_url + "/offload",
                offloaded,
                _Progress("through offloader", offloaded, progress),
            )
        )
    speedup = (through.count / through.wall) / (direct.count / direct.wall)
    out.write(
        f"\nEach request needs {LATENCY:g} s of a slow service; the backend"
        f" has {SLOTS} worker slots.\n"
        f"All requests of a row are sent at once. The backend alone gets"
        f" fewer requests\nbecause it can only take {SLOTS} per second.\n\n"
        f"{'':<26}{'requests':>9}{'wall time':>12}{'requests/s':>12}"
        f"{'p50':>10}{'p99':>10}\n"
        f"{direct.row('backend alone (blocking)')}\n"
        f"{through.row('through offloader')}\n\n"
        f"Offloading: {speedup:.0f}x the requests per second, from the same "
        f"{SLOTS} slots.\n"
    )
    failed = direct.failed + through.failed
    if failed:
        out.write(f"{failed} requests failed.\n")
        return 1
    return 0
