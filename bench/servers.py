"""The bench's backend (four worker slots) and slow service, one process.

Both are written on raw asyncio protocols with httptools' parser and no
task per request, so that they stay far from being the bottleneck: a
sleeping request is a timer, not a coroutine.

Backend endpoints (``--backend-port``):

- ``GET /offload?ms=L``: answers at once with ``Offload-*`` headers
  asking for ``GET slow/sleep?ms=L``.
- ``GET /accel?ms=L``: the same for NGINX, as ``X-Accel-Redirect``.
- ``GET /direct?ms=L``: the blocking twin, which holds one of the four
  worker slots for L milliseconds, as a backend without offloading would.
- ``GET /offload-bytes?n=N`` and ``/accel-bytes?n=N``: offload a
  download of N bytes.
- ``GET /forward?n=N``: a body of N bytes, to be forwarded to
  ``POST slow/sink``.

Slow service endpoints (``--slow-port``): ``/sleep?ms=L`` answers after L
milliseconds; ``/bytes?n=N`` streams N bytes; ``POST /sink`` counts the
body it receives; ``/stats`` gives the number of requests it holds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
from collections.abc import Callable
from typing import Any

import httptools

CHUNK = b"x" * (256 * 1024)
SLEEP_BODY = b'{"status": "done", "by": "slow service"}\n'


def _query(url: bytes) -> dict[str, int]:
    _, _, query = url.partition(b"?")
    result = {}
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if value.isdigit():
            result[name.decode()] = int(value)
    return result


def _head(
    status: int, headers: list[tuple[str, str]], length: int | None
) -> bytes:
    reason = {200: "OK", 404: "Not Found"}.get(status, "X")
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; requests are answered in order.

    Limitation: pipelined requests are not supported (wrk, the proxies
    and NGINX never pipeline).
    """

    def __init__(self, service: _Service) -> None:
        self.service = service
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body_bytes = 0
        self.closed = False
        self.on_lost: Callable[[], None] | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.can_write.set()
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.service.handle(self, method, self.url)

    # answers
    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def answer(
        self,
        status: int,
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        body: bytes = b"",
    ) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(_head(status, list(headers), len(body)) + body)
        if not self.parser.should_keep_alive():
            self.transport.close()

    async def stream(self, headers: list[tuple[str, str]], size: int) -> None:
        """Send *size* bytes, respecting the transport's flow control."""
        assert self.transport is not None
        self.transport.write(_head(200, headers, size))
        view = memoryview(CHUNK)
        left = size
        while left > 0 and not self.closed:
            await self.can_write.wait()
            piece = view[: min(left, len(CHUNK))]
            self.transport.write(piece)
            left -= len(piece)


class _Service:
    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()

    def protocol(self) -> _Connection:
        return _Connection(self)

    def handle(self, conn: _Connection, method: bytes, url: bytes) -> None:
        raise NotImplementedError

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class Backend(_Service):
    """A backend with four worker slots."""

    def __init__(self, slow: str, slots: int = 4) -> None:
        super().__init__()
        self.slow = slow
        self.free_slots = slots
        self.waiting: collections.deque[
            tuple[_Connection, Callable[[Callable[[], None]], None]]
        ] = collections.deque()

    def _with_slot(
        self,
        conn: _Connection,
        work: Callable[[Callable[[], None]], None],
    ) -> None:
        """Run *work* in a worker slot; it calls its argument when done."""
        if self.free_slots:
            self.free_slots -= 1
            work(self._release)
        else:
            self.waiting.append((conn, work))

    def _release(self) -> None:
        while self.waiting:
            conn, work = self.waiting.popleft()
            # A client that gave up while queued frees its turn at once,
            # rather than holding a slot for nobody.
            if not conn.closed:
                work(self._release)
                return
        self.free_slots += 1

    def handle(self, conn: _Connection, method: bytes, url: bytes) -> None:
        path = url.partition(b"?")[0]
        query = _query(url)
        ms = query.get("ms", 0)
        n = query.get("n", 0)
        if path == b"/offload":
            headers = [
                ("Offload-Requested", "1"),
                ("Offload-Url", f"{self.slow}/sleep?ms={ms}"),
            ]
            self._with_slot(
                conn, lambda done: (conn.answer(200, headers), done())
            )
        elif path == b"/accel":
            headers = [("X-Accel-Redirect", f"/_slow/sleep?ms={ms}")]
            self._with_slot(
                conn, lambda done: (conn.answer(200, headers), done())
            )
        elif path == b"/direct":
            loop = asyncio.get_running_loop()

            def work(done: Callable[[], None]) -> None:
                def finish() -> None:
                    conn.on_lost = None
                    conn.answer(200, [], SLEEP_BODY)
                    done()

                def gone() -> None:
                    # The client left: the worker is free at once, as a
                    # worker whose client hung up would be.
                    timer.cancel()
                    done()

                timer = loop.call_later(ms / 1000, finish)
                conn.on_lost = gone

            self._with_slot(conn, work)
        elif path == b"/offload-bytes":
            headers = [
                ("Offload-Requested", "1"),
                ("Offload-Url", f"{self.slow}/bytes?n={n}"),
            ]
            conn.answer(200, headers)
        elif path == b"/accel-bytes":
            conn.answer(200, [("X-Accel-Redirect", f"/_slow/bytes?n={n}")])
        elif path == b"/forward":
            headers = [
                ("Offload-Requested", "1"),
                ("Offload-Url", f"{self.slow}/sink"),
                ("Offload-Method", "POST"),
                ("Offload-Forward-Body", "1"),
                ("Content-Type", "application/octet-stream"),
            ]
            self.spawn(conn.stream(headers, n))
        else:
            conn.answer(404)


class Slow(_Service):
    """The slow service: sleeps, streams, counts."""

    def __init__(self) -> None:
        super().__init__()
        self.held = 0
        self.served = 0

    def handle(self, conn: _Connection, method: bytes, url: bytes) -> None:
        path = url.partition(b"?")[0]
        query = _query(url)
        if path == b"/sleep":
            self.held += 1

            def finish() -> None:
                conn.on_lost = None
                self.held -= 1
                self.served += 1
                conn.answer(
                    200, [("Content-Type", "application/json")], SLEEP_BODY
                )

            def gone() -> None:
                # Held counts requests someone still waits for.
                timer.cancel()
                self.held -= 1

            timer = asyncio.get_running_loop().call_later(
                query.get("ms", 0) / 1000, finish
            )
            conn.on_lost = gone
        elif path == b"/bytes":
            self.spawn(conn.stream([], query.get("n", 0)))
        elif path == b"/sink":
            conn.answer(200, [], str(conn.body_bytes).encode())
        elif path == b"/stats":
            stats = {"held": self.held, "served": self.served}
            conn.answer(200, [], json.dumps(stats).encode())
        else:
            conn.answer(404)


async def _main(backend_port: int, slow_port: int) -> None:
    loop = asyncio.get_running_loop()
    slow = Slow()
    backend = Backend(f"http://127.0.0.1:{slow_port}")
    servers = [
        await loop.create_server(
            service.protocol, "127.0.0.1", port, backlog=8192
        )
        for service, port in ((backend, backend_port), (slow, slow_port))
    ]
    print("ready", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend-port", type=int, required=True)
    parser.add_argument("--slow-port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args.backend_port, args.slow_port))
    else:
        uvloop.run(_main(args.backend_port, args.slow_port))


if __name__ == "__main__":
    main()
