"""End-to-end tests of `OffloadProxy`: a real uvicorn serving the proxy,
real backend and offload servers on loopback, real httpx clients."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from offloader import (
    DestinationPolicy,
    DestinationRefused,
    InvalidDirective,
    OffloadCancelled,
    OffloadCapacityExceeded,
    OffloadEvent,
    OffloadRequestFailed,
    OffloadTimeout,
)
from offloader._netguard import make_async_transport
from offloader.hooks import asgi
from offloader.hooks.aiohttp import AiohttpTransport
from offloader.hooks.asgi import (
    OffloadProxy,
    backend_request,
    error_response,
    response_headers,
)
from tests.engines import make_offloader, make_proxy
from tests.servers import RunningServer, serve
from tests.upstreams import Backend, OffloadServer, wait_for


@pytest.fixture(scope="module")
def backend() -> Iterator[RunningServer]:
    with serve(Backend()) as server:
        yield server


@pytest.fixture(scope="module")
def offload_server() -> Iterator[RunningServer]:
    with serve(OffloadServer()) as server:
        yield server


@contextlib.contextmanager
def running_proxy(
    backend_url: str, engine: str, **options: Any
) -> Iterator[tuple[RunningServer, OffloadProxy]]:
    """Serve an `OffloadProxy` on *engine* in front of *backend_url*."""
    if "offloader" not in options:
        options["offloader"] = make_offloader(
            engine, policy=DestinationPolicy(hosts=["127.0.0.1"])
        )
    proxy = make_proxy(backend_url, engine, **options)
    # The proxy is the edge: uvicorn must not trust X-Forwarded-For.
    with serve(proxy, lifespan="on", proxy_headers=False) as server:
        yield server, proxy


@pytest.fixture(scope="module")
def proxy(backend: RunningServer, engine: str) -> Iterator[RunningServer]:
    with running_proxy(backend.url, engine) as (server, _):
        yield server


def offload_to(url: str, **extra: str) -> dict[str, str]:
    """Request headers that make the test backend ask for an offload."""
    headers = {
        "x-reply-offload-requested": "",
        "x-reply-offload-url": url,
    }
    for name, value in extra.items():
        headers["x-reply-offload-" + name.replace("_", "-")] = value
    return headers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def many_gets(
    url: str, headers: dict[str, str], count: int, shards: int = 10
) -> list[httpx.Response]:
    """Send *count* concurrent GETs, spread over *shards* clients.

    One httpx pool slows down with the square of its concurrent
    requests; several small pools keep the client from being the
    bottleneck.
    """
    clients = [httpx.AsyncClient(timeout=60) for _ in range(shards)]
    try:
        return await asyncio.gather(
            *(
                clients[index % shards].get(url, headers=headers)
                for index in range(count)
            )
        )
    finally:
        for client in clients:
            await client.aclose()


def offload_headers_in(response: httpx.Response) -> list[str]:
    return [
        name for name in response.headers if name.lower().startswith("offload")
    ]


@pytest.mark.parametrize(
    ("method", "status"),
    [("GET", 200), ("POST", 201), ("PUT", 409), ("DELETE", 204)],
)
def test_pass_through_keeps_method_body_and_status(
    proxy: RunningServer, method: str, status: int
) -> None:
    """A response asking for no offload is relayed as the backend sent it,
    and the request reaches the backend with its method and body."""
    body = b"" if method == "GET" else b"payload \x00\xff"

    response = httpx.request(
        method,
        proxy.url + "/items/1",
        content=body,
        headers={"x-status": str(status), "x-reply-x-answer": "42"},
    )

    assert response.status_code == status
    assert response.headers["x-answer"] == "42"
    if status != 204:
        seen = response.json()
        assert seen["method"] == method
        assert seen["body"].encode("latin-1") == body
        assert seen["raw_path"] == "/items/1"


def test_path_and_raw_query_are_kept(proxy: RunningServer) -> None:
    """The path and query reach the backend exactly as sent, escapes and
    all."""
    target = "/a%2Fb/c%20d?x=1&y=%2F&y=2&z"

    response = httpx.get(proxy.url + target)

    seen = response.json()
    assert seen["raw_path"] == "/a%2Fb/c%20d"
    assert seen["query"] == "x=1&y=%2F&y=2&z"


def test_backend_path_prefixes_the_target(
    backend: RunningServer, engine: str
) -> None:
    """A path in the backend URL is put in front of each request's path."""
    with running_proxy(backend.url + "/app/", engine) as (server, _):
        response = httpx.get(server.url + "/x?q=1")

    assert response.json()["raw_path"] == "/app/x"


def test_request_headers_are_forwarded_and_cleaned(
    proxy: RunningServer, backend: RunningServer
) -> None:
    """End-to-end headers pass, hop-by-hop ones do not, X-Forwarded-* are
    set, and Host is the backend's own."""
    response = httpx.get(
        proxy.url + "/h",
        headers={
            "x-custom": "kept",
            "connection": "keep-alive, x-private",
            "x-private": "dropped",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "x-forwarded-for": "203.0.113.9",
            "x-forwarded-proto": "gopher",
        },
    )

    seen = dict(response.json()["headers"])
    assert seen["x-custom"] == "kept"
    for name in ("x-private", "keep-alive", "te", "connection"):
        assert name not in seen
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == proxy.url.removeprefix("http://")
    assert seen["host"] == backend.url.removeprefix("http://")


def test_host_can_be_preserved(backend: RunningServer, engine: str) -> None:
    """With preserve_host, the backend sees the client's Host."""
    with running_proxy(backend.url, engine, preserve_host=True) as (server, _):
        response = httpx.get(
            server.url + "/h", headers={"host": "shop.example"}
        )

    assert dict(response.json()["headers"])["host"] == "shop.example"


def test_response_hop_by_hop_headers_are_dropped(
    proxy: RunningServer,
) -> None:
    """Hop-by-hop response headers, and those named in Connection, never
    reach the client; the others do, repeated ones included."""
    response = httpx.get(
        proxy.url + "/h",
        headers=[
            ("x-reply-connection", "x-internal"),
            ("x-reply-x-internal", "secret"),
            ("x-reply-proxy-authenticate", "Basic"),
            ("x-reply-set-cookie", "a=1"),
            ("x-reply-set-cookie", "b=2"),
        ],
    )

    assert "x-internal" not in response.headers
    assert "proxy-authenticate" not in response.headers
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]


@pytest.mark.anyio
async def test_request_body_is_streamed_not_buffered(
    backend: RunningServer, engine: str
) -> None:
    """The backend receives the first chunk of a body before the client
    has sent the second: the proxy streams, it does not buffer."""
    app = Backend()
    with (
        serve(app) as slow_backend,
        running_proxy(slow_backend.url, engine) as (
            server,
            _,
        ),
    ):

        async def body() -> AsyncIterator[bytes]:
            yield b"first"
            # Only sent once the backend has seen the first chunk: a
            # buffering proxy would never get here.
            for _ in range(500):
                if app.first_chunk.is_set():
                    break
                await asyncio.sleep(0.01)
            yield b"second"

        async with httpx.AsyncClient() as client:
            response = await client.post(
                server.url + "/stream-in", content=body()
            )

    assert app.first_chunk.is_set()
    assert response.content == b"first|second"


def test_offload_flow(
    proxy: RunningServer, offload_server: RunningServer
) -> None:
    """A backend answer with Offload-* headers is replaced by the offload
    server's answer, which gets the directive's headers."""
    response = httpx.get(
        proxy.url + "/ask",
        headers=offload_to(
            offload_server.url + "/slow?delay=0&k=v%20w", x_trace="abc"
        ),
    )

    assert response.status_code == 200
    assert response.headers["x-slow"] == "yes"
    seen = response.json()
    assert seen["raw_path"] == "/slow"
    assert seen["query"] == "delay=0&k=v%20w"
    assert dict(seen["headers"])["trace"] == "abc"
    assert offload_headers_in(response) == []


def test_offload_forwards_the_backend_body(
    proxy: RunningServer, offload_server: RunningServer
) -> None:
    """With Offload-Forward-Body, the backend's body goes to the offload
    server as a POST body."""
    response = httpx.post(
        proxy.url + "/ask",
        content=b"to forward",
        headers=offload_to(
            offload_server.url + "/slow",
            method="POST",
            forward_body="",
        ),
    )

    seen = response.json()
    assert seen["method"] == "POST"
    backend_echo = json.loads(seen["body"])
    assert backend_echo["body"] == "to forward"


def test_no_offload_header_reaches_the_client(
    proxy: RunningServer, offload_server: RunningServer
) -> None:
    """Offload-* headers are stripped on every path: a plain backend
    answer, an offload answer that carries its own, and an error."""
    plain = httpx.get(
        proxy.url + "/p", headers={"x-reply-offload-x-debug": "1"}
    )
    offloaded = httpx.get(
        proxy.url + "/p",
        headers=offload_to(offload_server.url + "/offloading"),
    )
    failed = httpx.get(
        proxy.url + "/p", headers=offload_to("ftp://10.0.0.1/secret")
    )

    assert plain.status_code == 200
    assert offloaded.status_code == 201
    assert offloaded.content == b"final"
    assert failed.status_code == 502
    for response in (plain, offloaded, failed):
        assert offload_headers_in(response) == []


def test_invalid_directive_gives_a_generic_502(proxy: RunningServer) -> None:
    """An invalid directive is the backend's fault: 502, and the body
    names neither the URL nor the header."""
    response = httpx.get(
        proxy.url + "/p", headers=offload_to("ftp://internal.example/key")
    )

    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Bad Gateway\n"


def test_refused_destination_gives_502(
    proxy: RunningServer, offload_server: RunningServer
) -> None:
    """A destination outside the policy gives 502 and receives nothing."""
    port = offload_server.port
    before = offload_server.server.server_state.total_requests

    response = httpx.get(
        proxy.url + "/p", headers=offload_to(f"http://localhost:{port}/slow")
    )

    assert response.status_code == 502
    assert response.text == "Bad Gateway\n"
    assert offload_server.server.server_state.total_requests == before


def test_unreachable_backend_gives_502(engine: str) -> None:
    """A backend that refuses connections gives 502."""
    with running_proxy(f"http://127.0.0.1:{free_port()}", engine) as (
        server,
        _,
    ):
        response = httpx.get(server.url + "/x")

    assert response.status_code == 502
    assert "127.0.0.1" not in response.text


def test_unreachable_offload_server_gives_502(proxy: RunningServer) -> None:
    """An offload server that refuses connections gives 502."""
    response = httpx.get(
        proxy.url + "/p",
        headers=offload_to(f"http://127.0.0.1:{free_port()}/gone"),
    )

    assert response.status_code == 502
    assert response.text == "Bad Gateway\n"


def test_offload_timeout_gives_504(
    proxy: RunningServer, offload_server: RunningServer
) -> None:
    """An offload that passes its deadline gives 504."""
    response = httpx.get(
        proxy.url + "/p",
        headers=offload_to(
            offload_server.url + "/slow?delay=5", timeout="0.2"
        ),
    )

    assert response.status_code == 504
    assert response.text == "Gateway Timeout\n"


@pytest.mark.anyio
async def test_too_many_offloads_give_503_with_retry_after(
    backend: RunningServer, offload_server: RunningServer, engine: str
) -> None:
    """Past max_offloads, the proxy answers 503 with Retry-After."""
    offloader = make_offloader(
        engine, max_offloads=1, policy=DestinationPolicy(hosts=["127.0.0.1"])
    )
    with running_proxy(backend.url, engine, offloader=offloader) as (
        server,
        _,
    ):
        async with httpx.AsyncClient() as client:
            held = asyncio.ensure_future(
                client.get(
                    server.url + "/p",
                    headers=offload_to(offload_server.url + "/slow?delay=1"),
                )
            )
            await wait_for(lambda: offloader.in_flight == 1)
            refused = await client.get(
                server.url + "/p",
                headers=offload_to(offload_server.url + "/slow?delay=0"),
            )
            first = await held

    assert first.status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.text == "Service Unavailable\n"


@pytest.mark.anyio
async def test_too_many_requests_give_503_at_once(
    backend: RunningServer, offload_server: RunningServer, engine: str
) -> None:
    """Past max_requests in flight, new requests get 503 with Retry-After
    without reaching the backend."""
    with running_proxy(backend.url, engine, max_requests=2, retry_after=3) as (
        server,
        proxy,
    ):
        async with httpx.AsyncClient() as client:
            held = [
                asyncio.ensure_future(
                    client.get(
                        server.url + "/p",
                        headers=offload_to(
                            offload_server.url + "/slow?delay=1"
                        ),
                    )
                )
                for _ in range(2)
            ]
            await wait_for(lambda: proxy.active == 2)
            refused = await client.get(server.url + "/p")
            answered = await asyncio.gather(*held)

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "3"
    assert [r.status_code for r in answered] == [200, 200]


@pytest.mark.anyio
async def test_a_request_waits_past_5_s_for_a_backend_connection(
    offload_server: RunningServer, engine: str
) -> None:
    """With every backend connection busy, a request waits for one
    (`DEFAULT_BACKEND_TIMEOUT`'s pool timeout, 15 s) rather than getting
    503 after 5 s: a burst queues there while the proxy works through
    it."""
    one = httpx.Limits(max_connections=1)
    transport: httpx.AsyncBaseTransport = (
        AiohttpTransport(limits=one)
        if engine == "aiohttp"
        else make_async_transport(DestinationPolicy(), one)
    )
    # The slow service stands in for a backend whose answer takes 6 s.
    with running_proxy(
        offload_server.url, engine, backend_transport=transport
    ) as (server, proxy):
        async with httpx.AsyncClient(timeout=30) as client:
            busy = asyncio.ensure_future(
                client.get(server.url + "/slow?delay=6")
            )
            await wait_for(lambda: proxy.active == 1)
            started = time.monotonic()
            waiting = await client.get(server.url + "/slow?delay=0")
            waited = time.monotonic() - started
            first = await busy

    assert first.status_code == 200
    assert waiting.status_code == 200
    assert waited > 5.0


def test_default_max_requests_leaves_descriptors_for_the_backend_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default cap on requests in flight leaves room, within the
    descriptor limit, for two descriptors per request plus a full
    backend pool: 9,000 held offloads fit under a limit of 20,000."""
    resource = pytest.importorskip("resource")
    monkeypatch.setattr(resource, "getrlimit", lambda _: (20_000, 20_000))
    backend_cap = asgi.DEFAULT_BACKEND_LIMITS.max_connections
    assert backend_cap is not None

    default = asgi.default_max_requests()
    uncapped = asgi.default_max_requests(None)

    assert default >= 9_000
    assert 2 * default + backend_cap + 512 <= 20_000
    assert uncapped == default  # no cap is counted as 1,024 connections
    assert asgi.default_max_requests(0) > default


def test_truncated_offload_body_aborts_the_client_connection(
    proxy: RunningServer, offload_server: RunningServer
) -> None:
    """An offload body that breaks off after the response started is not
    finished cleanly: the client's connection is aborted."""
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(
            proxy.url + "/p",
            headers=offload_to(offload_server.url + "/truncated"),
        )


@pytest.mark.anyio
async def test_client_disconnect_cancels_the_offload(
    backend: RunningServer, engine: str
) -> None:
    """When the client goes away, the offload request is cancelled at
    once: the offload server sees its connection close within a second,
    and the proxy holds nothing afterwards. Observers see the offload
    end as cancelled, not as a failure of the offload server."""
    app = OffloadServer()
    events: list[OffloadEvent] = []
    offloader = make_offloader(
        engine,
        policy=DestinationPolicy(hosts=["127.0.0.1"]),
        observers=[events.append],
    )
    with (
        serve(app) as upstream,
        running_proxy(backend.url, engine, offloader=offloader) as (
            server,
            proxy,
        ),
    ):
        async with httpx.AsyncClient() as client:
            request = asyncio.ensure_future(
                client.get(
                    server.url + "/p",
                    headers=offload_to(upstream.url + "/hang"),
                )
            )
            await wait_for(app.hang_started.is_set)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
            gone_at = time.monotonic()
        disconnected = await asyncio.to_thread(app.disconnected.wait, 5)
        await wait_for(lambda: proxy.active == 0 and offloader.in_flight == 0)

    assert disconnected
    assert app.disconnected_at is not None
    assert app.disconnected_at - gone_at < 1.0
    assert proxy.active == 0
    assert offloader.in_flight == 0
    assert [event.kind for event in events] == ["start", "error"]
    assert isinstance(events[1].error, OffloadCancelled)


@pytest.mark.anyio
async def test_server_sent_events_arrive_one_by_one(
    backend: RunningServer, engine: str
) -> None:
    """Each event reaches the client as soon as the offload server sends
    it: the next one is only sent after the client has the previous."""
    app = OffloadServer()
    with (
        serve(app) as upstream,
        running_proxy(backend.url, engine) as (server, _),
    ):
        received = []
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream(
                "GET",
                server.url + "/events",
                headers=offload_to(upstream.url + "/sse?n=3"),
            ) as response,
        ):
            app.release.release()
            async for chunk in response.aiter_raw():
                received.append(chunk)
                app.release.release()

    assert response.headers["content-type"] == "text/event-stream"
    assert received == [f"data: event {i}\n\n".encode() for i in range(3)]


@pytest.mark.anyio
async def test_500_offloads_behind_a_four_slot_backend(
    backend: RunningServer, offload_server: RunningServer, engine: str
) -> None:
    """500 concurrent one-second offloads behind a backend with four
    worker slots all succeed, in a few seconds rather than the 125 s the
    backend would need doing the work itself. (The bound is generous:
    speed figures belong to the benchmarks.)"""
    headers = offload_to(offload_server.url + "/slow?delay=1")
    started = time.monotonic()

    with running_proxy(backend.url, engine) as (server, _):
        responses = await many_gets(server.url + "/work", headers, 500)
    elapsed = time.monotonic() - started

    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 500, collections.Counter(statuses)
    assert all(r.headers["x-slow"] == "yes" for r in responses)
    assert elapsed < 60


def test_head_is_passed_through(proxy: RunningServer) -> None:
    """A HEAD request reaches the backend as HEAD; the client gets the
    headers and no body."""
    response = httpx.head(proxy.url + "/h", headers={"x-reply-x-kind": "head"})

    assert response.status_code == 200
    assert response.headers["x-kind"] == "head"
    assert response.content == b""


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidDirective("bad URL http://10.0.0.1/secret"), 502),
        (DestinationRefused("host '10.0.0.1' is not allowed"), 502),
        (OffloadRequestFailed("offload to http://10.0.0.1/ failed"), 502),
        (OffloadTimeout("offload to http://10.0.0.1/ timed out"), 504),
        (OffloadCapacityExceeded("500 offloads in flight"), 503),
        (httpx.ConnectError("connecting to http://10.0.0.1/ failed"), 502),
        (httpx.ReadTimeout("reading from 10.0.0.1 timed out"), 504),
        (httpx.PoolTimeout("no connection to 10.0.0.1"), 503),
        (RuntimeError("a bug near 10.0.0.1"), 500),
    ],
)
def test_error_response_maps_errors_to_generic_answers(
    error: Exception, status: int
) -> None:
    """Each failure maps to its status, a plain-text reason phrase that
    reveals nothing of the error, and Retry-After for 503 only."""
    answer = error_response(error, retry_after=7)

    headers = dict(answer.headers)
    assert answer.status_code == status
    assert b"10.0.0.1" not in answer.body
    assert answer.body.endswith(b"\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["content-length"] == str(len(answer.body))
    assert headers.get("retry-after") == ("7" if status == 503 else None)
    assert answer.raw_headers == [
        (name.encode(), value.encode()) for name, value in answer.headers
    ]


def test_response_headers_keep_only_what_a_client_may_see() -> None:
    """response_headers drops hop-by-hop, Connection-named and Offload-*
    headers (and extra prefixes), and keeps the framing of the raw body."""
    response = httpx.Response(
        200,
        headers=[
            ("Content-Length", "5"),
            ("Content-Encoding", "gzip"),
            ("Connection", "X-Secret"),
            ("X-Secret", "1"),
            ("Transfer-Encoding", "chunked"),
            ("Offload-Url", "http://10.0.0.1/"),
            ("X-Accel-Redirect", "/internal"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ],
    )

    kept = response_headers(response, strip_prefixes=["X-Accel-"])

    assert kept == [
        (b"content-length", b"5"),
        (b"content-encoding", b"gzip"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]


def test_backend_request_sets_forwarding_headers() -> None:
    """backend_request keeps the raw target under the backend's path,
    drops hop-by-hop headers, appends to X-Forwarded-For and sends the
    backend's Host."""
    request = backend_request(
        "http://backend.internal:3000/app",
        "POST",
        b"/a%2Fb?q=%20",
        [("Host", "shop.example"), ("TE", "trailers"), ("X-A", "1")],
        content=b"body",
        client_host="203.0.113.5",
        scheme="https",
    )

    assert request.method == "POST"
    assert request.url.raw_path == b"/app/a%2Fb?q=%20"
    assert request.headers["host"] == "backend.internal:3000"
    assert request.headers["x-forwarded-for"] == "203.0.113.5"
    assert request.headers["x-forwarded-proto"] == "https"
    assert request.headers["x-forwarded-host"] == "shop.example"
    assert request.headers["x-a"] == "1"
    assert "te" not in request.headers
    assert request.content == b"body"


def test_the_public_names_are_exported_and_sorted() -> None:
    """offloader.hooks.asgi exports a sorted __all__ of existing names."""
    names = asgi.__all__

    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    for name in names:
        assert hasattr(asgi, name), name


@pytest.mark.anyio
async def test_client_disconnect_mid_upload_ends_the_exchange(
    backend: RunningServer, engine: str
) -> None:
    """A client that goes away halfway through its request body ends the
    exchange: the backend request is dropped and the proxy holds
    nothing."""
    app = Backend()
    with (
        serve(app) as slow_backend,
        running_proxy(slow_backend.url, engine) as (
            server,
            proxy,
        ),
    ):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /stream-in HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b"a" * 1000
        )
        await writer.drain()
        await wait_for(app.first_chunk.is_set)
        writer.close()
        await writer.wait_closed()
        idle = await wait_for(
            lambda: proxy.active == 0 and slow_backend.open_connections == 0
        )

    assert app.first_chunk.is_set()
    assert idle
