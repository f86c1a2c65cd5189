"""A request that meets a keep-alive connection the server has just
closed is sent once more on a new connection, if it is safe to: the
method is idempotent, the body is in memory, and the connection was a
reused one (RFC 9112, section 9.3.1)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from offloader import DestinationPolicy
from offloader._netguard import make_async_transport, make_transport
from offloader.hooks.aiohttp import AiohttpTransport
from tests.engines import ENGINES, make_proxy
from tests.faultservers import closes_reused, raw_server
from tests.servers import serve

pytestmark = pytest.mark.anyio

LIMITS = httpx.Limits(max_connections=4, keepalive_expiry=60)


def sync_client() -> httpx.Client:
    return httpx.Client(
        transport=make_transport(DestinationPolicy(), LIMITS), timeout=5
    )


def async_client(engine: str = "httpx") -> httpx.AsyncClient:
    transport: httpx.AsyncBaseTransport
    if engine == "httpx":
        transport = make_async_transport(DestinationPolicy(), LIMITS)
    else:
        transport = AiohttpTransport(limits=LIMITS)
    return httpx.AsyncClient(transport=transport, timeout=5)


@pytest.mark.parametrize("orderly", [True, False], ids=["fin", "reset"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_sync_idempotent_request_on_a_closed_connection_is_sent_again(
    method: str, orderly: bool
) -> None:
    """The second request goes out on the kept connection, which the
    server closes under it; it is sent again on a new connection."""
    with raw_server(closes_reused(orderly)) as server, sync_client() as client:
        first = client.request(method, server.url + "/a", content=b"body")
        second = client.request(method, server.url + "/b", content=b"body")

    assert (first.status_code, second.status_code) == (200, 200)
    assert server.accepted == 2


@pytest.mark.parametrize("orderly", [True, False], ids=["fin", "reset"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
@pytest.mark.parametrize("engine", ENGINES)
async def test_async_idempotent_request_on_a_closed_connection_is_sent_again(
    method: str, orderly: bool, engine: str
) -> None:
    """The async twin of the test above, on both engines."""
    with raw_server(closes_reused(orderly)) as server:
        async with async_client(engine) as client:
            first = await client.request(method, server.url + "/a")
            second = await client.request(method, server.url + "/b")

    assert (first.status_code, second.status_code) == (200, 200)
    assert server.accepted == 2


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_sync_other_methods_are_never_sent_twice(method: str) -> None:
    """A POST may have taken effect before the connection closed: its
    failure is raised, and the server sees it once."""
    with raw_server(closes_reused()) as server, sync_client() as client:
        client.request(method, server.url + "/a", content=b"x")
        with pytest.raises(httpx.TransportError):
            client.request(method, server.url + "/b", content=b"x")

    assert server.accepted == 1


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize("engine", ENGINES)
async def test_async_other_methods_are_never_sent_twice(
    method: str, engine: str
) -> None:
    with raw_server(closes_reused()) as server:
        async with async_client(engine) as client:
            await client.request(method, server.url + "/a", content=b"x")
            with pytest.raises(httpx.TransportError):
                await client.request(method, server.url + "/b", content=b"x")

    assert server.accepted == 1


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_streamed_body_is_not_sent_twice(engine: str) -> None:
    """A body read from a stream cannot be sent again, even with an
    idempotent method."""

    async def body() -> AsyncIterator[bytes]:
        yield b"streamed"

    with raw_server(closes_reused()) as server:
        async with async_client(engine) as client:
            await client.put(server.url + "/a", content=b"x")
            with pytest.raises(httpx.TransportError):
                await client.put(server.url + "/b", content=body())

    assert server.accepted == 1


def test_sync_a_new_connection_that_fails_is_not_retried() -> None:
    """A server that closes a connection opened for the request fails for
    real: one attempt, one connection."""
    with (
        raw_server(closes_reused(first=True)) as server,
        sync_client() as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get(server.url + "/")

    assert server.accepted == 1


@pytest.mark.parametrize("engine", ENGINES)
async def test_async_a_new_connection_that_fails_is_not_retried(
    engine: str,
) -> None:
    with raw_server(closes_reused(first=True)) as server:
        async with async_client(engine) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(server.url + "/")

    assert server.accepted == 1


@pytest.mark.parametrize("engine", ENGINES)
async def test_async_a_retry_that_fails_too_is_raised(engine: str) -> None:
    """The request is sent again at most once: when the new connection
    fails as well, that failure is raised."""
    behaviours = iter([closes_reused(), closes_reused(first=True)])

    def behaviour(conn, server):  # type: ignore[no-untyped-def]
        next(behaviours)(conn, server)

    with raw_server(behaviour) as server:
        async with async_client(engine) as client:
            await client.get(server.url + "/a")
            with pytest.raises(httpx.TransportError):
                await client.get(server.url + "/b")

    assert server.accepted == 2


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_proxy_resends_a_get_its_backend_closed_under_it(
    engine: str,
) -> None:
    """A backend that closes its kept connection as the proxy's next
    request arrives (its keep-alive timeout firing) costs the client
    nothing: both GETs through the proxy get the backend's answer."""
    with raw_server(closes_reused(orderly=False)) as backend:
        proxy = make_proxy(backend.url, engine)
        with serve(proxy, lifespan="on") as server:
            async with httpx.AsyncClient(timeout=5) as client:
                first = await client.get(server.url + "/a")
                second = await client.get(server.url + "/b")

    assert [first.status_code, second.status_code] == [200, 200]
    assert [first.text, second.text] == ["ok", "ok"]
    assert backend.accepted == 2


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_proxy_does_not_resend_a_post(engine: str) -> None:
    """A POST whose kept backend connection closed under it gets 502: the
    backend may have acted on it, so it is not sent twice."""
    with raw_server(closes_reused()) as backend:
        proxy = make_proxy(backend.url, engine)
        with serve(proxy, lifespan="on") as server:
            async with httpx.AsyncClient(timeout=5) as client:
                first = await client.post(server.url + "/a", content=b"x")
                second = await client.post(server.url + "/b", content=b"x")

    assert [first.status_code, second.status_code] == [200, 502]
    assert backend.accepted == 1


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_retry_is_logged_at_debug(
    engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each request sent again leaves one DEBUG line on the ``offloader``
    logger, with its method, URL and the failure that caused it."""
    caplog.set_level(logging.DEBUG, logger="offloader")
    with raw_server(closes_reused()) as server:
        async with async_client(engine) as client:
            await client.get(server.url + "/a")
            caplog.clear()
            await client.get(server.url + "/b")

    retries = [r for r in caplog.records if "again" in r.getMessage()]
    assert len(retries) == 1
    assert retries[0].levelno == logging.DEBUG
    assert retries[0].name == "offloader"
    assert (
        retries[0]
        .getMessage()
        .startswith(f"sending GET {server.url}/b again on a new connection")
    )
