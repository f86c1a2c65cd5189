"""Faults of the offload server and of the backend, at the core level.

Each fault is played by a raw-socket loopback server (tests/faultservers)
and driven through each of the four core adapters. Whatever breaks, the
caller gets a typed error with its status, never a clean but short
response, and the offload is accounted as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from offloader import (
    DestinationPolicy,
    InvalidDirective,
    Offloader,
    OffloadError,
    OffloadEvent,
    OffloadRequestFailed,
    OffloadTimeout,
)
from offloader.hooks.asgi import OffloadProxy

from . import faultservers
from .engines import close_offloader, make_offloader, make_proxy
from .faultservers import (
    MODES,
    Outcome,
    _acall,
    answers_without_reading,
    closed_port,
    directing_backend,
    never_reads_body,
    ok,
    raw_server,
    records_raw,
    records_request,
    replies,
    reset_after_headers,
    reset_before_headers,
    silent,
    trickle,
    truncated_body,
    truncated_forward,
)
from .servers import RunningServer, serve
from .test_limits import wait_for
from .test_policy import spellings

#: The core adapters, and the async ones again with their offloads on
#: the aiohttp engine (``offloader serve``'s default).
ALL_MODES = (*MODES, "async-hook+aiohttp", "async-transport+aiohttp")


def call(
    mode: str,
    url: str,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> Outcome:
    """`faultservers.call`, where a mode ending in ``+aiohttp`` makes
    the offloads go through `AiohttpTransport`."""
    mode, _, engine = mode.partition("+")
    if not engine:
        return faultservers.call(mode, url, headers, **options)

    async def on_engine() -> Outcome:
        offloader = make_offloader(engine, **options)
        try:
            return await _acall(mode, url, headers, offloader, {})
        finally:
            await close_offloader(offloader)

    return asyncio.run(on_engine())


@pytest.fixture(scope="module")
def backend() -> Iterator[RunningServer]:
    with serve(directing_backend) as server:
        yield server


def run(
    mode: str, backend: RunningServer, target: str, **options: Any
) -> tuple[Outcome, list[OffloadEvent]]:
    events: list[OffloadEvent] = []
    outcome = call(
        mode,
        backend.url,
        {"X-Target": target},
        observers=[events.append],
        **options,
    )
    return outcome, events


@pytest.mark.parametrize("mode", ALL_MODES)
def test_connection_refused(backend: RunningServer, mode: str) -> None:
    """An offload server that refuses the connection gives
    OffloadRequestFailed (502) and an error event."""
    outcome, events = run(mode, backend, f"http://127.0.0.1:{closed_port()}/")

    assert isinstance(outcome.error, OffloadRequestFailed)
    assert outcome.error.status_code == 502
    assert [event.kind for event in events] == ["start", "error"]


@pytest.mark.parametrize("mode", ALL_MODES)
def test_reset_before_the_headers(backend: RunningServer, mode: str) -> None:
    """A reset before any response header gives OffloadRequestFailed."""
    with raw_server(reset_before_headers) as server:
        outcome, events = run(mode, backend, server.url)

    assert isinstance(outcome.error, OffloadRequestFailed)
    assert outcome.status is None
    assert [event.kind for event in events] == ["start", "error"]
    assert server.accepted == 1


@pytest.mark.parametrize("mode", ALL_MODES)
def test_reset_after_the_headers(backend: RunningServer, mode: str) -> None:
    """A reset in the middle of the body surfaces as OffloadRequestFailed
    while the body is read: the caller can never take the part it got
    for the whole."""
    with raw_server(reset_after_headers) as server:
        outcome, events = run(mode, backend, server.url)

    assert outcome.status == 200
    assert isinstance(outcome.body_error, OffloadRequestFailed)
    assert outcome.body == b""
    assert [event.kind for event in events] == ["start", "error"]


@pytest.mark.parametrize("mode", ALL_MODES)
def test_truncated_offload_body(backend: RunningServer, mode: str) -> None:
    """An offload server that closes cleanly after 100 of the 1000 bytes
    it promised makes reading the body fail; it is never a clean short
    response."""
    with raw_server(truncated_body) as server:
        outcome, events = run(mode, backend, server.url)

    assert outcome.status == 200
    assert isinstance(outcome.body_error, OffloadRequestFailed)
    assert outcome.body_error.status_code == 502
    assert events[-1].kind == "error"
    assert events[-1].bytes_received <= 100


@pytest.mark.parametrize("mode", ALL_MODES)
def test_truncated_backend_body_while_forwarded(mode: str) -> None:
    """A backend body cut short while it is being forwarded aborts the
    offload request: the offload server never receives a whole request,
    and its connection is closed."""
    bodies: list[bytes] = []

    with raw_server(records_request(bodies)) as offload:
        with raw_server(truncated_forward(offload.url)) as backend:
            outcome = call(mode, backend.url)
        closed = wait_for(lambda: offload.closed == offload.accepted)

    assert isinstance(outcome.error, OffloadRequestFailed)
    assert outcome.error.status_code == 502
    assert bodies == []
    assert offload.accepted == 1
    assert 1000 <= offload.received < 100_000
    assert closed


@pytest.mark.parametrize("mode", ALL_MODES)
def test_offload_server_that_never_reads_the_body(
    backend: RunningServer, mode: str
) -> None:
    """An offload server that reads the head and then nothing more
    stalls the forwarded body; the deadline ends the offload with
    OffloadTimeout (504) instead of hanging."""
    with raw_server(never_reads_body, rcvbuf=4096) as server:
        outcome = call(
            mode,
            backend.url,
            {
                "X-Target": server.url,
                "X-Method": "POST",
                "X-Forward": str(8 * 1024 * 1024),
            },
            deadline=0.5,
        )

    assert isinstance(outcome.error, OffloadTimeout)
    assert outcome.error.status_code == 504


@pytest.mark.parametrize("mode", ALL_MODES)
def test_offload_server_that_answers_before_reading_the_body(
    backend: RunningServer, mode: str
) -> None:
    """An early answer to a large forwarded body is either relayed whole
    or reported as a failed offload, never anything in between."""
    with raw_server(answers_without_reading) as server:
        outcome = call(
            mode,
            backend.url,
            {
                "X-Target": server.url,
                "X-Method": "POST",
                "X-Forward": str(8 * 1024 * 1024),
            },
            deadline=5.0,
        )

    if outcome.error is None and outcome.body_error is None:
        assert outcome.status == 200
        assert outcome.body == b"early"
    else:
        error = outcome.error or outcome.body_error
        assert isinstance(error, OffloadError)
        assert not isinstance(error, OffloadTimeout)


# -- header hygiene -------------------------------------------------------

HOSTILE_OFFLOAD_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Connection: x-secret, keep-alive\r\n"
    b"X-Secret: internal\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Offload-Url: http://internal.example/\r\n"
    b"Offload-Requested: 1\r\n"
    b"OFFLOAD-Secret: 1\r\n"
    b"Proxy-Authenticate: Basic\r\n"
    b"Upgrade: h2c\r\n"
    b"Trailer: X-T\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"X-Kept: yes\r\n"
    b"\r\n"
    b"5\r\nhello\r\n0\r\n\r\n"
)


def hostile_backend_response(offload_url: str) -> bytes:
    """A backend answer whose directive tries to set framing, routing
    and hop-by-hop headers of the offload request."""
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"Offload-Requested: 1\r\n"
        b"Offload-Url: %s/p?q=1\r\n"
        b"Offload-Method: POST\r\n"
        b"Offload-Forward-Body: 1\r\n"
        b"Offload-X-Content-Length: 3\r\n"
        b"Offload-X-Transfer-Encoding: chunked\r\n"
        b"Offload-X-Host: evil.example\r\n"
        b"Offload-X-Connection: close, trace\r\n"
        b"Offload-X-Te: trailers\r\n"
        b"Offload-X-Upgrade: h2c\r\n"
        b"Offload-X-Keep-Alive: 1\r\n"
        b"Offload-X-Trace: abc\r\n"
        b"Content-Length: 11\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"hello world" % offload_url.encode()
    )


def head_lines(raw: bytes) -> list[tuple[bytes, bytes]]:
    head = raw.partition(b"\r\n\r\n")[0]
    pairs = []
    for line in head.split(b"\r\n")[1:]:
        assert not line.startswith((b" ", b"\t")), "folded header line"
        name, _, value = line.partition(b":")
        pairs.append((name.lower(), value.strip()))
    return pairs


@pytest.mark.parametrize("mode", ALL_MODES)
def test_directives_cannot_set_framing_or_hop_by_hop_headers(
    mode: str,
) -> None:
    """Framing, routing and hop-by-hop headers in a directive are not
    forwarded: the offload request carries one Content-Length matching
    its body, no Transfer-Encoding, its own Host, and the rest."""
    log: list[bytes] = []
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    with raw_server(records_raw(log, reply)) as offload:
        raw_backend = replies(hostile_backend_response(offload.url))
        with raw_server(raw_backend) as backend:
            outcome = call(mode, backend.url)
        [request] = log

    pairs = head_lines(request)
    names = [name for name, _ in pairs]
    assert outcome.body == b"ok"
    assert request.startswith(b"POST /p?q=1 HTTP/1.1\r\n")
    assert request.endswith(b"\r\n\r\nhello world")
    assert names.count(b"content-length") == 1
    assert dict(pairs)[b"content-length"] == b"11"
    assert b"transfer-encoding" not in names
    assert names.count(b"host") == 1
    assert dict(pairs)[b"host"] == f"127.0.0.1:{offload.port}".encode()
    assert b"upgrade" not in names
    assert b"te" not in names
    assert b"keep-alive" not in names
    assert (b"connection", b"close, trace") not in pairs
    assert (b"trace", b"abc") in pairs
    assert (b"content-type", b"text/plain") in pairs


@pytest.mark.parametrize("mode", ALL_MODES)
def test_offload_response_loses_hop_by_hop_and_offload_headers(
    mode: str,
) -> None:
    """The final response carries none of the offload server's hop-by-hop
    headers, headers named in its Connection header, or Offload-*
    headers; its own other headers and its body come through."""
    with raw_server(replies(HOSTILE_OFFLOAD_RESPONSE)) as offload:
        directive = (
            b"HTTP/1.1 200 OK\r\nOffload-Requested: 1\r\n"
            b"Offload-Url: %s\r\nContent-Length: 0\r\n\r\n"
            % offload.url.encode()
        )
        with raw_server(replies(directive)) as backend:
            outcome = call(mode, backend.url)

    assert outcome.headers is not None
    names = {name.lower() for name in outcome.headers}
    assert outcome.body == b"hello"
    assert outcome.headers["x-kept"] == "yes"
    assert not any(name.startswith("offload-") for name in names)
    assert not names & {
        "connection",
        "keep-alive",
        "x-secret",
        "proxy-authenticate",
        "upgrade",
        "trailer",
        "transfer-encoding",
    }


@pytest.mark.parametrize(
    "value",
    [
        b"a\x00b",
        b"a\rb",
        b"a\x7fb",
        b"caf\xc3\xa9",
        b"a\x01b",
        b"\xff",
    ],
)
def test_directive_values_that_cannot_be_sent_send_nothing(
    value: bytes,
) -> None:
    """A directive value holding NUL, CR, other controls or non-ASCII
    bytes is refused (by h11 reading the backend, or as an
    InvalidDirective), and the offload server receives nothing."""
    with (
        raw_server(silent) as offload,
        raw_server(
            replies(
                b"HTTP/1.1 200 OK\r\nOffload-Requested: 1\r\n"
                b"Offload-Url: %s\r\nOffload-X-Trace: %s\r\n"
                b"Content-Length: 0\r\n\r\n" % (offload.url.encode(), value)
            )
        ) as backend,
    ):
        outcomes = [call(mode, backend.url) for mode in MODES]

    for outcome in outcomes:
        assert isinstance(
            outcome.error, (InvalidDirective, httpx.RemoteProtocolError)
        )
    assert offload.accepted == 0


def test_a_folded_directive_value_is_sent_on_one_line() -> None:
    """An obsolete folded header line from the backend reaches the
    offload server unfolded, on one line, if at all."""
    log: list[bytes] = []
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    with (
        raw_server(records_raw(log, reply)) as offload,
        raw_server(
            replies(
                b"HTTP/1.1 200 OK\r\nOffload-Requested: 1\r\n"
                b"Offload-Url: %s\r\nOffload-X-Trace: a\r\n b\r\n"
                b"Content-Length: 0\r\n\r\n" % offload.url.encode()
            )
        ) as backend,
    ):
        outcome = call("sync-hook", backend.url)

    if outcome.error is None:
        [request] = log
        assert (b"trace", b"a b") in head_lines(request)
    else:
        assert isinstance(
            outcome.error, (InvalidDirective, httpx.RemoteProtocolError)
        )
        assert log == []


# -- through the proxy: a real uvicorn serving OffloadProxy -----------------


@contextlib.contextmanager
def running_proxy(
    backend_url: str, engine: str, **options: Any
) -> Iterator[tuple[RunningServer, OffloadProxy]]:
    """Serve an `OffloadProxy` on *engine* for *backend_url* with an
    offloader made of *options*, allowing offloads to 127.0.0.1."""
    options.setdefault("policy", DestinationPolicy(hosts=["127.0.0.1"]))
    proxy = make_proxy(
        backend_url, engine, offloader=make_offloader(engine, **options)
    )
    with serve(proxy, lifespan="on") as server:
        yield server, proxy


@pytest.fixture(scope="module")
def proxy(
    backend: RunningServer, engine: str
) -> Iterator[tuple[RunningServer, OffloadProxy]]:
    with running_proxy(backend.url, engine, deadline=5.0) as running:
        yield running


def assert_reveals_nothing(response: httpx.Response, *secrets: str) -> None:
    """No Offload-* header, and no internal address, reaches the
    client."""
    for name, value in response.headers.multi_items():
        assert not name.lower().startswith("offload-")
        for secret in secrets:
            assert secret not in value
    for secret in (*secrets, "internal.example"):
        assert secret.encode() not in response.content


def proxied(
    proxy: tuple[RunningServer, OffloadProxy], headers: dict[str, str]
) -> httpx.Response:
    server, _ = proxy
    with httpx.Client(timeout=10) as client:
        return client.get(server.url + "/", headers=headers)


def assert_idle(proxy: tuple[RunningServer, OffloadProxy]) -> None:
    """The proxy holds no request and its offloader no offload."""
    _, app = proxy
    assert wait_for(lambda: app.active == 0)
    assert wait_for(lambda: app.offloader.in_flight == 0)


def test_proxy_connection_refused(
    proxy: tuple[RunningServer, OffloadProxy],
) -> None:
    """Refused by the offload server: 502 with a generic body."""
    target = f"http://127.0.0.1:{closed_port()}/secret"

    response = proxied(proxy, {"X-Target": target})

    assert response.status_code == 502
    assert response.text == "Bad Gateway\n"
    assert_reveals_nothing(response, target, "/secret")
    assert_idle(proxy)


def test_proxy_refused_destination(
    proxy: tuple[RunningServer, OffloadProxy],
) -> None:
    """A destination outside the policy: 502, and the would-be target
    is never contacted (this one is 127.0.0.2, not an allowed host)."""
    with raw_server(silent, host="127.0.0.2") as target:
        response = proxied(proxy, {"X-Target": target.url + "/x"})

    assert response.status_code == 502
    assert_reveals_nothing(response, target.url, "127.0.0.2")
    assert target.accepted == 0


def test_proxy_address_block_in_any_spelling(
    backend: RunningServer, engine: str
) -> None:
    """With a policy that blocks private addresses, the proxy answers 502
    to an offload aimed at loopback however the address is written, and
    the listener there receives nothing, on either engine."""
    answers = set()

    with (
        raw_server(ok()) as listener,
        running_proxy(
            backend.url, engine, policy=DestinationPolicy(block_private=True)
        ) as running,
    ):
        for url in spellings(listener.port):
            response = proxied(running, {"X-Target": url})
            answers.add((response.status_code, response.text))
            assert_reveals_nothing(response, url)

    assert answers == {(502, "Bad Gateway\n")}
    assert listener.accepted == 0


def test_proxy_reset_before_headers(
    proxy: tuple[RunningServer, OffloadProxy],
) -> None:
    """A reset before any header: 502, revealing nothing."""
    with raw_server(reset_before_headers) as server:
        response = proxied(proxy, {"X-Target": server.url + "/s"})

    assert response.status_code == 502
    assert response.text == "Bad Gateway\n"
    assert_reveals_nothing(response, server.url)
    assert_idle(proxy)


@pytest.mark.parametrize("fault", [reset_after_headers, truncated_body])
def test_proxy_aborts_the_client_on_a_broken_offload_body(
    proxy: tuple[RunningServer, OffloadProxy], fault: Any
) -> None:
    """A reset or a clean close in the middle of the offload body aborts
    the client's connection: the client can tell the response is
    incomplete, it is never a clean short response."""
    server, _ = proxy

    with (
        raw_server(fault) as offload,
        httpx.Client(timeout=10) as client,
        client.stream(
            "GET", server.url + "/", headers={"X-Target": offload.url}
        ) as response,
    ):
        status = response.status_code
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()

    assert status == 200
    assert_idle(proxy)


def test_proxy_truncated_backend_body_while_forwarded(engine: str) -> None:
    """A backend body cut short while forwarded: the offload server never
    gets a whole request, the client gets a 502."""
    bodies: list[bytes] = []

    with raw_server(records_request(bodies)) as offload:
        with (
            raw_server(truncated_forward(offload.url)) as backend,
            running_proxy(backend.url, engine) as running,
        ):
            response = proxied(running, {})
            assert_idle(running)
        closed = wait_for(lambda: offload.closed == offload.accepted)

    assert response.status_code == 502
    assert_reveals_nothing(response, offload.url)
    assert bodies == []
    assert closed


def test_proxy_offload_server_that_never_reads_the_body(
    proxy: tuple[RunningServer, OffloadProxy],
) -> None:
    """An offload server that never reads a forwarded body: 504 at the
    directive's deadline."""
    with raw_server(never_reads_body, rcvbuf=4096) as offload:
        response = proxied(
            proxy,
            {
                "X-Target": offload.url,
                "X-Method": "POST",
                "X-Forward": str(8 * 1024 * 1024),
                "X-Timeout": "0.5",
            },
        )

    assert response.status_code == 504
    assert response.text == "Gateway Timeout\n"
    assert_idle(proxy)


def test_proxy_strips_stray_directive_headers(
    proxy: tuple[RunningServer, OffloadProxy],
) -> None:
    """A backend response that asks for no offload but carries Offload-*
    headers naming an internal URL is relayed without them."""
    response = proxied(proxy, {"X-Plain": "1"})

    assert response.status_code == 200
    assert response.text == "plain"
    assert_reveals_nothing(response, "internal.example")


def raw_client(server: RunningServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_proxy_serves_others_while_a_slow_loris_client_trickles(
    proxy: tuple[RunningServer, OffloadProxy],
) -> None:
    """Clients that trickle their request head or body, a byte at a
    time, do not hold up other clients; once they leave, the proxy is
    idle again."""
    server, _ = proxy
    slow_head = raw_client(server)
    slow_body = raw_client(server)
    slow_body.sendall(
        b"POST / HTTP/1.1\r\nHost: x\r\nX-Plain: 1\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    statuses = []

    with raw_server(ok(b"fast")) as offload:
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1":
            slow_head.sendall(bytes([byte]))
            slow_body.sendall(b"b")
            if byte % 8 == 0:
                statuses.append(
                    proxied(proxy, {"X-Target": offload.url}).status_code
                )
    slow_head.close()
    slow_body.close()

    assert statuses
    assert set(statuses) == {200}
    assert_idle(proxy)


class Stage:
    """Where a raw client hangs up."""

    PARTIAL_HEAD = "partial head"
    PARTIAL_BODY = "partial body"
    BACKEND_THINKING = "backend thinking"
    OFFLOAD_WAITING = "waiting for the offload server"
    OFFLOAD_RELAY = "offload body being relayed"


@pytest.mark.parametrize(
    "stage",
    [
        Stage.PARTIAL_HEAD,
        Stage.PARTIAL_BODY,
        Stage.BACKEND_THINKING,
        Stage.OFFLOAD_WAITING,
        Stage.OFFLOAD_RELAY,
    ],
)
def test_proxy_client_disconnects_at_every_stage(
    proxy: tuple[RunningServer, OffloadProxy], stage: str
) -> None:
    """A client that hangs up at any stage leaves nothing behind: the
    proxy is idle again, and an offload server it was talking to sees
    its connection closed within a second."""
    server, _ = proxy
    behaviour = silent if stage == Stage.OFFLOAD_WAITING else trickle(0.05)

    with raw_server(behaviour) as offload:
        sock = raw_client(server)
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Target: %s\r\n" % (
            offload.url.encode()
        )
        if stage == Stage.PARTIAL_HEAD:
            sock.sendall(head[:20])
        elif stage == Stage.PARTIAL_BODY:
            sock.sendall(
                head.replace(b"GET", b"POST")
                + b"Content-Length: 100\r\n\r\n"
                + b"x" * 10
            )
        elif stage == Stage.BACKEND_THINKING:
            sock.sendall(head + b"X-Delay: 0.5\r\n\r\n")
        else:
            sock.sendall(head + b"\r\n")
            assert wait_for(lambda: offload.accepted == 1)
            if stage == Stage.OFFLOAD_RELAY:
                assert sock.recv(100).startswith(b"HTTP/1.1 200")
        time.sleep(0.1)
        sock.close()
        offload_closed = wait_for(
            lambda: offload.closed == offload.accepted, timeout=1.0
        )

    assert offload_closed
    assert_idle(proxy)


# -- cancellation ------------------------------------------------------------


@pytest.mark.anyio
async def test_a_cancelled_offload_leaves_no_orphan_connection(
    backend: RunningServer,
) -> None:
    """An offload cancelled just after the pool gave it a new connection
    (httpcore leaks such connections) leaves the pool usable: the next
    offload gets the one connection the pool may hold."""
    offloader = Offloader(
        limits=httpx.Limits(max_connections=1),
        timeout=httpx.Timeout(5.0, pool=0.5),
    )

    async def offload(client: httpx.AsyncClient, url: str) -> httpx.Response:
        response = await client.send(
            client.build_request(
                "GET", backend.url, headers={"X-Target": url}
            ),
            stream=True,
        )
        return await offloader.amodify_response(response)

    with raw_server(trickle(interval=0.05)) as slow, raw_server(ok()) as fast:
        async with offloader, httpx.AsyncClient() as client:
            holding = await offload(client, slow.url)
            queued = asyncio.create_task(offload(client, fast.url))
            await asyncio.sleep(0.2)  # queued now waits for the connection
            # Closing mid-body drops the connection; the pool opens a new
            # one for the queued offload, which is cancelled before it
            # can run on it.
            await holding.aclose()
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            after = await offload(client, fast.url)
            body = await after.aread()
            await after.aclose()

    assert body == b"ok"
