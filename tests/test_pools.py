"""The async transports the offloader and the proxy make for themselves."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from offloader import DestinationPolicy
from offloader._netguard import ShardedAsyncTransport, make_async_transport
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
