"""`Offloader`: carries out directives with httpx.

The pure steps (parsing, checking the destination, building the offload
request and the final headers) are plain functions of their inputs. The
I/O steps come in a sync and an async form, each a short loop around
them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Iterator,
    Sequence,
)
from typing import Literal, TypeVar

import httpx

from ._deadlines import cancel_scope, deadline_scope
from ._directive import OffloadDirective
from ._errors import (
    BodyTooLarge,
    InvalidDirective,
    OffloadCancelled,
    OffloadCapacityExceeded,
    OffloadError,
    OffloadRequestFailed,
    OffloadTimeout,
)
from ._events import OffloadEvent, OffloadObserver
from ._headers import HOP_BY_HOP_HEADERS, connection_named_headers
from ._parsers import DirectiveParser, OffloadHeaderParser, ParserChain
from ._policy import DestinationPolicy

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "Offloader",
    "amodify_response",
    "modify_response",
]

logger = logging.getLogger("offloader")

#: Per-operation timeouts of offload requests. The offload's total
#: deadline (`Offloader.deadline`, or the directive's timeout) caps them.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0, pool=5.0)

#: One pool per offloader, sized for thousands of concurrent offloads.
DEFAULT_LIMITS = httpx.Limits(
    max_connections=10_000,
    max_keepalive_connections=256,
    keepalive_expiry=15.0,
)

_T = TypeVar("_T")


class _Flight:
    """The book-keeping of one offload, from start to last byte."""

    __slots__ = (
        "bytes_received",
        "finished",
        "method",
        "started",
        "status_code",
        "url",
    )

    def __init__(self, method: str, url: str) -> None:
        self.method = method
        self.url = url
        self.started = time.monotonic()
        self.status_code: int | None = None
        self.bytes_received = 0
        self.finished = False


def _map_error(exc: BaseException, url: str) -> OffloadError:
    """Turn what the I/O raised into the error type callers expect."""
    if isinstance(exc, OffloadError):
        return exc
    if isinstance(exc, httpx.PoolTimeout):
        return OffloadCapacityExceeded(
            f"no pooled connection to {url} became free in time"
        )
    # asyncio.TimeoutError is the builtin TimeoutError only from 3.11 on.
    if isinstance(
        exc, (httpx.TimeoutException, TimeoutError, asyncio.TimeoutError)
    ):
        return OffloadTimeout(f"offload to {url} timed out: {exc!r}")
    if isinstance(exc, asyncio.CancelledError):
        # The caller gave up (a client that disconnected, as a rule):
        # the task's own cancel message says nothing useful.
        return OffloadCancelled(f"offload to {url} was cancelled")
    return OffloadRequestFailed(f"offload to {url} failed: {exc!r}")


def _clean_headers(
    raw: list[tuple[bytes, bytes]],
    strip_prefixes: tuple[str, ...],
    extra: list[tuple[bytes, bytes]],
) -> httpx.Headers:
    """Drop hop-by-hop and directive headers, then add *extra*."""
    named = connection_named_headers(
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in raw
        if name.lower() == b"connection"
    )
    dropped = HOP_BY_HOP_HEADERS | named
    kept = []
    for name, value in raw:
        lowered = name.decode("latin-1").lower()
        if not lowered.startswith(strip_prefixes) and lowered not in dropped:
            kept.append((name, value))
    return httpx.Headers(kept + extra)


class Offloader:
    """Carries out offload directives found in backend responses.

    Args:
        parsers: Directive parsers, tried in order; by default the
            ``Offload-*`` parser.
        transport: The httpx transport for sync offload requests. By
            default the offloader makes its own, with *limits*, no proxy
            from the environment, and no retries.
        async_transport: The same for async offload requests.
        client: Send sync offload requests through this client instead of
            a transport. Its event hooks and auth apply; redirects are
            still not followed.
        async_client: The same for async offload requests.
        timeout: Per-operation timeouts (connect, read, write, pool).
        deadline: The total time in seconds an offload may take, from
            the directive to the last byte of the offload response. It is
            also the cap of a directive's own ``timeout``.
        max_hops: How many offloads one response may lead to. With the
            default 1, an offload response that asks for an offload
            itself is relayed as is (without its ``Offload-*`` headers).
        max_offloads: The most offloads in flight at once; past it,
            `OffloadCapacityExceeded` (503). `None` for no limit.
        max_forward_body_size: The most bytes of a backend body that may
            be forwarded; past it, `BodyTooLarge` (502). `None` for no
            limit.
        policy: Where offload requests may go; by default any http or
            https URL. Its address rules guard the transports this
            offloader makes, not a *transport* or *client* you pass.
        limits: Connection limits of the transports this offloader
            makes.
        drain_limit: A backend body that is not forwarded is read up to
            this many bytes so that its connection can be reused, then
            closed.
        observers: Callables that receive an `OffloadEvent` on each
            start, finish and error.
        strip_header_prefixes: Header-name prefixes removed from every
            final response, beside ``offload-`` and the parsers' own.

    An offloader owns the transports it makes: close it with `close` or
    `aclose`, or use it as a (sync or async) context manager.
    """

    def __init__(
        self,
        *,
        parsers: Sequence[DirectiveParser] | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        deadline: float = 30.0,
        max_hops: int = 1,
        max_offloads: int | None = None,
        max_forward_body_size: int | None = None,
        policy: DestinationPolicy | None = None,
        limits: httpx.Limits = DEFAULT_LIMITS,
        drain_limit: int = 64 * 1024,
        observers: Sequence[OffloadObserver] = (),
        strip_header_prefixes: Sequence[str] = (),
    ) -> None:
        if deadline <= 0:
            raise ValueError("deadline must be positive")
        if max_hops < 1:
            raise ValueError("max_hops must be at least 1")
        if max_offloads is not None and max_offloads < 1:
            raise ValueError("max_offloads must be at least 1")
        parsers = tuple(parsers or (OffloadHeaderParser(),))
        self._parser: DirectiveParser = (
            parsers[0] if len(parsers) == 1 else ParserChain(*parsers)
        )
        prefixes = {"offload-": None}
        for prefix in getattr(self._parser, "header_prefixes", ()):
            prefixes[prefix.lower()] = None
        for prefix in strip_header_prefixes:
            prefixes[prefix.lower()] = None
        self._strip_prefixes = tuple(prefixes)
        self._transport = transport
        self._async_transport = async_transport
        self._client = client
        self._async_client = async_client
        self._owns_transport = transport is None and client is None
        self._owns_async_transport = (
            async_transport is None and async_client is None
        )
        self._loop_transports: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, httpx.AsyncBaseTransport
        ] = weakref.WeakKeyDictionary()
        self.timeout = httpx.Timeout(timeout)
        self.deadline = float(deadline)
        self.max_hops = max_hops
        self.max_offloads = max_offloads
        self.max_forward_body_size = max_forward_body_size
        self.policy = policy or DestinationPolicy()
        self.limits = limits
        self.drain_limit = drain_limit
        self.observers = tuple(observers)
        self._lock = threading.Lock()
        self._in_flight = 0

    def __repr__(self) -> str:
        return (
            f"<Offloader parser={self._parser!r} deadline={self.deadline}"
            f" max_hops={self.max_hops} in_flight={self._in_flight}>"
        )

    @property
    def in_flight(self) -> int:
        """The number of offloads started and not yet finished."""
        return self._in_flight

    # -- the pure steps -------------------------------------------------

    def parse(self, headers: httpx.Headers) -> OffloadDirective | None:
        """Return the directive in *headers*, using this offloader's
        parsers, or `None`."""
        return self._parser.parse(headers)

    def build_request(
        self,
        directive: OffloadDirective,
        *,
        content: Iterator[bytes] | AsyncIterator[bytes] | None = None,
        content_headers: Sequence[tuple[str, str]] = (),
        deadline: float | None = None,
    ) -> httpx.Request:
        """Build the offload request of *directive*, without sending it.

        Args:
            directive: What to send, and where.
            content: The body to stream, when the directive forwards one.
            content_headers: Framing headers describing *content*, such
                as ``Content-Length``.
            deadline: The `time.monotonic` instant the offload must end
                by; the per-operation timeouts are capped to fit it.

        Raises:
            DestinationRefused: The policy refuses the destination.
        """
        url = directive._parsed_url
        self.policy.check(url)
        timeouts = self.timeout.as_dict()
        if deadline is not None:
            remaining = max(deadline - time.monotonic(), 0.001)
            timeouts = {
                name: remaining if value is None else min(value, remaining)
                for name, value in timeouts.items()
            }
        return httpx.Request(
            directive.method,
            url,
            headers=[*directive.headers, *content_headers],
            content=content,
            extensions={"timeout": timeouts},
        )

    def _deadline_of(self, directive: OffloadDirective) -> float:
        seconds = self.deadline
        if directive.timeout is not None:
            seconds = min(seconds, directive.timeout)
        return time.monotonic() + seconds

    def _final_response(
        self,
        offload: httpx.Response,
        stream: httpx.SyncByteStream | httpx.AsyncByteStream,
        kept: list[tuple[bytes, bytes]],
        request: httpx.Request | None,
    ) -> httpx.Response:
        return httpx.Response(
            offload.status_code,
            headers=_clean_headers(
                offload.headers.raw, self._strip_prefixes, kept
            ),
            stream=stream,
            extensions=offload.extensions,
            request=request,
        )

    def _kept_headers(
        self, directive: OffloadDirective, response: httpx.Response
    ) -> list[tuple[bytes, bytes]]:
        if not directive.keep_headers:
            return []
        wanted = {name.encode("latin-1") for name in directive.keep_headers}
        return [
            (name, value)
            for name, value in response.headers.raw
            if name.lower() in wanted
        ]

    @staticmethod
    def _content_headers(response: httpx.Response) -> list[tuple[str, str]]:
        # The forwarded bytes are the backend's raw body: its length and
        # coding describe them exactly.
        headers = []
        for name in ("content-length", "content-encoding"):
            value = response.headers.get(name)
            if value is not None:
                headers.append((name, value))
        return headers

    @staticmethod
    def _original_request(response: httpx.Response) -> httpx.Request | None:
        try:
            return response.request
        except RuntimeError:
            return None

    # -- capacity and observation ----------------------------------------

    def _acquire(self) -> None:
        with self._lock:
            if (
                self.max_offloads is not None
                and self._in_flight >= self.max_offloads
            ):
                raise OffloadCapacityExceeded(
                    f"{self._in_flight} offloads are already in flight"
                )
            self._in_flight += 1

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _emit(
        self,
        kind: Literal["start", "finish", "error", "refuse"],
        flight: _Flight,
        error: OffloadError | None = None,
    ) -> None:
        if not self.observers:
            return
        event = OffloadEvent(
            kind=kind,
            method=flight.method,
            url=flight.url,
            status_code=flight.status_code,
            duration=time.monotonic() - flight.started,
            bytes_received=flight.bytes_received,
            error=error,
        )
        for observer in self.observers:
            try:
                observer(event)
            except Exception:
                logger.warning(
                    "offload observer %r failed", observer, exc_info=True
                )

    def _refuse(
        self, directive: OffloadDirective | None, error: OffloadError
    ) -> None:
        """Tell the observers of an offload refused before its start."""
        if self.observers:
            flight = _Flight(
                "" if directive is None else directive.method,
                "" if directive is None else directive.url,
            )
            self._emit("refuse", flight, error)

    def _start(self, directive: OffloadDirective) -> _Flight:
        flight = _Flight(directive.method, directive.url)
        logger.debug("offloading %s %s", directive.method, directive.url)
        self._emit("start", flight)
        return flight

    def _finish(self, flight: _Flight, error: OffloadError | None) -> None:
        """Record the end of *flight*; runs once per offload."""
        if flight.finished:
            return
        flight.finished = True
        self._release()
        duration = time.monotonic() - flight.started
        if error is None:
            # Parsing the URL for its host costs more than the rest of
            # this method: only pay for it when the line is logged.
            if not logger.isEnabledFor(logging.INFO):
                self._emit("finish", flight)
                return
            logger.info(
                "offload %s %s -> %s in %.3fs, %d bytes",
                flight.method,
                httpx.URL(flight.url).host,
                flight.status_code,
                duration,
                flight.bytes_received,
            )
            self._emit("finish", flight)
        else:
            logger.warning(
                "offload %s %s failed after %.3fs: %s",
                flight.method,
                flight.url,
                duration,
                error,
            )
            self._emit("error", flight, error)

    # -- sync I/O ---------------------------------------------------------

    def _sync_transport(self) -> httpx.BaseTransport:
        if self._transport is None:
            with self._lock:
                if self._transport is None:
                    from ._netguard import make_transport

                    self._transport = make_transport(self.policy, self.limits)
        return self._transport

    def _send(self, request: httpx.Request) -> httpx.Response:
        if self._client is not None:
            return self._client.send(
                request, stream=True, follow_redirects=False
            )
        return self._sync_transport().handle_request(request)

    def modify_response(self, response: httpx.Response) -> httpx.Response:
        """Carry out the offload *response* asks for, if any.

        Returns *response* itself, untouched and unread, when it asks for
        no offload. Otherwise closes it and returns a new response with
        the offload server's status, headers and streamed body. Closing
        the new response ends the offload.

        Raises:
            InvalidDirective: The backend's directive is invalid or its
                destination refused (502).
            OffloadRequestFailed: The offload request failed (502).
            OffloadTimeout: The offload ran out of time (504).
            OffloadCapacityExceeded: Too many offloads at once (503).
        """
        try:
            directive = self._parser.parse(response.headers)
        except InvalidDirective as exc:
            logger.warning("refusing an invalid offload directive: %s", exc)
            self._refuse(None, exc)
            _discard_sync(response, self.drain_limit)
            raise
        if directive is None:
            return response
        return self._offload(response, directive)

    def _offload(
        self, response: httpx.Response, directive: OffloadDirective
    ) -> httpx.Response:
        request = self._original_request(response)
        try:
            self._acquire()
        except OffloadCapacityExceeded as exc:
            logger.warning("refusing an offload: %s", exc)
            self._refuse(directive, exc)
            _discard_sync(response, self.drain_limit)
            raise
        flight = self._start(directive)
        deadline = self._deadline_of(directive)
        kept: list[tuple[bytes, bytes]] = []
        current = response
        hops = 0
        try:
            while True:
                kept += self._kept_headers(directive, current)
                current = self._send_hop(current, directive, deadline)
                hops += 1
                flight.status_code = current.status_code
                if hops >= self.max_hops:
                    break
                next_directive = self._parser.parse(current.headers)
                if next_directive is None:
                    break
                directive = next_directive
                deadline = min(deadline, self._deadline_of(directive))
        except BaseException as exc:
            _close_sync(current)
            error = _map_error(exc, flight.url)
            self._finish(flight, error)
            if error is exc or not isinstance(exc, Exception):
                raise
            raise error from exc
        stream = _OffloadStream(self, current, flight, deadline)
        return self._final_response(current, stream, kept, request)

    def _send_hop(
        self,
        backend: httpx.Response,
        directive: OffloadDirective,
        deadline: float,
    ) -> httpx.Response:
        """Send one offload request; *backend* is closed on return."""
        backend_stream = backend.stream
        assert isinstance(backend_stream, httpx.SyncByteStream)
        progress = _Progress()
        try:
            if directive.forward_body:
                content, content_headers = self._forwarded(backend, progress)
                request = self.build_request(
                    directive,
                    content=content,
                    content_headers=content_headers,
                    deadline=deadline,
                )
            else:
                _drain(backend_stream, self.drain_limit)
                # Read: give the backend connection back now rather than
                # when the offload server answers, or every held offload
                # would hold a backend connection (and a descriptor).
                _close_sync(backend)
                request = self.build_request(directive, deadline=deadline)
            with deadline_scope(deadline):
                return self._send(request)
        except Exception:
            if directive.forward_body and not progress.started:
                # Refused or failed before a byte of the body was sent:
                # read the rest so that the backend connection is reused.
                _discard_sync(backend, self.drain_limit)
            raise
        finally:
            _close_sync(backend)

    def _forwarded(
        self, backend: httpx.Response, progress: _Progress
    ) -> tuple[Iterator[bytes], list[tuple[str, str]]]:
        """The body to forward, and the framing headers that describe
        it."""
        if backend.is_stream_consumed:
            body = _body_already_read(backend, self.max_forward_body_size)
            return iter((body,)), [("content-length", str(len(body)))]
        stream = backend.stream
        assert isinstance(stream, httpx.SyncByteStream)
        return (
            _limited(stream, self.max_forward_body_size, progress),
            self._content_headers(backend),
        )

    async def _aforwarded(
        self, backend: httpx.Response, progress: _Progress
    ) -> tuple[AsyncIterator[bytes], list[tuple[str, str]]]:
        """The async twin of `_forwarded`."""
        if backend.is_stream_consumed:
            body = _body_already_read(backend, self.max_forward_body_size)
            return _aone(body), [("content-length", str(len(body)))]
        stream = backend.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        return (
            _alimited(stream, self.max_forward_body_size, progress),
            self._content_headers(backend),
        )

    # -- async I/O --------------------------------------------------------

    def _get_async_transport(self) -> httpx.AsyncBaseTransport:
        if not self._owns_async_transport:
            assert self._async_transport is not None
            return self._async_transport
        # A pool's connections belong to the event loop that opened them,
        # so each running loop gets its own pool: `asyncio.run` twice, or
        # loops in several threads, may share one offloader (the
        # module-level default above all).
        # Limitation: `aclose` closes the pool of the loop it runs on; the
        # pool of a loop that ended without it is dropped unclosed.
        loop = asyncio.get_running_loop()
        transport = self._loop_transports.get(loop)
        if transport is None:
            from ._netguard import make_async_transport

            transport = make_async_transport(self.policy, self.limits)
            self._loop_transports[loop] = transport
        self._async_transport = transport
        return transport

    async def _asend(
        self, request: httpx.Request, deadline: float
    ) -> httpx.Response:
        return await _before(deadline, self._asend_now(request))

    async def _asend_now(self, request: httpx.Request) -> httpx.Response:
        if self._async_client is not None:
            return await self._async_client.send(
                request, stream=True, follow_redirects=False
            )
        transport = self._get_async_transport()
        return await transport.handle_async_request(request)

    async def amodify_response(
        self, response: httpx.Response
    ) -> httpx.Response:
        """The async twin of `modify_response`."""
        try:
            directive = self._parser.parse(response.headers)
        except InvalidDirective as exc:
            logger.warning("refusing an invalid offload directive: %s", exc)
            self._refuse(None, exc)
            await _discard_async(response, self.drain_limit)
            raise
        if directive is None:
            return response
        return await self._aoffload(response, directive)

    async def _aoffload(
        self, response: httpx.Response, directive: OffloadDirective
    ) -> httpx.Response:
        request = self._original_request(response)
        try:
            self._acquire()
        except OffloadCapacityExceeded as exc:
            logger.warning("refusing an offload: %s", exc)
            self._refuse(directive, exc)
            await _discard_async(response, self.drain_limit)
            raise
        flight = self._start(directive)
        deadline = self._deadline_of(directive)
        kept: list[tuple[bytes, bytes]] = []
        current = response
        hops = 0
        try:
            while True:
                kept += self._kept_headers(directive, current)
                current = await self._asend_hop(current, directive, deadline)
                hops += 1
                flight.status_code = current.status_code
                if hops >= self.max_hops:
                    break
                next_directive = self._parser.parse(current.headers)
                if next_directive is None:
                    break
                directive = next_directive
                deadline = min(deadline, self._deadline_of(directive))
        except BaseException as exc:
            await _close_async(current)
            error = _map_error(exc, flight.url)
            self._finish(flight, error)
            if error is exc or not isinstance(exc, Exception):
                raise
            raise error from exc
        stream = _AsyncOffloadStream(self, current, flight, deadline)
        return self._final_response(current, stream, kept, request)

    async def _asend_hop(
        self,
        backend: httpx.Response,
        directive: OffloadDirective,
        deadline: float,
    ) -> httpx.Response:
        backend_stream = backend.stream
        assert isinstance(backend_stream, httpx.AsyncByteStream)
        progress = _Progress()
        try:
            if directive.forward_body:
                content, content_headers = await self._aforwarded(
                    backend, progress
                )
                request = self.build_request(
                    directive,
                    content=content,
                    content_headers=content_headers,
                    deadline=deadline,
                )
                return await self._asend(request, deadline)
            # One deadline scope for the drain and the send.
            scope = cancel_scope(deadline)
            with scope:
                await _adrain(backend_stream, self.drain_limit)
                # See `_send_hop`: a held offload holds no backend
                # connection.
                await _close_async(backend)
                request = self.build_request(directive, deadline=deadline)
                return await self._asend_now(request)
            raise TimeoutError("the offload passed its deadline")
        except Exception:
            if directive.forward_body and not progress.started:
                # See `_send_hop`.
                await _discard_async(backend, self.drain_limit)
            raise
        finally:
            await _close_async(backend)

    # -- life cycle -------------------------------------------------------

    def close(self) -> None:
        """Close the sync transport this offloader made, if any."""
        if self._owns_transport and self._transport is not None:
            self._transport.close()
            self._transport = None

    async def aclose(self) -> None:
        """Close the transports this offloader made, if any."""
        self.close()
        if self._owns_async_transport:
            loop = asyncio.get_running_loop()
            transport = self._loop_transports.pop(loop, None)
            if transport is not None:
                await transport.aclose()
            if self._async_transport is transport:
                self._async_transport = None

    def __enter__(self) -> Offloader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Offloader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# -- streams ----------------------------------------------------------------


def _drain(stream: httpx.SyncByteStream, limit: int) -> None:
    read = 0
    for chunk in stream:
        read += len(chunk)
        if read > limit:
            break


async def _adrain(stream: httpx.AsyncByteStream, limit: int) -> None:
    read = 0
    async for chunk in stream:
        read += len(chunk)
        if read > limit:
            break


#: The most time a refused or failed offload spends reading the backend
#: body it did not use (at most ``drain_limit`` bytes), so that the
#: backend connection goes back to its pool instead of being dropped.
DISCARD_SECONDS = 1.0


class _Progress:
    """Whether a forwarded body has begun to stream."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False


def _discard_sync(response: httpx.Response, limit: int) -> None:
    """Read what is left of the unused body of *response*, within
    `DISCARD_SECONDS` and *limit* bytes, then close it.

    Limitation: the time bound holds for the offloader's own transports;
    a backend response from a client of yours is bounded by that client's
    read timeout only.
    """
    stream = response.stream
    try:
        if not response.is_closed and isinstance(stream, httpx.SyncByteStream):
            with deadline_scope(time.monotonic() + DISCARD_SECONDS):
                _drain(stream, limit)
    except Exception as exc:
        logger.debug("dropping a backend connection: %r", exc)
    finally:
        _close_sync(response)


async def _discard_async(response: httpx.Response, limit: int) -> None:
    """The async twin of `_discard_sync`; the time bound always holds."""
    stream = response.stream
    try:
        if not response.is_closed and isinstance(
            stream, httpx.AsyncByteStream
        ):
            with cancel_scope(time.monotonic() + DISCARD_SECONDS):
                await _adrain(stream, limit)
    except Exception as exc:
        logger.debug("dropping a backend connection: %r", exc)
    finally:
        await _close_async(response)


def _body_already_read(response: httpx.Response, limit: int | None) -> bytes:
    """The body of a backend response that was read before the offload
    (as a client without ``stream=True`` does): it can only be forwarded
    as read, decoded, so it goes with its own length."""
    try:
        body = response.content
    except httpx.ResponseNotRead:
        raise OffloadRequestFailed(
            "the backend response's body was consumed before the offload "
            "could forward it"
        ) from None
    if limit is not None and len(body) > limit:
        raise _too_large(limit)
    return body


async def _aone(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"the forwarded backend body is larger than {limit} bytes"
    )


def _limited(
    stream: httpx.SyncByteStream, limit: int | None, progress: _Progress
) -> Iterator[bytes]:
    progress.started = True
    sent = 0
    for chunk in stream:
        sent += len(chunk)
        if limit is not None and sent > limit:
            raise _too_large(limit)
        yield chunk


async def _alimited(
    stream: httpx.AsyncByteStream, limit: int | None, progress: _Progress
) -> AsyncIterator[bytes]:
    progress.started = True
    sent = 0
    async for chunk in stream:
        sent += len(chunk)
        if limit is not None and sent > limit:
            raise _too_large(limit)
        yield chunk


def _close_sync(response: httpx.Response) -> None:
    # Mark it closed as `Response.close` would, so that callers see
    # `is_closed`; the stream is closed even if the flag was already set.
    response.is_closed = True
    stream = response.stream
    if isinstance(stream, httpx.SyncByteStream):
        stream.close()


async def _close_async(response: httpx.Response) -> None:
    response.is_closed = True
    stream = response.stream
    if isinstance(stream, httpx.AsyncByteStream):
        await stream.aclose()


async def _before(deadline: float, step: Awaitable[_T]) -> _T:
    """Await *step*, raising `TimeoutError` past *deadline*."""
    scope = cancel_scope(deadline)
    with scope:
        return await step
    raise TimeoutError("the offload passed its deadline")


class _OffloadStream(httpx.SyncByteStream):
    """The offload server's body, relayed under the offload's deadline.

    Sync reads cannot be interrupted: the deadline is checked between
    chunks, and each read of the offloader's own transports is bounded
    by what is left of it (see `deadline_scope`).
    """

    def __init__(
        self,
        offloader: Offloader,
        response: httpx.Response,
        flight: _Flight,
        deadline: float,
    ) -> None:
        self._offloader = offloader
        self._response = response
        self._flight = flight
        self._deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        stream = self._response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        flight = self._flight
        chunks = iter(stream)
        try:
            while True:
                with deadline_scope(self._deadline):
                    chunk = next(chunks, None)
                if chunk is None:
                    break
                if time.monotonic() > self._deadline:
                    raise TimeoutError("the offload passed its deadline")
                flight.bytes_received += len(chunk)
                yield chunk
        except Exception as exc:
            error = _map_error(exc, flight.url)
            stream.close()
            self._offloader._finish(flight, error)
            if error is exc:
                raise
            raise error from exc
        stream.close()
        self._offloader._finish(flight, None)

    def close(self) -> None:
        _close_sync(self._response)
        self._offloader._finish(self._flight, None)


class _AsyncOffloadStream(httpx.AsyncByteStream):
    """The async twin of `_OffloadStream`; reads are cut at the deadline."""

    def __init__(
        self,
        offloader: Offloader,
        response: httpx.Response,
        flight: _Flight,
        deadline: float,
    ) -> None:
        self._offloader = offloader
        self._response = response
        self._flight = flight
        self._deadline = deadline

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self._response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        flight = self._flight
        chunks = stream.__aiter__()
        try:
            while True:
                try:
                    chunk = await _before(self._deadline, anext(chunks))
                except StopAsyncIteration:
                    break
                flight.bytes_received += len(chunk)
                yield chunk
        except Exception as exc:
            error = _map_error(exc, flight.url)
            await stream.aclose()
            self._offloader._finish(flight, error)
            if error is exc:
                raise
            raise error from exc
        await stream.aclose()
        self._offloader._finish(flight, None)

    async def aclose(self) -> None:
        await _close_async(self._response)
        self._offloader._finish(self._flight, None)


# -- the module-level default -------------------------------------------------

_default_offloader: Offloader | None = None


def default_offloader() -> Offloader:
    """Return the offloader behind `modify_response`, made on first use."""
    global _default_offloader  # noqa: PLW0603 - a lazily made singleton
    if _default_offloader is None:
        _default_offloader = Offloader()
    return _default_offloader


def modify_response(response: httpx.Response) -> httpx.Response:
    """Carry out the offload *response* asks for, with the default
    offloader. See `Offloader.modify_response`."""
    return default_offloader().modify_response(response)


async def amodify_response(response: httpx.Response) -> httpx.Response:
    """The async twin of `modify_response`."""
    return await default_offloader().amodify_response(response)
