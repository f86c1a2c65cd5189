"""`AiohttpTransport`: an httpx async transport over aiohttp's client.

httpx's own async pool (httpcore) checks every pooled connection on each
request, so its cost grows with the number of connections a proxy holds;
the bench (``bench/``) measured it far behind aiohttp's client at 64
connections already. This transport keeps httpx's models and transport
interface and lets aiohttp's pool and C parser move the bytes.

It is a proxy's transport, not a browser's: no cookie jar, no automatic
``Accept``, ``Accept-Encoding`` or ``User-Agent`` headers, no
decompression (bodies are relayed as sent), no proxies from the
environment, and the URL is sent exactly as given.

Installed with the ``aiohttp`` extra; ``import offloader`` never imports
aiohttp, only using this transport does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import logging
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
import aiohttp.abc
import aiohttp.client_proto
import aiohttp.client_reqrep
import aiohttp.payload
import httpx
import yarl

from ._netguard import IDEMPOTENT_METHODS, _parse_address, log_retry

if TYPE_CHECKING:
    from ._policy import DestinationPolicy

__all__ = ["AiohttpTransport"]

logger = logging.getLogger("offloader")

# aiohttp frames the body itself: a Transfer-Encoding from the request
# would clash with the framing it chooses.
_NOT_SENT = frozenset({b"transfer-encoding"})

# SO_LINGER on, with no time to linger: closing the socket resets it.
_RESET = struct.pack("ii", 1, 0)

# Headers aiohttp would otherwise add on its own.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")


class _GuardedResolver(aiohttp.abc.AbstractResolver):
    """Resolve with aiohttp's default resolver, then check every address
    with the policy; aiohttp connects only to the addresses returned."""

    def __init__(self, policy: DestinationPolicy) -> None:
        self.policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self,
        host: str,
        port: int = 0,
        family: socket.AddressFamily = socket.AF_INET,
    ) -> list[aiohttp.abc.ResolveResult]:
        infos = await self._inner.resolve(host, port, family)
        for info in infos:
            self.policy.check_address(_parse_address(info["host"]), host=host)
        return infos

    async def close(self) -> None:
        await self._inner.close()


class _Handler(aiohttp.client_proto.ResponseHandler):
    """aiohttp's connection protocol, resetting an abandoned connection.

    asyncio closes a socket only once its queued bytes are sent, and the
    kernel, once closed, still holds the unsent bytes and the FIN behind
    them. So a request abandoned mid-body (a deadline, a client gone) to
    a server that has stopped reading would keep its socket for as long
    as that server keeps the connection open, and the server would never
    learn that it was given up. Those bytes are never wanted: such a
    connection is reset instead.
    """

    def close(self) -> None:
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, _RESET
                    )
            self.abort()
        else:
            super().close()


class _Request(aiohttp.ClientRequest):
    """aiohttp's request, whose body writer never ends with an error
    nobody reads.

    aiohttp writes a body in a task of its own and reports a failure to
    write it through the response, which fails too, since the writer
    closes the connection. Only the last step, the end of the body, can
    fail after the response has already failed or been read in full
    (the server closed the connection as the body ended): the task then
    ends with an error that no one collects, which asyncio logs as
    "Task exception was never retrieved". Such an error tells nothing
    the response has not: it is logged at DEBUG and dropped.
    """

    async def write_bytes(self, *args: Any, **kwargs: Any) -> None:
        # Limitation: `write_bytes` is a public method of aiohttp's but
        # not a documented one; its arguments changed in 3.11, hence
        # *args.
        try:
            await super().write_bytes(*args, **kwargs)
        except (aiohttp.ClientConnectionError, OSError) as exc:
            logger.debug(
                "the connection closed as the body of %s %s ended: %r",
                self.method,
                self.url,
                exc,
            )


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, keeping at most *max_idle* idle connections.

    aiohttp keeps every connection given back until it expires. After a
    burst, a proxy would then hold as many idle connections as it had
    requests in flight, each a file descriptor that the next burst's
    clients need.
    """

    def __init__(self, *, max_idle: int | None, **options: Any) -> None:
        super().__init__(**options)
        self.max_idle = max_idle
        # The protocol class is a private attribute of aiohttp's.
        self._factory = functools.partial(  # type: ignore[assignment]
            _Handler, loop=self._loop
        )

    def _release(
        self,
        key: aiohttp.client_reqrep.ConnectionKey,
        protocol: aiohttp.client_proto.ResponseHandler,
        *,
        should_close: bool = False,
    ) -> None:
        # Limitation: the count of idle connections and this hook are
        # private parts of aiohttp (3.10 to 3.14 keep them as they are).
        if (
            not should_close
            and self.max_idle is not None
            and sum(map(len, self._conns.values())) >= self.max_idle
        ):
            should_close = True
        super()._release(key, protocol, should_close=should_close)

    async def _create_connection(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.client_proto.ResponseHandler:
        # Limitation: a private hook of aiohttp's (3.10 to 3.14); should
        # it change, every failed request counts as one on a reused
        # connection, as with aiohttp's own retry.
        _opened_connection.set(True)
        return await super()._create_connection(req, traces, timeout)


#: Whether the current task opened a connection since its request was
#: handed to aiohttp: aiohttp opens a connection in the task of the
#: request it is for, so after a failure, `False` means the request went
#: out on a connection an earlier request had used.
_opened_connection: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "offloader_aiohttp_opened_connection", default=False
)


def _is_stale_connection_retry(
    exc: Exception, request: httpx.Request, upload: _Upload | None
) -> bool:
    """Whether *request*, which failed with *exc*, should be sent once
    more on a new connection: the rule of `offloader._netguard`'s pools.

    Yes only if the reused connection it went out on was closed under it
    before any answer, the method is idempotent and the body is in
    memory. aiohttp's own retry is off (see `_make_session`), because it
    would also send again a request whose new connection failed.
    """
    return (
        isinstance(
            exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
        )
        and not isinstance(exc, aiohttp.ClientConnectorError)
        and not _opened_connection.get()
        and upload is None
        and request.method in IDEMPOTENT_METHODS
    )


def _map_exception(
    exc: BaseException, request: httpx.Request, *, sending: bool
) -> Exception | None:
    """Return the httpx exception for what aiohttp raised, or `None`."""
    message = str(exc) or type(exc).__name__
    mapped: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        mapped = httpx.ConnectTimeout
    elif isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        mapped = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        mapped = httpx.ConnectError
    elif isinstance(exc, aiohttp.InvalidURL):
        mapped = httpx.UnsupportedProtocol
    elif isinstance(
        exc,
        (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientResponseError,
        ),
    ):
        mapped = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientError):
        mapped = httpx.WriteError if sending else httpx.ReadError
    else:
        return None
    return mapped(message, request=request)


def _raise_translated(
    exc: Exception, request: httpx.Request, *, sending: bool
) -> NoReturn:
    """Raise, for *exc* that aiohttp raised, what an httpx caller expects.

    Called from ``except`` clauses rather than being a context manager:
    it wraps every request, twice, and a generator-based context manager
    costs more than the clause.
    """
    cause = exc.__cause__
    if isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(
        cause, (OSError, aiohttp.ClientError, type(None))
    ):
        # The request body's own iterator failed (a size limit, the
        # backend): that error is the one to report, not the write.
        raise cause from None
    mapped = _map_exception(exc, request, sending=sending)
    if mapped is None:
        raise exc
    raise mapped from exc


class _ResponseStream(httpx.AsyncByteStream):
    """An aiohttp response body as an httpx stream, chunk as received."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        request: httpx.Request,
        release: Callable[[], None],
    ) -> None:
        self._response: aiohttp.ClientResponse | None = response
        self._request = request
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._response is None:
            raise httpx.StreamClosed()
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except Exception as exc:
            _raise_translated(exc, self._request, sending=False)

    async def aclose(self) -> None:
        response = self._response
        if response is None:
            return
        # Dropped at once: a backend response is closed before its
        # offload is sent, and its aiohttp object (headers, URL, body
        # buffer) would otherwise stay alive as long as the offload.
        self._response = None
        try:
            if response.content.at_eof():
                # Fully read: the connection goes back to the pool.
                response.release()
            else:
                # Part of the body is still on the wire: the connection
                # cannot be reused.
                response.close()
        finally:
            self._release()


class _Upload(aiohttp.payload.AsyncIterablePayload):
    """A streamed request body, read in a task of its own.

    aiohttp sends a body from its writer task while it waits for the
    response, and once a whole response has arrived it cancels that
    task, body sent or not. A cancellation landing in the body's own
    iterator would end it for good: an ASGI app's request body, say,
    could then never be read to its end, and its client's hanging up
    never be seen. So a pump task reads the body into a one-chunk queue
    that the writer takes from, and `finish` can read what is left once
    the writer is gone, as httpx's own transport sends a body whole
    before it reads the response.
    """

    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self.failure: Exception | None = None
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(1)
        self._written: asyncio.Future[None] = loop.create_future()
        self.pump = loop.create_task(self._pump(stream))
        super().__init__(self._chunks())

    async def _pump(self, stream: httpx.AsyncByteStream) -> None:
        try:
            async for chunk in stream:
                await self._queue.put(chunk)
        except Exception as exc:
            self.failure = exc
        await self._queue.put(None)

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk
        if self.failure is not None:
            # aiohttp wraps it; `_raise_translated` or `finish` raise it
            # as is.
            raise self.failure

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        try:
            await super().write(writer)
        finally:
            self._writer_gone()

    async def write_with_length(
        self,
        writer: aiohttp.abc.AbstractStreamWriter,
        content_length: int | None,
    ) -> None:
        try:
            await super().write_with_length(writer, content_length)
        finally:
            self._writer_gone()

    def _writer_gone(self) -> None:
        if not self._written.done():
            self._written.set_result(None)

    async def finish(self) -> None:
        """Wait until the whole body is read, reading and dropping what
        the writer left, and raise the body's own error, if any."""
        if not self.pump.done():
            await asyncio.wait(
                (self.pump, self._written),
                return_when=asyncio.FIRST_COMPLETED,
            )
            # With the writer gone, nothing takes from the queue: what
            # is left of the body is read here and dropped, since the
            # server has answered without it.
            while not self.pump.done():
                await self._queue.get()
        if self.failure is not None:
            raise self.failure

    def cancel(self) -> None:
        """Stop reading the body: the request is abandoned."""
        self.pump.cancel()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx async transport whose connections are aiohttp's.

    Args:
        limits: ``max_connections`` caps the connections of the pool
            (`None`: no cap) and ``keepalive_expiry`` closes idle ones.
        verify: An `ssl.SSLContext`, or `False` to skip certificate
            checks (tests only); by default the system's trust store
            through `httpx.create_ssl_context`.
        policy: When given and it has address rules, every name is
            resolved once, all its addresses are checked, and only
            checked addresses are connected to. Literal addresses in
            URLs are the policy's own `DestinationPolicy.check` to judge.
        session: An aiohttp session to use instead of one of the
            transport's own; it is not closed by `aclose`.

    Per-request timeouts come from the request's ``timeout`` extension
    as httpx sets it: ``pool`` bounds the wait for a free connection
    (then `httpx.PoolTimeout`), ``connect`` the TCP and TLS handshake,
    ``read`` each read.

    Limitation: aiohttp has no write timeout, so ``write`` is not
    applied; only HTTP/1.1 is spoken.

    ``max_keepalive_connections`` caps the idle connections kept: past
    it, a connection given back is closed.

    A streamed request body is sent whole before the response is
    returned, as with httpx's own transport, even when the server answers
    early; an error of the body's iterator is raised as is. A request
    abandoned with bytes still unsent aborts its connection.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits | None = None,
        verify: ssl.SSLContext | bool = True,
        policy: DestinationPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.limits = limits or httpx.Limits(max_connections=None)
        if isinstance(verify, ssl.SSLContext):
            self._ssl: ssl.SSLContext | bool = verify
        elif verify:
            self._ssl = httpx.create_ssl_context(trust_env=False)
        else:
            self._ssl = False
        self.policy = policy
        self._session = session
        self._owns_session = session is None
        # The connection cap is kept here rather than by aiohttp, whose
        # wait for a free connection cannot be told from a slow connect:
        # a full pool must be a PoolTimeout (503), not a timeout (504).
        # A plain count, since asyncio.Semaphore looks at its waiters on
        # every acquire; requests wait in line only when the pool is full.
        self._in_use = 0
        self._waiting: collections.deque[asyncio.Future[None]] = (
            collections.deque()
        )

    def connection_counts(self) -> tuple[int, int]:
        """Return the connections in use by requests, and the idle open
        ones kept for reuse (what ``offloader_pool_connections``
        reports)."""
        connector = None if self._session is None else self._session.connector
        # Limitation: aiohttp keeps its idle connections in a private
        # attribute of its connector; a closed one stays there until the
        # connector next looks, so only connected ones are counted.
        entries = getattr(connector, "_conns", {}).values()
        idle = sum(
            1
            for queue in entries
            for protocol, _ in queue
            if protocol.is_connected()
        )
        return self._in_use, idle

    def _release_slot(self) -> None:
        # A freed slot goes to the first request still waiting, if any.
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_use -= 1

    async def _acquire_slot(
        self, request: httpx.Request, timeout: float | None
    ) -> None:
        cap = self.limits.max_connections
        if cap is None or (self._in_use < cap and not self._waiting):
            self._in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except BaseException as exc:
            if waiter.done():
                # The slot came as the wait ended: pass it on.
                self._release_slot()
            else:
                waiter.cancel()
            if isinstance(exc, asyncio.TimeoutError):
                raise httpx.PoolTimeout(
                    "no connection became free in time", request=request
                ) from None
            raise

    def _make_session(self) -> aiohttp.ClientSession:
        resolver = None
        if self.policy is not None and self.policy.checks_addresses:
            resolver = _GuardedResolver(self.policy)
        connector = _Connector(
            max_idle=self.limits.max_keepalive_connections,
            limit=0,
            limit_per_host=0,
            keepalive_timeout=self.limits.keepalive_expiry or 15.0,
            ssl=self._ssl,
            resolver=resolver,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None),
            request_class=_Request,
        )
        # aiohttp sends an idempotent request a second time when the
        # server drops the connection before answering, even when that
        # connection was opened for it: the server then failed for real,
        # and a proxy must not double the load on it.
        # `handle_async_request` sends again only in the case that is
        # safe (see `_is_stale_connection_retry`). Limitation: aiohttp
        # offers this switch only as a private attribute (its own test
        # client sets it); without it, aiohttp's retry stays on.
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        return session

    async def handle_async_request(
        self, request: httpx.Request
    ) -> httpx.Response:
        """Send *request*; the response body streams as it arrives."""
        if self._session is None:
            self._session = self._make_session()
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() not in _NOT_SENT
        ]
        data: Any
        upload: _Upload | None = None
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            stream = request.stream
            assert isinstance(stream, httpx.AsyncByteStream)
            data = upload = _Upload(stream)
        timeout = request.extensions.get("timeout", {})
        connect = timeout.get("connect")
        pool = timeout.get("pool")
        timeouts = aiohttp.ClientTimeout(
            total=None, sock_connect=connect, sock_read=timeout.get("read")
        )
        url = yarl.URL(str(request.url), encoded=True)
        options: dict[str, Any] = {
            "headers": headers,
            "data": data,
            "allow_redirects": False,
            "timeout": timeouts,
        }
        await self._acquire_slot(request, pool)
        try:
            _opened_connection.set(False)
            try:
                response = await self._session.request(
                    request.method, url, **options
                )
            except Exception as exc:
                if not _is_stale_connection_retry(exc, request, upload):
                    _raise_translated(exc, request, sending=True)
                log_retry(request.method, str(request.url), exc)
                try:
                    response = await self._session.request(
                        request.method, url, **options
                    )
                except Exception as exc:
                    _raise_translated(exc, request, sending=True)
            if upload is not None and not upload.pump.done():
                await self._finish_upload(upload, response)
        except BaseException:
            if upload is not None:
                upload.cancel()
            self._release_slot()
            raise
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1")
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_ResponseStream(response, request, self._release_slot),
            extensions=extensions,
            request=request,
        )

    @staticmethod
    async def _finish_upload(
        upload: _Upload, response: aiohttp.ClientResponse
    ) -> None:
        """Wait until a body the server answered early is sent, as
        httpx's own transport sends a body whole before it reads.

        The caller thus sees what ends the body (its iterator's error,
        such as a client gone mid-upload) where it would with httpx, and
        an abandoned request closes its connection rather than leaving
        the body's iterator waiting.
        """
        try:
            await upload.finish()
        except BaseException:
            response.close()
            raise

    async def aclose(self) -> None:
        """Close the pool, if this transport made it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None
