"""Offload with a transport adapter and a configured `Offloader`.

A transport wraps the one that reaches the backend and returns the
offload server's answer as a new response. Here the offloader is
configured: a destination policy, a total deadline and a concurrency
cap. Run it with ``python examples/transport.py``.
"""

from __future__ import annotations

import asyncio

import httpx
from _servers import loopback_servers

from offloader import DestinationPolicy, Offloader
from offloader.hooks.httpx import (
    AsyncOffloadTransport,
    OffloadTransport,
    hooks,
)


# --8<-- [start:sync]
def fetch_report(backend: str) -> None:
    offloader = Offloader(
        policy=DestinationPolicy(hosts=["127.0.0.1"]),
        deadline=10.0,
        max_offloads=1_000,
    )
    transport = OffloadTransport(httpx.HTTPTransport(), offloader)
    with offloader, httpx.Client(transport=transport) as client:
        response = client.get(f"{backend}/report")
        print(response.status_code, response.text.strip())


# --8<-- [end:sync]


# --8<-- [start:async]
async def afetch_report(backend: str) -> None:
    async with Offloader(deadline=10.0) as offloader:
        transport = AsyncOffloadTransport(
            httpx.AsyncHTTPTransport(), offloader
        )
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(f"{backend}/report")
            print(response.status_code, response.text.strip())


# --8<-- [end:async]


# --8<-- [start:hooks]
def with_bound_hooks(backend: str) -> None:
    """The event hook form of a configured offloader."""
    with Offloader(deadline=10.0) as offloader:
        bound = hooks(offloader)
        with httpx.Client(
            event_hooks={"response": [bound.response_hook]}
        ) as client:
            print(client.get(f"{backend}/report").status_code)


# --8<-- [end:hooks]


def main() -> None:
    with loopback_servers() as servers:
        fetch_report(servers.backend)
        asyncio.run(afetch_report(servers.backend))
        with_bound_hooks(servers.backend)


if __name__ == "__main__":
    main()
