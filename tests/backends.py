"""Loopback servers, ASGI apps and httpx callers shared by the tests.

A `Site` is a real uvicorn server on 127.0.0.1 whose ASGI app a test
swaps in, so that a module starts its servers once. Each site counts,
on the server side, the responses still being sent and the connections
still open: that is how the tests prove that a backend response was
closed rather than left hanging in a client's pool.

A `Caller` runs requests through one of the four httpx adapters (sync
and async response hook, sync and async transport) behind one sync
interface, so that one contract suite runs against all of them. The
async callers run on an event loop in a portal thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    MutableMapping,
)
from typing import Any, Literal, TypeAlias

import attrs
import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from offloader import Offloader
from offloader.hooks.httpx import (
    AsyncOffloadTransport,
    OffloadTransport,
    hooks,
)
from tests.servers import RunningServer, serve

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers: TypeAlias = Iterable[tuple[str, str]]

#: The sizes of the body chunks the test apps send.
CHUNK = 64 * 1024


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll *check* until it holds or *timeout* passes; return the last."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return check()
        time.sleep(0.01)
    return True


# -- what a server saw --------------------------------------------------------


@attrs.define
class Seen:
    """One request as an ASGI app received it."""

    method: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes] = attrs.field(factory=list)

    @property
    def body(self) -> bytes:
        """The whole request body."""
        return b"".join(self.chunks)

    def header(self, name: str) -> list[str]:
        """Every value of header *name*, in order."""
        wanted = name.lower().encode("latin-1")
        return [
            value.decode("latin-1")
            for key, value in self.headers
            if key.lower() == wanted
        ]

    @property
    def names(self) -> set[str]:
        """The lowercase names of every header received."""
        return {key.decode("latin-1").lower() for key, _ in self.headers}


async def read_request(
    scope: Scope, receive: Receive, on_chunk: Callable[[], None] | None = None
) -> Seen:
    """Receive a whole request, calling *on_chunk* per body chunk."""
    seen = Seen(
        method=scope["method"],
        raw_path=scope["raw_path"],
        query_string=scope["query_string"],
        headers=[(bytes(k), bytes(v)) for k, v in scope["headers"]],
    )
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        if message.get("body"):
            seen.chunks.append(message["body"])
            if on_chunk is not None:
                on_chunk()
        if not message.get("more_body", False):
            break
    return seen


def encode(headers: Headers) -> list[tuple[bytes, bytes]]:
    """ASGI headers from ``(name, value)`` string pairs."""
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in headers
    ]


# -- apps ---------------------------------------------------------------------


@attrs.define(eq=False)
class Responder:
    """An ASGI app that records each request and sends a fixed answer.

    Attributes:
        status: The status to answer with.
        headers: The headers to answer with, as string pairs.
        body: The body, one bytes object per chunk sent.
        delay: Seconds to wait before answering.
        seen: Every request received, in order.
        completed: How many answers were sent to the last byte.
    """

    status: int = 200
    headers: list[tuple[str, str]] = attrs.field(factory=list)
    body: list[bytes] = attrs.field(factory=list)
    delay: float = 0.0
    seen: list[Seen] = attrs.field(factory=list)
    completed: int = 0

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.seen.append(await read_request(scope, receive))
        if self.delay:
            await asyncio.sleep(self.delay)
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": encode(self.headers),
            }
        )
        for chunk in self.body:
            await send(
                {
                    "type": "http.response.body",
                    "body": chunk,
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b""})
        self.completed += 1

    @property
    def last(self) -> Seen:
        """The last request received."""
        assert self.seen, "the app received no request"
        return self.seen[-1]


def big_body(size: int) -> list[bytes]:
    """A body of *size* bytes in `CHUNK`-sized chunks sharing memory."""
    block = bytes(range(256)) * (CHUNK // 256)
    count, rest = divmod(size, CHUNK)
    return [block] * count + ([block[:rest]] if rest else [])


async def hang_until_disconnect(
    scope: Scope, receive: Receive, send: Send
) -> None:
    """Read the request, then answer nothing until the client leaves.

    The app returns when the client closes the connection (or after 10
    seconds), so a test can tell a timed-out offload from a leaked one.
    """
    await read_request(scope, receive)
    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
        await asyncio.wait_for(receive(), 10)


async def stall_body(scope: Scope, receive: Receive, send: Send) -> None:
    """Send the headers and a first chunk, then stall until disconnect."""
    await read_request(scope, receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"x", "more_body": True})
    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
        await asyncio.wait_for(receive(), 10)


async def _not_set(scope: Scope, receive: Receive, send: Send) -> None:
    await read_request(scope, receive)
    await send({"type": "http.response.start", "status": 599, "headers": []})
    await send({"type": "http.response.body", "body": b"no app set"})


# -- sites --------------------------------------------------------------------


class _Switch:
    """The ASGI app of a site: counts requests and runs the current app."""

    def __init__(self) -> None:
        self.app: ASGIApp = _not_set
        self.active = 0
        self.requests = 0

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if scope["type"] != "http":
            return
        self.active += 1
        self.requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class Site:
    """A loopback server running whichever app a test gives it."""

    def __init__(self, server: RunningServer, switch: _Switch) -> None:
        self.server = server
        self._switch = switch
        self.url = server.url

    def use(self, app: ASGIApp) -> None:
        """Answer the next requests with *app*; reset the counters."""
        self._switch.app = app
        self._switch.requests = 0

    @property
    def requests(self) -> int:
        """Requests received since the last `use`."""
        return self._switch.requests

    @property
    def active(self) -> int:
        """Responses the app is still producing."""
        return self._switch.active

    @property
    def open_connections(self) -> int:
        """Connections the server holds open."""
        return self.server.open_connections

    def settled(self, max_connections: int = 1) -> bool:
        """Wait until no response is in progress and at most
        *max_connections* connections are open (an idle pooled one)."""
        return wait_until(
            lambda: (
                self.active == 0 and self.open_connections <= max_connections
            )
        )


@contextlib.contextmanager
def open_site() -> Iterator[Site]:
    """Run a `Site` until the block ends."""
    switch = _Switch()
    # Idle connections outlive any wait of the tests, so that only the
    # client can have closed them.
    with serve(switch, timeout_keep_alive=60) as server:
        yield Site(server, switch)


@attrs.frozen
class Sites:
    """The three servers of an offload: backend, offload server, next hop."""

    backend: Site
    offload: Site
    third: Site


@contextlib.contextmanager
def open_sites() -> Iterator[Sites]:
    """Run a backend, an offload server and a third server."""
    with open_site() as backend, open_site() as offload, open_site() as third:
        yield Sites(backend, offload, third)


# -- callers ------------------------------------------------------------------

AdapterName: TypeAlias = Literal[
    "hook", "async_hook", "transport", "async_transport"
]
ADAPTERS: tuple[AdapterName, ...] = (
    "hook",
    "async_hook",
    "transport",
    "async_transport",
)


@attrs.frozen
class Reply:
    """What a caller got back: status, headers and the body read."""

    status_code: int
    headers: httpx.Headers
    content: bytes


class _CountingTransport(httpx.BaseTransport):
    def __init__(self, sent: list[httpx.URL]) -> None:
        self._sent = sent
        self._transport = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._sent.append(request.url)
        return self._transport.handle_request(request)

    def close(self) -> None:
        self._transport.close()


class _AsyncCountingTransport(httpx.AsyncBaseTransport):
    def __init__(self, sent: list[httpx.URL]) -> None:
        self._sent = sent
        self._transport = httpx.AsyncHTTPTransport()

    async def handle_async_request(
        self, request: httpx.Request
    ) -> httpx.Response:
        self._sent.append(request.url)
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self._transport.aclose()


class Caller:
    """Send requests through one httpx adapter, seen from sync code.

    Attributes:
        adapter: Which adapter this caller uses.
        offloader: The offloader behind the adapter.
        sent: The URLs of every request that went through the caller's
            own hooks or transport (the offload requests must not).
    """

    def __init__(
        self,
        adapter: AdapterName,
        offloader: Offloader,
        portal: BlockingPortal | None,
    ) -> None:
        self.adapter = adapter
        self.offloader = offloader
        self.sent: list[httpx.URL] = []
        self._portal = portal
        self._client: httpx.Client | None = None
        self._async_client: httpx.AsyncClient | None = None
        if adapter == "hook":
            self._client = httpx.Client(
                event_hooks={
                    "request": [self._record],
                    "response": [hooks(offloader).response_hook],
                },
                trust_env=False,
            )
        elif adapter == "transport":
            self._client = httpx.Client(
                transport=OffloadTransport(
                    _CountingTransport(self.sent), offloader
                ),
                trust_env=False,
            )
        elif adapter == "async_hook":
            self._async_client = httpx.AsyncClient(
                event_hooks={
                    "request": [self._arecord],
                    "response": [hooks(offloader).async_response_hook],
                },
                trust_env=False,
            )
        else:
            self._async_client = httpx.AsyncClient(
                transport=AsyncOffloadTransport(
                    _AsyncCountingTransport(self.sent), offloader
                ),
                trust_env=False,
            )

    def __repr__(self) -> str:
        return f"<Caller {self.adapter}>"

    def _record(self, request: httpx.Request) -> None:
        self.sent.append(request.url)

    async def _arecord(self, request: httpx.Request) -> None:
        self.sent.append(request.url)

    def _run(self, step: Callable[[], Awaitable[Reply]]) -> Reply:
        assert self._portal is not None
        return self._portal.call(step)

    def fetch(
        self, url: str, method: str = "GET", headers: Headers = ()
    ) -> Reply:
        """Send a request and read the whole answer."""
        if self._client is not None:
            response = self._client.request(method, url, headers=list(headers))
            return Reply(
                response.status_code, response.headers, response.content
            )
        client = self._async_client
        assert client is not None

        async def fetch() -> Reply:
            response = await client.request(method, url, headers=list(headers))
            return Reply(
                response.status_code, response.headers, response.content
            )

        return self._run(fetch)

    def peek(self, url: str, size: int = 0) -> Reply:
        """Stream a GET, read at most *size* body bytes, then close it."""
        if self._client is not None:
            with self._client.stream("GET", url) as response:
                return Reply(
                    response.status_code,
                    response.headers,
                    _first_bytes(response.iter_raw(), size),
                )
        client = self._async_client
        assert client is not None

        async def peek() -> Reply:
            async with client.stream("GET", url) as response:
                return Reply(
                    response.status_code,
                    response.headers,
                    await _afirst_bytes(response.aiter_raw(), size),
                )

        return self._run(peek)

    def close(self) -> None:
        """Close the client and the offloader."""
        if self._client is not None:
            self._client.close()
            self.offloader.close()
            return
        client = self._async_client
        assert client is not None

        async def close() -> Reply:
            await client.aclose()
            await self.offloader.aclose()
            return Reply(0, httpx.Headers(), b"")

        self._run(close)


def _first_bytes(chunks: Iterator[bytes], size: int) -> bytes:
    got = b""
    if size <= 0:
        return got
    for chunk in chunks:
        got += chunk
        if len(got) >= size:
            break
    return got


async def _afirst_bytes(chunks: AsyncIterator[bytes], size: int) -> bytes:
    got = b""
    if size <= 0:
        return got
    async for chunk in chunks:
        got += chunk
        if len(got) >= size:
            break
    return got


class Callers:
    """Make `Caller`s of one adapter; `close` closes them all."""

    def __init__(self, adapter: AdapterName) -> None:
        self.adapter = adapter
        self._made: list[Caller] = []
        self._portals: contextlib.ExitStack | None = None
        self._portal: BlockingPortal | None = None

    @property
    def is_async(self) -> bool:
        """Whether the adapter is an async one."""
        return self.adapter.startswith("async")

    def __call__(self, **offloader_config: Any) -> Caller:
        """Return a caller whose offloader takes *offloader_config*."""
        if self.is_async and self._portal is None:
            self._portals = contextlib.ExitStack()
            self._portal = self._portals.enter_context(
                start_blocking_portal("asyncio")
            )
        caller = Caller(
            self.adapter, Offloader(**offloader_config), self._portal
        )
        self._made.append(caller)
        return caller

    def close(self) -> None:
        """Close every caller made, then the event loop."""
        for caller in self._made:
            caller.close()
        if self._portals is not None:
            self._portals.close()
