"""The httpx transport over aiohttp, against real loopback servers."""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import sys
import weakref
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import offloader
from offloader.hooks.aiohttp import AiohttpTransport

from .faultservers import (
    never_reads_body,
    raw_server,
    reset_before_headers,
    trickle,
)
from .servers import serve

pytestmark = pytest.mark.anyio


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer with what was received: method, target, headers, body."""
    assert scope["type"] == "http"
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    path = scope["raw_path"].decode()
    if path == "/slow":
        await asyncio.sleep(2)
    target = path + (
        "?" + scope["query_string"].decode() if scope["query_string"] else ""
    )
    headers = [
        (b"x-method", scope["method"].encode()),
        (b"x-target", target.encode()),
        (b"x-headers", b";".join(name for name, _ in scope["headers"])),
        (b"x-cookie", dict(scope["headers"]).get(b"cookie", b"-")),
        (b"set-cookie", b"session=secret; Path=/"),
    ]
    if path == "/offload":
        headers += [
            (b"offload-requested", b"1"),
            (b"offload-url", dict(scope["headers"])[b"x-next"]),
        ]
    await send({"type": "http.response.start", "status": 201,
                "headers": headers})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_relays_status_headers_and_body_with_the_url_as_given() -> None:
    """A request goes out with its URL untouched (escapes, query) and
    the response comes back with its status, headers and body."""
    transport = AiohttpTransport()
    with serve(echo_app) as server:
        request = httpx.Request(
            "PUT", f"{server.url}/a%2Fb/c?x=1&y=%20", content=b"hello"
        )
        response = await transport.handle_async_request(request)
        body = await response.aread()
        await transport.aclose()

    assert response.status_code == 201
    assert response.headers["x-method"] == "PUT"
    assert response.headers["x-target"] == "/a%2Fb/c?x=1&y=%20"
    assert body == b"hello"


async def test_streams_a_request_body_and_adds_no_headers() -> None:
    """A streamed request body arrives whole, and the transport adds no
    Accept, Accept-Encoding, Content-Type or User-Agent of its own."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1000

    transport = AiohttpTransport()
    with serve(echo_app) as server:
        request = httpx.Request("POST", server.url, content=chunks())
        response = await transport.handle_async_request(request)
        body = await response.aread()
        await transport.aclose()

    assert body == b"x" * 100_000
    sent = response.headers["x-headers"].split(";")
    assert "user-agent" not in sent
    assert "accept-encoding" not in sent
    assert "accept" not in sent
    assert "content-type" not in sent


async def test_keeps_no_cookies_between_requests() -> None:
    """A cookie set by one response is never sent with a later request:
    a proxy must not carry one client's session to another."""
    transport = AiohttpTransport()
    with serve(echo_app) as server:
        for _ in range(2):
            response = await transport.handle_async_request(
                httpx.Request("GET", server.url)
            )
            await response.aread()
        await transport.aclose()

    assert response.headers["x-cookie"] == "-"


async def test_refused_connection_is_a_connect_error() -> None:
    """A port with no server gives httpx.ConnectError, not a timeout."""
    transport = AiohttpTransport()
    request = httpx.Request("GET", f"http://127.0.0.1:{closed_port()}/")

    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(request)
    await transport.aclose()


async def test_read_timeout_from_the_request_extension() -> None:
    """The ``read`` timeout httpx puts on a request bounds the wait."""
    transport = AiohttpTransport()
    with serve(echo_app) as server:
        request = httpx.Request(
            "GET",
            f"{server.url}/slow",
            extensions={"timeout": httpx.Timeout(0.2).as_dict()},
        )

        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(request)
        await transport.aclose()


async def test_offloader_runs_on_it_end_to_end() -> None:
    """An Offloader on this transport carries out a directive and maps
    its failures to the offloader's errors."""
    with serve(echo_app) as server:
        engine = AiohttpTransport()
        async with offloader.Offloader(async_transport=engine) as off:
            backend = httpx.AsyncClient(transport=AiohttpTransport())
            response = await backend.send(
                backend.build_request(
                    "GET",
                    f"{server.url}/offload",
                    headers={"x-next": f"{server.url}/done?z=1"},
                ),
                stream=True,
            )
            final = await off.amodify_response(response)
            await final.aread()
            broken = await backend.send(
                backend.build_request(
                    "GET",
                    f"{server.url}/offload",
                    headers={"x-next": f"http://127.0.0.1:{closed_port()}/"},
                ),
                stream=True,
            )
            with pytest.raises(offloader.OffloadRequestFailed) as failed:
                await off.amodify_response(broken)
            await backend.aclose()
        await engine.aclose()

    assert final.status_code == 201
    assert final.headers["x-target"] == "/done?z=1"
    assert "offload-url" not in final.headers
    assert failed.value.status_code == 502


async def test_policy_checks_the_resolved_addresses() -> None:
    """With a policy that blocks private networks, a name resolving to
    loopback is refused before any connection is made."""
    policy = offloader.DestinationPolicy(block_private=True)
    transport = AiohttpTransport(policy=policy)
    with serve(echo_app) as server:
        request = httpx.Request("GET", f"http://localhost:{server.port}/")

        with pytest.raises(offloader.DestinationRefused):
            await transport.handle_async_request(request)
        await transport.aclose()
        assert server.open_connections == 0


async def test_a_full_pool_is_a_pool_timeout() -> None:
    """With every connection taken, a request waits the ``pool`` timeout
    and fails with httpx.PoolTimeout (503 through an offloader), not a
    connect timeout."""
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=1))
    timeouts = httpx.Timeout(5.0, pool=0.2).as_dict()
    with raw_server(trickle(interval=0.5)) as server:
        url = f"http://127.0.0.1:{server.port}/"
        holding = await transport.handle_async_request(
            httpx.Request("GET", url, extensions={"timeout": timeouts})
        )

        with pytest.raises(httpx.PoolTimeout):
            await transport.handle_async_request(
                httpx.Request("GET", url, extensions={"timeout": timeouts})
            )
        await holding.aclose()
        await transport.aclose()

    assert server.accepted == 1


async def test_a_reset_is_not_retried() -> None:
    """A server that drops the connection before answering gets exactly
    one attempt: the transport never sends a request twice."""
    transport = AiohttpTransport()
    with raw_server(reset_before_headers) as server:
        request = httpx.Request("GET", f"http://127.0.0.1:{server.port}/")

        with pytest.raises(httpx.TransportError):
            await transport.handle_async_request(request)
        await transport.aclose()

    assert server.accepted == 1


async def test_an_error_of_the_body_iterator_is_raised_as_is() -> None:
    """An exception raised by a streamed request body reaches the caller
    unwrapped, as with httpx's own transport."""

    class Refused(Exception):
        pass

    async def chunks() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise Refused

    transport = AiohttpTransport()
    with serve(echo_app) as server:
        request = httpx.Request("POST", server.url, content=chunks())

        with pytest.raises(Refused):
            await transport.handle_async_request(request)
        await transport.aclose()


def test_importing_offloader_does_not_import_aiohttp() -> None:
    """aiohttp is an optional engine: the package never loads it."""
    code = "import sys, offloader; print('aiohttp' in sys.modules)"

    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )

    assert out.stdout.strip() == "False"


async def early_answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer at once, before reading any of the request body."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"5")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"early"})


async def test_an_early_answer_waits_for_the_whole_body() -> None:
    """When the server answers before the body is sent, the response is
    returned only once the body's iterator has ended, as with httpx's
    own transport, and an error it raises then reaches the caller: a
    proxy must learn that its client hung up mid-upload."""

    class Gone(Exception):
        pass

    ended: list[str] = []

    async def chunks(fail: bool) -> AsyncIterator[bytes]:
        yield b"x" * 10
        await asyncio.sleep(0.3)
        ended.append("failed" if fail else "done")
        if fail:
            raise Gone
        yield b"y" * 10

    transport = AiohttpTransport()
    with serve(early_answer) as server:
        response = await transport.handle_async_request(
            httpx.Request("POST", server.url, content=chunks(fail=False))
        )
        body = await response.aread()
        with pytest.raises(Gone):
            await transport.handle_async_request(
                httpx.Request("POST", server.url, content=chunks(fail=True))
            )
        await transport.aclose()

    assert body == b"early"
    assert ended == ["done", "failed"]


async def test_a_request_abandoned_mid_body_closes_its_connection() -> None:
    """A request cancelled while its body is stuck behind a server that
    never reads closes its connection at once, rather than leaving the
    socket to wait for the unsent bytes to drain."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b"x" * 65536

    transport = AiohttpTransport()
    with raw_server(never_reads_body, rcvbuf=4096) as server:
        request = httpx.Request(
            "POST", f"http://127.0.0.1:{server.port}/", content=chunks()
        )
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                transport.handle_async_request(request), 0.3
            )
        for _ in range(100):
            if server.closed == server.accepted:
                break
            await asyncio.sleep(0.01)
        closed, accepted = server.closed, server.accepted
        await transport.aclose()

    assert accepted == 1
    assert closed == 1


async def test_idle_connections_past_the_keepalive_cap_are_closed() -> None:
    """After a burst, the pool keeps at most ``max_keepalive_connections``
    idle connections; the others are closed as they are given back."""
    transport = AiohttpTransport(
        limits=httpx.Limits(max_keepalive_connections=2, keepalive_expiry=30)
    )
    with serve(echo_app) as server:

        async def one() -> bytes:
            response = await transport.handle_async_request(
                httpx.Request("GET", f"{server.url}/slow")
            )
            return await response.aread()

        bodies = await asyncio.gather(*(one() for _ in range(6)))
        for _ in range(100):
            if server.open_connections <= 2:
                break
            await asyncio.sleep(0.01)
        idle = server.open_connections
        await transport.aclose()

    assert bodies == [b""] * 6
    assert idle == 2


async def test_a_freed_connection_goes_to_the_request_waiting() -> None:
    """With every connection taken, a request waits for one; when one is
    given back within the ``pool`` timeout, the waiting request gets it,
    and the cap still holds afterwards."""
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=1))
    timeouts = httpx.Timeout(5.0, pool=2.0).as_dict()
    with serve(echo_app) as server:

        def request() -> httpx.Request:
            return httpx.Request(
                "GET", server.url, extensions={"timeout": timeouts}
            )

        holding = await transport.handle_async_request(request())
        waiting = asyncio.ensure_future(
            transport.handle_async_request(request())
        )
        await asyncio.sleep(0.2)
        waited = not waiting.done()
        await holding.aclose()
        second = await waiting
        with pytest.raises(httpx.PoolTimeout):
            await transport.handle_async_request(
                httpx.Request(
                    "GET",
                    server.url,
                    extensions={
                        "timeout": httpx.Timeout(5.0, pool=0.1).as_dict()
                    },
                )
            )
        await second.aclose()
        third = await transport.handle_async_request(request())
        await third.aclose()
        await transport.aclose()

    assert waited
    assert second.status_code == 201
    assert third.status_code == 201


async def test_a_closed_response_keeps_no_aiohttp_objects_alive() -> None:
    """Once closed, a response lets go of aiohttp's response (its
    headers, URL and buffers): the proxy closes a backend response
    before the offload it asked for, and keeps the httpx response as
    long as that offload runs. Closing twice releases the pool slot
    once, and a closed body cannot be read."""
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=1))
    with serve(echo_app) as server:
        response = await transport.handle_async_request(
            httpx.Request("GET", server.url)
        )
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        inner = stream._response  # type: ignore[attr-defined]
        aiohttp_response = weakref.ref(inner)
        del inner
        await response.aread()
        await response.aclose()
        await stream.aclose()
        gc.collect()
        after_close = aiohttp_response()
        in_use = transport.connection_counts()[0]
        with pytest.raises(httpx.StreamClosed):
            async for _ in stream:
                pass
        # The one slot is free: another request gets it at once.
        again = await transport.handle_async_request(
            httpx.Request(
                "GET", server.url, extensions={"timeout": {"pool": 1.0}}
            )
        )
        await again.aread()
        await again.aclose()
        await transport.aclose()

    assert after_close is None
    assert in_use == 0
    assert again.status_code == 201


async def test_a_body_whose_end_cannot_be_written_leaves_no_task_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that closes the connection just as a streamed body ends
    fails the request; the writer task aiohttp sends the body from ends
    without an error nobody reads ("Task exception was never
    retrieved"), and the drop is logged at DEBUG."""
    import aiohttp.http_writer

    write_eof = aiohttp.http_writer.StreamWriter.write_eof

    async def closed_first(self: Any, chunk: bytes = b"") -> None:
        # The server's close lands between the last chunk and the end.
        self._protocol.transport.close()
        await write_eof(self, chunk)

    monkeypatch.setattr(
        aiohttp.http_writer.StreamWriter, "write_eof", closed_first
    )
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unhandled.append(context))

    async def chunks() -> AsyncIterator[bytes]:
        yield b"the whole body"

    transport = AiohttpTransport()
    caplog.set_level("DEBUG", logger="offloader")
    try:
        with serve(echo_app) as server:
            request = httpx.Request("PUT", server.url, content=chunks())
            with pytest.raises(httpx.TransportError):
                await transport.handle_async_request(request)
            await transport.aclose()
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)

    assert unhandled == []
    assert any(
        "the connection closed as the body of PUT" in record.getMessage()
        for record in caplog.records
    )
