"""An offloading reverse proxy as an ASGI application, and its pieces.

`OffloadProxy` forwards every request to one backend and applies an
`Offloader` to each backend response: a response that asks for an offload
is replaced by the offload server's answer, streamed to the client as it
arrives. Serve it with any ASGI server; ``offloader serve`` runs it on
uvicorn.

The pieces it is built from are public, so that a proxy loop in another
framework takes a few lines (see ``examples/``):

- `backend_request` turns an incoming request into an `httpx.Request` for
  the backend (`request_from_scope` does it from an ASGI scope);
- `response_headers` gives the headers of an `httpx.Response` that may be
  relayed to a client, and `relay_response` relays one to an ASGI
  ``send``;
- `error_response` maps an exception to a short, generic answer.

This module imports only httpx, attrs, anyio (a dependency of httpx,
for cancellation that httpcore's clean-up respects) and the standard
library.

Logging, under the ``offloader`` logger: a failed backend request or an
aborted response at WARNING, with the details that the client never sees;
client disconnects at DEBUG. The core logs failed offloads itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    MutableMapping,
    Sequence,
)
from typing import Any, TypeAlias
from urllib.parse import quote

import anyio
import attrs
import httpx

from .._deadlines import cancel_scope
from .._errors import OffloadCapacityExceeded, OffloadError
from .._headers import HOP_BY_HOP_HEADERS, HeadersInput, header_pairs
from .._netguard import make_async_transport
from .._offloader import Offloader
from .._policy import DestinationPolicy

__all__ = [
    "DEFAULT_BACKEND_LIMITS",
    "DEFAULT_BACKEND_TIMEOUT",
    "DEFAULT_OFFLOAD_LIMITS",
    "ClientDisconnected",
    "ErrorResponse",
    "OffloadProxy",
    "Receive",
    "Scope",
    "Send",
    "backend_request",
    "default_max_requests",
    "error_response",
    "relay_response",
    "request_from_scope",
    "response_headers",
]

logger = logging.getLogger("offloader")

#: The ASGI callables and scope, typed loosely as the ASGI spec does.
Scope: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send: TypeAlias = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_Timeouts: TypeAlias = httpx.Timeout | float | None

#: Timeouts of backend requests. A backend that offloads answers at once;
#: one that does the work itself may take a while. A request waits up to
#: 15 s for one of the backend connections (`DEFAULT_BACKEND_LIMITS`): a
#: burst of thousands of requests queues there while the proxy's core
#: works through it, which took about 5 s for 9,000 requests at once on
#: the bench's machine (a 5 s wait turned some of them into 503s).
#: `OffloadProxy`'s *max_requests* still bounds that queue.
DEFAULT_BACKEND_TIMEOUT = httpx.Timeout(60.0, connect=5.0, pool=15.0)

#: The proxy's pool of backend connections. A backend that offloads
#: answers at once, so few connections serve many requests; the cap keeps
#: a burst of thousands of requests, queued while the proxy is busy, from
#: opening as many backend connections and using up the file
#: descriptors that held offloads need (past it, a request waits for a
#: connection, then gets 503). Idle connections are dropped after 4 s,
#: before the servers' own keep-alive timeouts (uvicorn's is 5 s) close
#: them under a request.
DEFAULT_BACKEND_LIMITS = httpx.Limits(
    max_connections=1024,
    max_keepalive_connections=256,
    keepalive_expiry=4.0,
)

#: The pool of the offloader a proxy makes for itself: as many
#: connections as offloads it may hold, idle ones dropped after 4 s.
DEFAULT_OFFLOAD_LIMITS = httpx.Limits(
    max_connections=10_000,
    max_keepalive_connections=256,
    keepalive_expiry=4.0,
)

_HOP_BY_HOP = frozenset(name.encode("latin-1") for name in HOP_BY_HOP_HEADERS)
# Request headers the proxy sets itself rather than copies.
_REPLACED = frozenset({b"host", b"x-forwarded-proto", b"x-forwarded-host"})
_STRIPPED_PREFIXES = (b"offload-",)
_REASONS = {
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class ClientDisconnected(Exception):
    """The client went away before its request body was read to the end."""


# -- requests ---------------------------------------------------------------


def _connection_named(pairs: Sequence[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in pairs:
        if name == b"connection":
            named.update(
                token.strip().lower()
                for token in value.split(b",")
                if token.strip()
            )
    return named


def _forward_headers(
    pairs: Sequence[tuple[bytes, bytes]],
    client_host: str | None,
    scheme: str,
    preserve_host: bool,
) -> list[tuple[bytes, bytes]]:
    """The headers to send to the backend; *pairs* have lowercase names."""
    named = _connection_named(pairs)
    headers: list[tuple[bytes, bytes]] = []
    forwarded_for: list[bytes] = []
    host: bytes | None = None
    for name, value in pairs:
        if name in _HOP_BY_HOP or name in named:
            continue
        if name in _REPLACED:
            if name == b"host":
                host = value
            continue
        if name == b"x-forwarded-for":
            # Limitation: a client's own X-Forwarded-For is kept and
            # extended, so only its last entry is the proxy's word.
            forwarded_for.append(value)
            continue
        headers.append((name, value))
    if client_host:
        forwarded_for.append(client_host.encode("latin-1"))
    if forwarded_for:
        headers.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    headers.append((b"x-forwarded-proto", scheme.encode("latin-1")))
    if host is not None:
        headers.append((b"x-forwarded-host", host))
        if preserve_host:
            headers.append((b"host", host))
    return headers


def _timeout_extension(
    timeout: httpx.Timeout | float | None,
) -> dict[str, float | None]:
    return httpx.Timeout(timeout).as_dict()


def _join_target(
    base: httpx.URL, target: bytes, prefix: bytes | None = None
) -> httpx.URL:
    """*base* with *target* appended to its path; *prefix*, if given, is
    ``base.raw_path`` without its trailing slashes, worked out before."""
    if prefix is None:
        prefix = base.raw_path.rstrip(b"/")
    if not target.startswith(b"/"):
        target = b"/" + target
    return base.copy_with(raw_path=prefix + target)


def backend_request(
    backend: httpx.URL | str,
    method: str,
    target: bytes | str,
    headers: HeadersInput,
    *,
    content: bytes | AsyncIterable[bytes] | None = None,
    client_host: str | None = None,
    scheme: str = "http",
    preserve_host: bool = False,
    timeout: httpx.Timeout | float | None = DEFAULT_BACKEND_TIMEOUT,
) -> httpx.Request:
    """Build the backend's copy of an incoming request.

    Hop-by-hop headers, and any header named in ``Connection``, are
    dropped; ``X-Forwarded-For`` gets the client's address appended;
    ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are set. ``Host`` is
    the backend's own unless *preserve_host*.

    Args:
        backend: The backend's base URL. A path in it prefixes *target*.
        method: The incoming request's method.
        target: The incoming request's path and query, as received
            (escapes kept), for instance ``b"/search?q=a%20b"``.
        headers: The incoming request's headers, in any shape the parsers
            accept.
        content: The body: bytes, or an async iterable that streams it.
            A ``Content-Length`` among *headers* is kept; without one, a
            streamed body is sent chunked. As in HTTP/1.1, a streamed
            body is not read at all when *headers* have neither
            ``Content-Length`` nor ``Transfer-Encoding``.
        client_host: The client's address, for ``X-Forwarded-For``.
        scheme: The scheme the client used, for ``X-Forwarded-Proto``.
        preserve_host: Send the client's ``Host`` instead of the
            backend's.
        timeout: The backend request's timeouts.
    """
    base = backend if isinstance(backend, httpx.URL) else httpx.URL(backend)
    if isinstance(target, str):
        target = target.encode("latin-1")
    pairs = [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in header_pairs(headers)
    ]
    if content is not None and not isinstance(content, bytes):
        if not any(
            name in (b"content-length", b"transfer-encoding")
            for name, _ in pairs
        ):
            # HTTP/1.1 framing: a request with neither header has no
            # body. Sending the stream would make httpx send an empty
            # chunked body, which some backends refuse on a GET.
            content = None
        else:
            # httpx wants an async iterator; a framework's stream may
            # only be an async iterable.
            content = _iterate(content)
    return httpx.Request(
        method,
        _join_target(base, target),
        headers=_forward_headers(pairs, client_host, scheme, preserve_host),
        content=content,
        extensions={"timeout": _timeout_extension(timeout)},
    )


async def _iterate(body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for chunk in body:
        yield chunk


async def _receive_body(
    first: bytes,
    receive: Receive,
    on_end: Callable[[], object] | None = None,
) -> AsyncIterator[bytes]:
    """Stream a request body from ASGI ``receive``, chunk by chunk."""
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client disconnected mid-body")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            break
    if on_end is not None:
        on_end()


def _target_of(scope: Scope) -> bytes:
    path: bytes | None = scope.get("raw_path")
    if not path:
        # Servers that give no raw path give the decoded one.
        path = quote(scope["path"], safe="/:@!$&'()*+,;=~").encode("ascii")
    query: bytes = scope.get("query_string", b"")
    return path + b"?" + query if query else path


def _client_host(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


async def request_from_scope(
    scope: Scope,
    receive: Receive,
    backend: httpx.URL | str,
    *,
    preserve_host: bool = False,
    # The backend request's timeouts, not a deadline of this call:
    timeout: _Timeouts = DEFAULT_BACKEND_TIMEOUT,  # noqa: ASYNC109
) -> httpx.Request:
    """Build the backend's copy of an ASGI HTTP request.

    The first body message is read here; the rest of the body streams
    from *receive* as the request is sent, and a disconnect midway raises
    `ClientDisconnected` from the sending. See `backend_request`.
    """
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected("the client disconnected before its body")
    first = message.get("body", b"")
    content: bytes | AsyncIterable[bytes] = (
        _receive_body(first, receive)
        if message.get("more_body", False)
        else first
    )
    return backend_request(
        backend,
        scope["method"],
        _target_of(scope),
        scope["headers"],
        content=content,
        client_host=_client_host(scope),
        scheme=scope.get("scheme", "http"),
        preserve_host=preserve_host,
        timeout=timeout,
    )


# -- responses --------------------------------------------------------------


def response_headers(
    response: httpx.Response,
    *,
    strip_prefixes: Sequence[str] = (),
) -> list[tuple[bytes, bytes]]:
    """Return the headers of *response* that may go to a client.

    Hop-by-hop headers, any header named in ``Connection``, and every
    ``Offload-*`` header (plus names starting with *strip_prefixes*) are
    dropped. ``Content-Length`` and ``Content-Encoding`` are kept: relay
    the raw body (`httpx.Response.aiter_raw`), not the decoded one.
    """
    prefixes = _STRIPPED_PREFIXES + tuple(
        prefix.lower().encode("latin-1") for prefix in strip_prefixes
    )
    return _client_headers(response.headers.raw, prefixes)


def _client_headers(
    raw: list[tuple[bytes, bytes]], prefixes: tuple[bytes, ...]
) -> list[tuple[bytes, bytes]]:
    lowered = [(name.lower(), value) for name, value in raw]
    named = _connection_named(lowered)
    return [
        (name, value)
        for name, value in lowered
        if name not in _HOP_BY_HOP
        and name not in named
        and not name.startswith(prefixes)
    ]


async def relay_response(
    response: httpx.Response,
    send: Send,
    *,
    strip_prefixes: Sequence[str] = (),
) -> None:
    """Relay *response* to an ASGI ``send``, one chunk as it arrives.

    The headers are those of `response_headers`. If the body fails after
    the response started, the error propagates and the response is left
    unfinished: let it propagate, so that the server closes the
    connection and the client sees a truncated response, never a clean
    short one. The caller closes *response*.
    """
    prefixes = _STRIPPED_PREFIXES + tuple(
        prefix.lower().encode("latin-1") for prefix in strip_prefixes
    )
    await _relay(response, send, prefixes)


async def _relay(
    response: httpx.Response, send: Send, prefixes: tuple[bytes, ...]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": _client_headers(response.headers.raw, prefixes),
        }
    )
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    # Limitation: HTTP trailers are not relayed; httpx drops them.
    async for chunk in stream:
        if chunk:
            await send(
                {
                    "type": "http.response.body",
                    "body": chunk,
                    "more_body": True,
                }
            )
    await send({"type": "http.response.body", "body": b""})


# -- errors -----------------------------------------------------------------


@attrs.frozen
class ErrorResponse:
    """A short, generic answer to a request the proxy could not serve.

    Attributes:
        status_code: 502, 503, 504, or 500 for a bug.
        headers: ``Content-Type``, ``Content-Length``, and ``Retry-After``
            for 503, as string pairs.
        body: The status's reason phrase: it names no URL or header.
    """

    status_code: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as ASGI byte pairs."""
        return [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in self.headers
        ]


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, OffloadError):
        return exc.status_code
    if isinstance(exc, httpx.PoolTimeout):
        return 503
    if isinstance(exc, httpx.TimeoutException):
        return 504
    if isinstance(exc, httpx.HTTPError):
        return 502
    return 500


def error_response(
    exc: BaseException, *, retry_after: int = 1
) -> ErrorResponse:
    """Map what went wrong while proxying to the answer a client gets.

    An `OffloadError` gives its own status (502; `OffloadTimeout` 504;
    `OffloadCapacityExceeded` 503). A failed backend request gives 502,
    or 504 when it timed out, or 503 when no pooled connection became
    free. Anything else is a bug: 500. The details are for the log.

    Args:
        exc: What was raised.
        retry_after: Seconds for the ``Retry-After`` header of a 503.
    """
    status = _status_of(exc)
    body = _REASONS[status] + b"\n"
    headers = [
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(body))),
    ]
    if status == 503:
        headers.append(("retry-after", str(retry_after)))
    return ErrorResponse(status, tuple(headers), body)


# -- the proxy --------------------------------------------------------------


#: The answer to a request the server gave up on as it shut down.
_SHUTTING_DOWN = error_response(
    OffloadCapacityExceeded("the proxy is shutting down")
)

#: Seconds an exchange runs before the proxy starts watching its client
#: for a disconnect.
WATCH_DELAY = 0.25


def default_max_requests(
    backend_connections: int | None = DEFAULT_BACKEND_LIMITS.max_connections,
) -> int:
    """How many requests one proxy process may hold, from its FD limit.

    A held request costs two file descriptors (client and offload
    server). The backend's connections are set aside first (at most
    *backend_connections*; `None` for no cap counts as 1,024), and a
    margin for idle pools, logs and the listener.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 1000
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:  # pragma: no cover
        return 10_000
    reserved = 512 + (
        1024 if backend_connections is None else backend_connections
    )
    return max(16, (soft - reserved) // 2)


class _Exchange:
    """The state of one proxied request, shared with its watcher."""

    __slots__ = (
        "cancel_scope",
        "disconnected",
        "finished",
        "started",
        "watch_timer",
        "watcher",
    )

    def __init__(self, cancel_scope: anyio.CancelScope) -> None:
        self.cancel_scope = cancel_scope
        self.watch_timer: asyncio.TimerHandle | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.finished = False
        self.disconnected = False
        #: Whether the answer's start went to the client.
        self.started = False


async def _watch(receive: Receive, exchange: _Exchange) -> None:
    """Cancel the exchange as soon as its client disconnects."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
    if not exchange.finished:
        exchange.disconnected = True
        exchange.cancel_scope.cancel()


class OffloadProxy:
    """An ASGI application forwarding every request to one backend.

    Each backend response goes through `Offloader.amodify_response`, and
    the result (the backend's own answer, or the offload server's) is
    relayed to the client chunk by chunk. Request bodies stream to the
    backend as they arrive.

    Errors become short plain-text answers (see `error_response`); an
    error after the response started aborts the client's connection. A
    client that disconnects cancels the backend and offload requests at
    once. Past *max_requests* requests in flight, new ones get 503 with
    ``Retry-After`` at once, so that running out of file descriptors
    never turns into a storm of failures.

    Args:
        backend: The backend's base URL.
        offloader: The offloader to apply. By default one whose policy
            allows offloads only to the backend's own host, over http or
            https, with `DEFAULT_OFFLOAD_LIMITS`.
        backend_transport: The transport that reaches the backend; by
            default an `httpx.AsyncHTTPTransport` with
            `DEFAULT_BACKEND_LIMITS`, no retries and no proxy from the
            environment.
        backend_timeout: Timeouts of backend requests.
        preserve_host: Send the client's ``Host`` to the backend instead
            of the backend's own.
        max_requests: The most requests in flight; by default
            `default_max_requests`.
        retry_after: Seconds sent in ``Retry-After`` with each 503.
        strip_header_prefixes: More header-name prefixes never relayed
            to clients, beside ``Offload-``.

    The proxy closes its offloader and backend transport, given or made,
    on ASGI lifespan shutdown or `aclose`, as `httpx.AsyncClient` closes
    its transport.
    """

    def __init__(
        self,
        backend: httpx.URL | str,
        *,
        offloader: Offloader | None = None,
        backend_transport: httpx.AsyncBaseTransport | None = None,
        backend_timeout: httpx.Timeout | float | None = (
            DEFAULT_BACKEND_TIMEOUT
        ),
        preserve_host: bool = False,
        max_requests: int | None = None,
        retry_after: int = 1,
        strip_header_prefixes: Sequence[str] = (),
    ) -> None:
        self.backend = httpx.URL(backend)
        self._path_prefix = self.backend.raw_path.rstrip(b"/")
        if self.backend.scheme not in ("http", "https"):
            raise ValueError(
                f"the backend must be an http or https URL, not {backend!r}"
            )
        self.offloader = offloader or Offloader(
            policy=DestinationPolicy(hosts=(self.backend.host,)),
            limits=DEFAULT_OFFLOAD_LIMITS,
        )
        # The same pool as the offloader's: it closes the connections a
        # cancelled request would otherwise leak (see ReclaimingAsyncPool).
        self.backend_transport = backend_transport or make_async_transport(
            DestinationPolicy(), DEFAULT_BACKEND_LIMITS
        )
        self.preserve_host = preserve_host
        self.max_requests = max_requests or default_max_requests()
        if self.max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        self.retry_after = retry_after
        self._timeout = _timeout_extension(backend_timeout)
        self._prefixes = _STRIPPED_PREFIXES + tuple(
            prefix.lower().encode("latin-1")
            for prefix in strip_header_prefixes
        )
        self._active = 0

    def __repr__(self) -> str:
        return f"<OffloadProxy backend={str(self.backend)!r}>"

    @property
    def active(self) -> int:
        """The number of requests in flight."""
        return self._active

    async def aclose(self) -> None:
        """Close the backend transport and the offloader."""
        await self.backend_transport.aclose()
        await self.offloader.aclose()

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        kind = scope["type"]
        if kind == "http":
            if self._active >= self.max_requests:
                logger.warning(
                    "refusing a request: %d requests in flight", self._active
                )
                await _send_error(
                    send,
                    error_response(
                        OffloadCapacityExceeded("the proxy is full"),
                        retry_after=self.retry_after,
                    ),
                )
                return
            self._active += 1
            try:
                await self._proxy(scope, receive, send)
            finally:
                self._active -= 1
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # Limitation: WebSocket upgrades are not proxied; the
            # handshake is refused (403).
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _start_watching(self, receive: Receive, exchange: _Exchange) -> None:
        # Most exchanges end within milliseconds; a watcher task for each
        # cost a tenth of the proxy's CPU time per request (bench/). It is
        # started only for an exchange still running after a moment, so
        # a disconnect is seen at most `WATCH_DELAY` later.
        exchange.watch_timer = asyncio.get_running_loop().call_later(
            WATCH_DELAY, self._spawn_watcher, receive, exchange
        )

    @staticmethod
    def _spawn_watcher(receive: Receive, exchange: _Exchange) -> None:
        exchange.watch_timer = None
        if not exchange.finished:
            exchange.watcher = asyncio.get_running_loop().create_task(
                _watch(receive, exchange)
            )

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The exchange is cancelled through an anyio cancel scope, not
        # with Task.cancel: httpcore and anyio shield their clean-up (and
        # a connection being opened) from anyio's cancellation only, and
        # a bare Task.cancel landing there leaks the socket.
        exchange: _Exchange | None = None
        try:
            with cancel_scope() as exchange_scope:
                exchange = _Exchange(exchange_scope)
                try:
                    await self._exchange(scope, receive, send, exchange)
                finally:
                    exchange.finished = True
                    if exchange.watch_timer is not None:
                        exchange.watch_timer.cancel()
                    if exchange.watcher is not None:
                        exchange.watcher.cancel()
        except asyncio.CancelledError:
            # The proxy cancels its own work through the scope above,
            # which stops there; a cancellation that gets past it comes
            # from the server, whose grace period on shutdown ran out.
            # Answer 503 if nothing was sent yet, and end quietly: a
            # cancelled app is a 500 and a traceback in uvicorn's log.
            logger.warning(
                "shutting down: gave up %s %s", scope["method"], scope["path"]
            )
            if exchange is not None and not exchange.started:
                with contextlib.suppress(Exception):
                    await _send_error(send, _SHUTTING_DOWN)
            return
        if exchange is not None and exchange.disconnected:
            logger.debug(
                "client disconnected: %s %s", scope["method"], scope["path"]
            )

    async def _exchange(
        self, scope: Scope, receive: Receive, send: Send, exchange: _Exchange
    ) -> None:
        response: httpx.Response | None = None
        try:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            first = message.get("body", b"")
            content: bytes | AsyncIterator[bytes]
            if message.get("more_body", False):
                content = _receive_body(
                    first,
                    receive,
                    lambda: self._start_watching(receive, exchange),
                )
            else:
                content = first
                self._start_watching(receive, exchange)
            request = httpx.Request(
                scope["method"],
                _join_target(
                    self.backend, _target_of(scope), self._path_prefix
                ),
                headers=_forward_headers(
                    scope["headers"],
                    _client_host(scope),
                    scope.get("scheme", "http"),
                    self.preserve_host,
                ),
                content=content,
                extensions={"timeout": self._timeout},
            )
            response = await self.backend_transport.handle_async_request(
                request
            )
            response = await self.offloader.amodify_response(response)
            exchange.started = True
            await _relay(response, send, self._prefixes)
        except ClientDisconnected:
            exchange.disconnected = True
        except Exception as exc:
            self._log_error(scope, exc, exchange.started)
            if not exchange.started:
                await _send_error(
                    send, error_response(exc, retry_after=self.retry_after)
                )
            # After the start, returning without finishing the response
            # makes the server close the connection: the client sees a
            # truncated response, not a clean short one.
        finally:
            exchange.finished = True
            if response is not None:
                with cancel_scope(shield=True):
                    await response.aclose()

    @staticmethod
    def _log_error(scope: Scope, exc: Exception, started: bool) -> None:
        method, path = scope["method"], scope["path"]
        if started:
            logger.warning(
                "aborting the response to %s %s: %s", method, path, exc
            )
        elif isinstance(exc, OffloadError):
            # The core has logged the details already.
            logger.debug("%s %s failed: %s", method, path, exc)
        elif isinstance(exc, httpx.HTTPError):
            logger.warning(
                "backend request %s %s failed: %r", method, path, exc
            )
        else:
            logger.error("proxying %s %s failed", method, path, exc_info=exc)


async def _send_error(send: Send, error: ErrorResponse) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": error.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": error.body})
