"""Network-level guards of offload requests: addresses and deadlines.

**Addresses.** The checks are made where the socket is opened.

A host name says nothing certain about where a connection goes: it may
resolve to a private address, resolve differently a second later (DNS
rebinding), or be an address written in an unusual notation
(``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``) that the system's
resolver turns into loopback. So the check is made on the addresses the
resolver returns, and the socket is then connected to one of those very
addresses, never to the name again.

The seam is httpcore's public network-backend interface: the guarded
backends below resolve the host once, check every address with the
standard library's `ipaddress`, and hand the checked address to
httpcore's own backend to connect. TLS still verifies the certificate
against the host name, which httpcore passes separately. The address
table itself is in `offloader._addresses`.

**Deadlines.** httpcore bounds each read and write by a timeout but has
no total deadline, and a sync read cannot be cancelled from outside. So
the sync streams of the offloader's own transports cap every read and
write by what is left of the current offload's deadline, which the
offloader sets with `deadline_scope` (in `offloader._deadlines`): a
server that trickles its headers or body one byte a second is cut off
at the deadline. (The async
path cancels the whole exchange at the deadline instead.)

**Pools.** The async pool closes the connections that cancelled
requests orphan (see `ReclaimingAsyncPool`), and the async transports
spread their connections over several pools (see
`ShardedAsyncTransport`). Both pools send an idempotent request once
more on a new connection when the reused one it went out on turns out
to be closed (see `_is_stale_connection_retry`).

This module imports httpcore, so the offloader loads it only when it
makes its first transport.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from ._addresses import IPAddress
from ._deadlines import bounded
from ._errors import DestinationRefused

if TYPE_CHECKING:
    from ._policy import DestinationPolicy

logger = logging.getLogger("offloader")

__all__ = [
    "POOL_SHARDS",
    "AsyncGuardedBackend",
    "DeadlineBackend",
    "GuardedBackend",
    "ReclaimingAsyncPool",
    "ShardedAsyncTransport",
    "make_async_transport",
    "make_transport",
]


def _parse_address(text: str) -> IPAddress:
    # getaddrinfo may return a scoped IPv6 address ("fe80::1%eth0");
    # the scope names an interface, not a different address.
    return ipaddress.ip_address(text.split("%", 1)[0])


def _addresses(infos: Iterable[tuple[object, ...]]) -> list[str]:
    """The distinct addresses of getaddrinfo results, in order."""
    seen: dict[str, None] = {}
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        seen[str(sockaddr[0])] = None
    return list(seen)


def _check_all(
    policy: DestinationPolicy, host: str, addresses: list[str]
) -> None:
    """Refuse the host unless every address it resolved to is allowed.

    One refused address refuses the name: a name that points partly at
    a private network is not trusted with the rest.
    """
    if not addresses:
        raise httpcore.ConnectError(f"{host!r} resolved to no address")
    for text in addresses:
        policy.check_address(_parse_address(text), host=host)


def _check_peer(
    policy: DestinationPolicy,
    host: str,
    stream: httpcore.NetworkStream | httpcore.AsyncNetworkStream,
) -> None:
    """Check the address the socket really is connected to."""
    peer = stream.get_extra_info("server_addr")
    if isinstance(peer, tuple) and peer:
        policy.check_address(_parse_address(str(peer[0])), host=host)


def _remaining(started: float, timeout: float | None) -> float | None:
    if timeout is None:
        return None
    return max(timeout - (time.monotonic() - started), 0.0)


# -- deadlines ----------------------------------------------------------------


class _DeadlineStream(httpcore.NetworkStream):
    """A sync network stream whose reads and writes end by the deadline
    of the offload being served."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, bounded(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, bounded(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._stream.start_tls(
                ssl_context, server_hostname, bounded(timeout)
            )
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """A sync httpcore backend whose streams honour `deadline_scope`.

    Args:
        backend: The backend that opens the socket; httpcore's own by
            default.
    """

    def __init__(self, backend: httpcore.NetworkBackend | None = None) -> None:
        self._backend = backend or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(
            host,
            port,
            timeout=bounded(timeout),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._backend.connect_unix_socket(
                path, bounded(timeout), socket_options
            )
        )

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


# -- addresses ----------------------------------------------------------------


class GuardedBackend(httpcore.NetworkBackend):
    """A sync httpcore backend that connects only to allowed addresses.

    Args:
        policy: The policy whose `DestinationPolicy.check_address`
            judges each resolved address.
        backend: The backend that opens the socket; httpcore's own by
            default.
    """

    def __init__(
        self,
        policy: DestinationPolicy,
        backend: httpcore.NetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self._backend = backend or DeadlineBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """Resolve *host* once, check every address, connect to one."""
        started = time.monotonic()
        # Limitation: the system resolver takes no timeout, so a slow DNS
        # server can hold a sync offload past its connect timeout (the
        # async backend is cut off on time).
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(
                f"cannot resolve {host!r}: {exc}"
            ) from exc
        addresses = _addresses(infos)
        _check_all(self.policy, host, addresses)
        error: Exception | None = None
        for address in addresses:
            try:
                stream = self._backend.connect_tcp(
                    address,
                    port,
                    timeout=_remaining(started, timeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
                continue
            try:
                _check_peer(self.policy, host, stream)
            except BaseException:
                stream.close()
                raise
            return stream
        assert error is not None
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """Refuse: a socket path has no address for the policy to judge."""
        raise DestinationRefused("unix sockets are not allowed for offloads")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """The async twin of `GuardedBackend`; name resolution is bounded
    by the connect timeout."""

    def __init__(
        self,
        policy: DestinationPolicy,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self._backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve *host* once, check every address, connect to one."""
        import anyio  # a dependency of httpx; loaded with the async path

        started = time.monotonic()
        try:
            with anyio.fail_after(timeout):
                infos = await anyio.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(
                f"resolving {host!r} timed out"
            ) from exc
        except OSError as exc:
            raise httpcore.ConnectError(
                f"cannot resolve {host!r}: {exc}"
            ) from exc
        addresses = _addresses(infos)
        _check_all(self.policy, host, addresses)
        error: Exception | None = None
        for address in addresses:
            try:
                stream = await self._backend.connect_tcp(
                    address,
                    port,
                    timeout=_remaining(started, timeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
                continue
            try:
                _check_peer(self.policy, host, stream)
            except BaseException:
                await stream.aclose()
                raise
            return stream
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Refuse: a socket path has no address for the policy to judge."""
        raise DestinationRefused("unix sockets are not allowed for offloads")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def make_transport(
    policy: DestinationPolicy, limits: httpx.Limits
) -> httpx.HTTPTransport:
    """Return the sync transport an `Offloader` uses by default.

    It ignores proxy settings from the environment, honours
    `deadline_scope`, and checks addresses with a `GuardedBackend` when
    *policy* has address rules.
    """
    backend: httpcore.NetworkBackend = DeadlineBackend()
    if policy.checks_addresses:
        backend = GuardedBackend(policy, backend)
    ssl_context = httpx.create_ssl_context(trust_env=False)
    transport = httpx.HTTPTransport(
        verify=ssl_context, limits=limits, trust_env=False
    )
    # Limitation: httpx takes no network backend, so the transport's pool
    # is replaced by an equal one that has it. This relies on httpx
    # keeping its httpcore pool in `_pool`; the policy and limits tests
    # fail loudly if that ever changes.
    transport._pool = GuardedSyncPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=backend,
    )
    return transport


class _KeepsAssignedConnections:
    """Keeps httpcore's pool from closing a connection it has just handed
    to a request.

    httpcore 1.0 hands an idle connection to a waiting request, which
    starts on it only when its task next runs. Until then the connection
    still looks idle, and another request's pass over the pool may close
    it, as expired or as a surplus idle one (encode/httpcore#1110). If
    the request has started by the time the close lands, it fails with
    `httpx.ReadError` although the server did nothing wrong. A probe on
    the pass counted 0, 3 and 6 such closes in three runs of the leak
    test (10,000 requests, connections expiring after 0.3 s); about one
    run in thirty failed a request with that error. This mixin takes
    such connections back off the list of those to close, unless the
    server has closed them (see `_closed_by_server`).

    The cost: a kept connection may be used a moment past
    ``keepalive_expiry``, the margin kept against the server's own
    keep-alive timeout; and when the same pass opened a connection for
    another request (to make room, or because the kept one looked
    expired), the pool holds one connection over ``max_connections``
    for each one kept, until a request ends.

    Limitation: it overrides a private method of httpcore's pools and
    reads their private request and connection lists; should any of
    them change, the override is not called or leaves the pass as it
    was.
    """

    def _assign_requests_to_connections(self) -> list[Any]:
        assign = super()._assign_requests_to_connections  # type: ignore[misc]
        closing: list[Any] = assign()
        requests = getattr(self, "_requests", None)
        connections = getattr(self, "_connections", None)
        if (
            not closing
            or not isinstance(requests, list)
            or not isinstance(connections, list)
        ):
            return closing
        assigned = {
            id(connection)
            for owner in requests
            if (connection := getattr(owner, "connection", None)) is not None
        }
        kept = {
            id(connection): connection
            for connection in closing
            if id(connection) in assigned and not _closed_by_server(connection)
        }
        if not kept:
            return closing
        # Back in the pool: its request starts on it, or, should the
        # connection be unusable, gets ConnectionNotAvailable and waits
        # for another, as httpcore provides.
        connections.extend(kept.values())
        return [
            connection for connection in closing if id(connection) not in kept
        ]


def _closed_by_server(connection: Any) -> bool:
    """Whether the server has closed (or written to) this idle pooled
    connection, which httpcore learns by the socket being readable.

    Such a connection is left to close: its request, not started yet,
    then waits for another, as without `_KeepsAssignedConnections`.
    Limitation: reads httpcore's private connection and stream
    attributes; without them, it answers `False`.
    """
    inner = getattr(connection, "_connection", None)
    stream = getattr(inner, "_network_stream", None)
    if stream is None:
        return False
    try:
        return bool(stream.get_extra_info("is_readable"))
    except Exception:  # a guess: never a failure of its own
        return False


# -- a request on a connection the server has just closed -------------------

#: Whether the current task (or thread) opened a connection since its
#: request entered the pool. httpcore opens a pooled connection in the
#: task of the request it is for, when that request starts on it; so
#: after a failed request, `False` means it went out on a connection that
#: an earlier request had used.
_opened_connection: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "offloader_opened_connection", default=False
)

#: The methods RFC 9110 defines as idempotent: a client may send them
#: again when the connection closes before their answer (RFC 9112,
#: section 9.3.1).
IDEMPOTENT_METHODS = frozenset(
    {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}
)

# What httpcore's HTTP/1.1 connection raises when the server closes it
# before sending any of the response.
_DISCONNECTED = "Server disconnected without sending a response."


def _is_stale_connection_retry(
    request: httpcore.Request, error: BaseException
) -> bool:
    """Whether *request*, which failed with *error*, should be sent once
    more on a new connection.

    Yes only when all of these hold: the connection closed under it
    before any answer (a reset, a failed write, or an orderly close); the
    connection was a reused one; the method is idempotent; and the body
    is in memory, so that it can be sent again. This is the race of a
    server closing an idle keep-alive connection at the moment a request
    goes out on it: the server did not see that request (or, for an
    idempotent method, seeing it twice does no harm). A connection opened
    for the request that fails this way is a server failing for real, and
    its error is raised as it is.
    """
    if _opened_connection.get():
        return False
    if request.method.decode("latin-1") not in IDEMPOTENT_METHODS:
        return False
    if not isinstance(request.stream, httpx.ByteStream):
        return False
    if isinstance(error, httpcore.RemoteProtocolError):
        # Limitation: told apart by httpcore's message; should it change,
        # such a close is raised as it is, as before this retry existed.
        return str(error) == _DISCONNECTED
    return isinstance(error, (httpcore.ReadError, httpcore.WriteError))


def log_retry(method: str, url: str, error: BaseException) -> None:
    """Log at DEBUG that a request is sent again, and why."""
    logger.debug(
        "sending %s %s again on a new connection: the reused one was "
        "closed under it (%r)",
        method,
        url,
        error,
    )


def _log_retry(request: httpcore.Request, error: BaseException) -> None:
    log_retry(
        request.method.decode("latin-1"),
        bytes(request.url).decode("latin-1"),
        error,
    )


class _NotesNewConnections(httpcore.NetworkBackend):
    """A sync network backend that records in `_opened_connection` that
    the current thread opened a connection."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        _opened_connection.set(True)
        return self._backend.connect_tcp(
            host, port, timeout, local_address, socket_options
        )

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        _opened_connection.set(True)
        return self._backend.connect_unix_socket(path, timeout, socket_options)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _AsyncNotesNewConnections(httpcore.AsyncNetworkBackend):
    """The async twin of `_NotesNewConnections`, for the current task."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        _opened_connection.set(True)
        return await self._backend.connect_tcp(
            host, port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        _opened_connection.set(True)
        return await self._backend.connect_unix_socket(
            path, timeout, socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class GuardedSyncPool(_KeepsAssignedConnections, httpcore.ConnectionPool):
    """httpcore's sync pool, minus the race `_KeepsAssignedConnections`
    describes (threads meet it as tasks do), sending an idempotent request
    once more when the reused connection it went out on was closed under
    it (see `_is_stale_connection_retry`).

    httpcore's own pool raises such a failure, although the server only
    closed an idle connection, as servers do after their keep-alive
    timeout (uvicorn's is 5 s, gunicorn's 2 s): the close may cross the
    request on the wire. Clients that keep connections alive for long,
    such as Go's and NGINX's, send the request again in this one case.
    """

    def __init__(self, **options: Any) -> None:
        backend = (
            options.pop("network_backend", None) or httpcore.SyncBackend()
        )
        super().__init__(
            network_backend=_NotesNewConnections(backend), **options
        )

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        _opened_connection.set(False)
        try:
            return super().handle_request(request)
        except Exception as exc:
            if not _is_stale_connection_retry(request, exc):
                raise
            _log_retry(request, exc)
        _opened_connection.set(False)
        return super().handle_request(request)


class ReclaimingAsyncPool(
    _KeepsAssignedConnections, httpcore.AsyncConnectionPool
):
    """An httpcore pool that closes the connections a cancellation
    orphans, keeps those it has handed to a request (see
    `_KeepsAssignedConnections`), and sends a request again when
    `GuardedSyncPool` would.

    httpcore 1.0 leaks a connection when a request is cancelled after the
    pool gave it a new connection but before the request started on it
    (encode/httpcore#1093): the connection is neither idle nor closed, so
    the pool never reuses nor drops it, and it keeps its socket and its
    pool slot for good. Offloads are cancelled all the time (deadlines,
    clients that leave), so after such a request fails, this pool closes
    every connection that no request owns and that is not idle.
    """

    def __init__(self, **options: Any) -> None:
        backend = (
            options.pop("network_backend", None) or httpcore.AnyIOBackend()
        )
        super().__init__(
            network_backend=_AsyncNotesNewConnections(backend), **options
        )

    async def handle_async_request(
        self, request: httpcore.Request
    ) -> httpcore.Response:
        _opened_connection.set(False)
        try:
            return await super().handle_async_request(request)
        except BaseException as exc:
            await self._reclaim_orphans()
            if not _is_stale_connection_retry(request, exc):
                raise
            _log_retry(request, exc)
        _opened_connection.set(False)
        try:
            return await super().handle_async_request(request)
        except BaseException:
            await self._reclaim_orphans()
            raise

    async def _reclaim_orphans(self) -> None:
        # Limitation: this reads httpcore's private request queue and
        # connection list; without them it does nothing, and the soak
        # test's pool figures would show the leak again.
        requests = getattr(self, "_requests", None)
        connections = getattr(self, "_connections", None)
        if not isinstance(requests, list) or not isinstance(connections, list):
            return
        owned = {
            id(owner.connection)
            for owner in requests
            if getattr(owner, "connection", None) is not None
        }
        orphans = [
            connection
            for connection in connections
            if id(connection) not in owned
            and not connection.is_idle()
            and not connection.is_closed()
        ]
        if not orphans:
            return
        for connection in orphans:
            connections.remove(connection)
        import anyio  # a dependency of httpx; loaded with the async path

        # The task may be being cancelled: finish closing regardless.
        with anyio.CancelScope(shield=True):
            for connection in orphans:
                await connection.aclose()


#: How many pools an async transport of ours spreads its connections over.
POOL_SHARDS = 16


class ShardedAsyncTransport(httpx.AsyncBaseTransport):
    """Spreads requests over several transports, the least busy first.

    httpcore's pool looks at every connection it holds each time a
    request starts or ends, so its CPU cost per request grows with the
    number of connections: with a thousand offloads in flight it spends
    milliseconds per request, and the proxy stalls. Several smaller pools
    keep each look short. Each request goes to the shard with the fewest
    responses in flight, the first one on a tie, so that a lightly used
    transport keeps reusing the connections of its first shard.

    httpcore closes a pool's expired connections only when that pool is
    used, and a shard may sit unused for long once the load drops; so each
    request also looks at one idle shard, in turn, and closes the
    connections of its pool that expired or that the server closed.

    Limitation: a connection is reused only within its own shard, and a
    shard whose pool is full answers `PoolTimeout` even if another has
    room: each shard gets an equal share of the limits.

    Attributes:
        shards: The transports requests are spread over.
    """

    def __init__(self, shards: Sequence[httpx.AsyncBaseTransport]) -> None:
        if not shards:
            raise ValueError("ShardedAsyncTransport needs at least 1 shard")
        self.shards = tuple(shards)
        self._in_flight = [0] * len(self.shards)
        self._next_sweep = 0

    async def handle_async_request(
        self, request: httpx.Request
    ) -> httpx.Response:
        in_flight = self._in_flight
        sweep = self._next_sweep
        self._next_sweep = (sweep + 1) % len(in_flight)
        if not in_flight[sweep]:
            await _close_expired(self.shards[sweep])
        index = in_flight.index(min(in_flight))
        in_flight[index] += 1
        try:
            response = await self.shards[index].handle_async_request(request)
        except BaseException:
            in_flight[index] -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CountedStream(response.stream, in_flight, index)
        return response

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


async def _close_expired(transport: httpx.AsyncBaseTransport) -> None:
    """Close the idle connections of *transport*'s pool that expired or
    that their server closed, as the pool would on its next request."""
    # Limitation: reaches the httpcore pool through httpx's private
    # `_pool`; for any other transport this does nothing.
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool):
        return
    for connection in pool.connections:
        if connection.is_idle() and connection.has_expired():
            # A closed connection is dropped from the pool by its next
            # request; one given to a request meanwhile is not used.
            await connection.aclose()


class _CountedStream(httpx.AsyncByteStream):
    """A response body that tells its shard when it is closed."""

    def __init__(
        self, stream: httpx.AsyncByteStream, in_flight: list[int], index: int
    ) -> None:
        self._stream = stream
        self._in_flight = in_flight
        self._index = index
        self._open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._in_flight[self._index] -= 1
        await self._stream.aclose()


def _share(total: int | None, shards: int) -> int | None:
    return None if total is None else max(1, -(-total // shards))


def make_async_transport(
    policy: DestinationPolicy,
    limits: httpx.Limits,
    shards: int = POOL_SHARDS,
) -> httpx.AsyncBaseTransport:
    """The async twin of `make_transport`.

    Its pools are `ReclaimingAsyncPool`s that check addresses with an
    `AsyncGuardedBackend` when *policy* has address rules. With more than
    one shard, the connection limits are shared out among *shards* pools
    (see `ShardedAsyncTransport`); a limit under 512 connections keeps
    one pool.
    """
    ssl_context = httpx.create_ssl_context(trust_env=False)
    if limits.max_connections is not None:
        # Small limits are kept exact: a shard gets at least 256
        # connections, and small pools are cheap to look through anyway.
        shards = min(shards, limits.max_connections // 256)
    if shards > 1:
        shard_limits = httpx.Limits(
            max_connections=_share(limits.max_connections, shards),
            max_keepalive_connections=_share(
                limits.max_keepalive_connections, shards
            ),
            keepalive_expiry=limits.keepalive_expiry,
        )
        return ShardedAsyncTransport(
            [
                _pool_transport(policy, shard_limits, ssl_context)
                for _ in range(shards)
            ]
        )
    return _pool_transport(policy, limits, ssl_context)


def _pool_transport(
    policy: DestinationPolicy,
    limits: httpx.Limits,
    ssl_context: ssl.SSLContext,
) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(
        verify=ssl_context, limits=limits, trust_env=False
    )
    # Limitation: see `make_transport`.
    transport._pool = ReclaimingAsyncPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=(
            AsyncGuardedBackend(policy) if policy.checks_addresses else None
        ),
    )
    return transport
