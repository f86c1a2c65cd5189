"""The servers behind the proxy in the end-to-end tests, as ASGI apps.

`Backend` plays the application behind the proxy: it holds four worker
slots, echoes what it receives, and answers with the headers the test asks
for (``X-Reply-<Name>: v`` becomes ``<Name>: v``, ``X-Status`` the
status). `OffloadServer` plays the slow service an offload goes to.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def read_body(receive: Receive) -> bytes:
    """Read a whole request body from ASGI *receive*."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body", False):
            return body


async def answer(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a whole response."""
    if status in (204, 304):
        body = b""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 10.0
) -> bool:
    """Poll *predicate* until it holds; return whether it did in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.005)
    return predicate()


def echo(scope: Any, body: bytes) -> bytes:
    """What the echo endpoints answer: the request, as JSON."""
    return json.dumps(
        {
            "method": scope["method"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in scope["headers"]
            ],
            "body": body.decode("latin-1"),
        }
    ).encode()


class Backend:
    """An application with four worker slots behind the proxy.

    ``/stream-in`` reads its body chunk by chunk and sets `first_chunk`
    when the first arrives, then waits for the rest. Every other path
    echoes the request as JSON, with the status of ``X-Status`` and the
    headers of ``X-Reply-*``.
    """

    def __init__(self, slots: int = 4) -> None:
        self.slots = slots
        self._semaphore: asyncio.Semaphore | None = None
        self.first_chunk = threading.Event()

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)
        async with self._semaphore:
            if scope["path"] == "/stream-in":
                await self._stream_in(receive, send)
                return
            body = await read_body(receive)
            status = 200
            reply: list[tuple[bytes, bytes]] = [
                (b"content-type", b"application/json")
            ]
            for name, value in scope["headers"]:
                if name == b"x-status":
                    status = int(value)
                elif name.startswith(b"x-reply-"):
                    reply.append((name[len(b"x-reply-") :], value))
            await answer(send, status, echo(scope, body), reply)

    async def _stream_in(self, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if message.get("body"):
                self.first_chunk.set()
            if not message.get("more_body", False):
                break
        await answer(send, 200, b"|".join(c for c in chunks if c))


class OffloadServer:
    """The slow service offloads go to.

    - ``/slow?delay=S``: waits S seconds, then echoes the request.
    - ``/sse?n=N``: sends N events, each once `release` lets it.
    - ``/hang``: never answers; records when its client went away.
    - ``/truncated``: promises 100 bytes, sends 10 and breaks off.
    - ``/offloading``: answers with ``Offload-*`` headers of its own.
    """

    def __init__(self) -> None:
        self.release = threading.Semaphore(0)
        self.hang_started = threading.Event()
        self.disconnected_at: float | None = None
        self.disconnected = threading.Event()
        self.requests = 0

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.requests += 1
        path = scope["path"]
        query = parse_qs(scope["query_string"].decode())
        if path == "/hang":
            self.hang_started.set()
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected_at = time.monotonic()
            self.disconnected.set()
            return
        body = await read_body(receive)
        if path == "/slow":
            await asyncio.sleep(float(query.get("delay", ["0"])[0]))
            await answer(
                send,
                200,
                echo(scope, body),
                [(b"content-type", b"application/json"), (b"x-slow", b"yes")],
            )
        elif path == "/sse":
            await self._sse(send, int(query.get("n", ["3"])[0]))
        elif path == "/truncated":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"100")],
                }
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": b"0123456789",
                    "more_body": True,
                }
            )
            # Returning unfinished makes uvicorn close the connection.
            return
        elif path == "/offloading":
            await answer(
                send,
                201,
                b"final",
                [
                    (b"offload-requested", b"1"),
                    (b"offload-url", b"http://10.255.255.1/secret"),
                    (b"offload-x-token", b"hidden"),
                ],
            )
        else:
            await answer(send, 404, b"not found")

    async def _sse(self, send: Send, count: int) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for index in range(count):
            await wait_for(lambda: self.release.acquire(blocking=False))
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: event {index}\n\n".encode(),
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b""})


def main() -> None:
    """Serve a `Backend` and an `OffloadServer` until stdin closes.

    Prints their base URLs on one line. The leak test runs them in a
    process of their own, so that they do not share the proxy's CPU.
    """
    import sys

    from tests.servers import serve

    slots = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    with (
        serve(Backend(slots=slots)) as backend,
        serve(OffloadServer()) as upstream,
    ):
        sys.stdout.write(f"{backend.url} {upstream.url}\n")
        sys.stdout.flush()
        sys.stdin.read()


if __name__ == "__main__":
    main()
