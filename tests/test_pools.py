"""The async transports the offloader and the proxy make for themselves."""

from __future__ import annotations

import asyncio
import time

import httpcore
import httpx
import pytest
from httpcore._async.connection_pool import AsyncPoolRequest
from httpcore._sync.connection_pool import PoolRequest

from offloader import DestinationPolicy
from offloader._netguard import (
    GuardedSyncPool,
    ReclaimingAsyncPool,
    ShardedAsyncTransport,
    make_async_transport,
)
from tests.servers import serve

pytestmark = pytest.mark.anyio


async def _slow_ok(scope, receive, send):  # type: ignore[no-untyped-def]
    await asyncio.sleep(0.2)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _pool_sizes(transport: ShardedAsyncTransport) -> list[int]:
    return [
        len(shard._pool.connections)  # type: ignore[attr-defined]
        for shard in transport.shards
    ]


async def test_large_limits_spread_connections_over_shards() -> None:
    """With thousands of connections allowed, concurrent requests are
    spread evenly over several small pools, each with its share of the
    limit."""
    transport = make_async_transport(
        DestinationPolicy(), httpx.Limits(max_connections=4096)
    )
    assert isinstance(transport, ShardedAsyncTransport)

    with serve(_slow_ok) as server:
        async with httpx.AsyncClient(transport=transport) as client:
            responses = await asyncio.gather(
                *(client.get(server.url) for _ in range(32))
            )
            sizes = _pool_sizes(transport)

    assert [r.text for r in responses] == ["ok"] * 32
    assert len(sizes) == 16
    assert sizes == [2] * 16
    assert all(
        shard._pool._max_connections == 256  # type: ignore[attr-defined]
        for shard in transport.shards
    )


async def test_one_request_at_a_time_reuses_one_connection() -> None:
    """Requests made one after another all go to the least busy shard,
    the first one, and reuse its single connection."""
    transport = make_async_transport(
        DestinationPolicy(), httpx.Limits(max_connections=4096)
    )
    assert isinstance(transport, ShardedAsyncTransport)

    with serve(_slow_ok) as server:
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(5):
                response = await client.get(server.url)
                assert response.text == "ok"
            sizes = _pool_sizes(transport)
            open_at_server = server.open_connections

    assert sizes == [1] + [0] * 15
    assert open_at_server == 1


async def test_small_limits_keep_one_exact_pool() -> None:
    """A limit under 512 connections keeps one pool, so the limit holds
    exactly."""
    transport = make_async_transport(
        DestinationPolicy(), httpx.Limits(max_connections=2)
    )

    with serve(_slow_ok) as server:
        async with httpx.AsyncClient(transport=transport) as client:
            responses = await asyncio.gather(
                *(client.get(server.url) for _ in range(6))
            )
            pool = transport._pool  # type: ignore[attr-defined]
            opened = len(pool.connections)

    assert not isinstance(transport, ShardedAsyncTransport)
    assert [r.status_code for r in responses] == [200] * 6
    assert opened == 2


async def test_closing_the_sharded_transport_closes_every_shard() -> None:
    """`aclose` closes the connections of every shard."""
    transport = make_async_transport(
        DestinationPolicy(), httpx.Limits(max_connections=4096)
    )
    assert isinstance(transport, ShardedAsyncTransport)

    with serve(_slow_ok) as server:
        async with httpx.AsyncClient(transport=transport) as client:
            await asyncio.gather(*(client.get(server.url) for _ in range(16)))

    assert sum(_pool_sizes(transport)) == 0


async def test_expired_connections_of_an_idle_shard_are_closed() -> None:
    """Connections left in a shard that no request uses any more are
    closed once they expire, by later requests to the other shards, so
    that they do not keep their sockets until the shard is used again."""
    transport = make_async_transport(
        DestinationPolicy(),
        httpx.Limits(max_connections=4096, keepalive_expiry=0.2),
    )
    assert isinstance(transport, ShardedAsyncTransport)

    with serve(_slow_ok) as server:
        async with httpx.AsyncClient(transport=transport) as client:
            await asyncio.gather(*(client.get(server.url) for _ in range(16)))
            busy_sizes = _pool_sizes(transport)
            await asyncio.sleep(0.3)
            # One request at a time: each goes to the first shard, and
            # each looks at one idle shard in turn.
            for _ in range(16):
                assert (await client.get(server.url)).text == "ok"
            open_shards = [
                sum(
                    not connection.is_closed()
                    for connection in shard._pool.connections  # type: ignore[attr-defined]
                )
                for shard in transport.shards
            ]
            open_at_server = server.open_connections

    assert busy_sizes == [1] * 16
    assert open_shards == [1] + [0] * 15
    assert open_at_server == 1


async def _ok(scope, receive, send):  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _request_to(url: str) -> httpcore.Request:
    host = url.removeprefix("http://").encode()
    return httpcore.Request("GET", url, headers=[(b"host", host)])


# encode/httpcore#1110: between the moment httpcore's pool hands an idle
# connection to a waiting request and the moment that request starts on
# it, the connection still looks idle, and any other pass over the pool
# may close it (as expired here). These tests make that moment by hand,
# through the pool's private request list and assignment pass, since
# the race cannot be timed through the public API.


@pytest.mark.parametrize(
    ("pool_class", "closes_it"),
    [
        (ReclaimingAsyncPool, False),
        # httpcore's own pool shows the flaw: once a release of httpcore
        # fixes encode/httpcore#1110, this case fails, and the mixin
        # that works around it can go.
        (httpcore.AsyncConnectionPool, True),
    ],
)
async def test_a_pass_keeps_a_connection_handed_to_a_waiting_request(
    pool_class: type[httpcore.AsyncConnectionPool], closes_it: bool
) -> None:
    """Our async pool keeps an expired connection it has handed to a
    request that has not started yet, and the request then gets its
    answer on it; httpcore's own pool closes it under the request. Once
    no request holds it, ours closes it as expired too."""
    with serve(_ok) as server:
        async with pool_class(keepalive_expiry=0.05) as pool:
            await pool.request("GET", server.url)
            [connection] = pool.connections
            waiting = AsyncPoolRequest(_request_to(server.url))
            waiting.assign_to_connection(connection)
            pool._requests.append(waiting)
            await asyncio.sleep(0.1)
            assert connection.has_expired()

            closing = pool._assign_requests_to_connections()
            pool._requests.remove(waiting)
            for closed in closing:
                await closed.aclose()

            assert (connection in closing) is closes_it
            if closes_it:
                return
            assert pool.connections == [connection]
            response = await connection.handle_async_request(waiting.request)
            body = await response.aread()
            await response.aclose()
            assert (body, response.status) == (b"ok", 200)
            await asyncio.sleep(0.1)
            closing = pool._assign_requests_to_connections()
            for closed in closing:
                await closed.aclose()
            assert closing == [connection]


def test_the_sync_pool_keeps_a_connection_handed_to_a_waiting_request() -> (
    None
):
    """The same for the sync pool, whose requests wait in threads."""
    with serve(_ok) as server, GuardedSyncPool(keepalive_expiry=0.05) as pool:
        pool.request("GET", server.url)
        [connection] = pool.connections
        waiting = PoolRequest(_request_to(server.url))
        waiting.assign_to_connection(connection)
        pool._requests.append(waiting)
        time.sleep(0.1)
        assert connection.has_expired()

        closing = pool._assign_requests_to_connections()
        pool._requests.remove(waiting)
        for closed in closing:
            closed.close()

        assert connection not in closing
        response = connection.handle_request(waiting.request)
        body = response.read()
        response.close()
        assert (body, response.status) == (b"ok", 200)


async def test_a_pass_still_closes_a_handed_connection_the_server_closed() -> (
    None
):
    """A connection the server has closed is let go even when handed to
    a waiting request, as httpcore does: that request, not started yet,
    then waits for another connection instead of failing on this one."""
    with serve(_ok, timeout_keep_alive=0.05) as server:
        async with ReclaimingAsyncPool(keepalive_expiry=60) as pool:
            await pool.request("GET", server.url)
            [connection] = pool.connections
            waiting = AsyncPoolRequest(_request_to(server.url))
            waiting.assign_to_connection(connection)
            pool._requests.append(waiting)
            for _ in range(100):
                await asyncio.sleep(0.02)
                if server.open_connections == 0:
                    break

            closing = pool._assign_requests_to_connections()
            pool._requests.remove(waiting)
            for closed in closing:
                await closed.aclose()

            assert server.open_connections == 0
            assert closing == [connection]
            assert pool.connections == []
