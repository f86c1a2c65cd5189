"""Offload in an httpx client with a response event hook, sync and async.

Run it with ``python examples/httpx_hook.py``: it starts a backend and an
offload server on loopback and prints what the client receives.
"""

from __future__ import annotations

import asyncio

import httpx
from _servers import loopback_servers

from offloader.hooks.httpx import async_response_hook, response_hook


# --8<-- [start:sync]
def fetch_report(backend: str) -> None:
    """Ask the backend for a report; the hook fetches it from the slow
    service the backend names in its ``Offload-*`` headers."""
    with httpx.Client(event_hooks={"response": [response_hook]}) as client:
        response = client.get(f"{backend}/report")
        print(response.status_code, response.text.strip())
        print("served by:", response.headers["X-Served-By"])

        # A response without Offload-Requested passes through untouched.
        print(client.get(f"{backend}/hello").text.strip())


# --8<-- [end:sync]


# --8<-- [start:async]
async def shout(backend: str) -> None:
    """POST JSON to the backend; it forwards the body to the slow service
    with ``Offload-Forward-Body``, Content-Type included."""
    async with httpx.AsyncClient(
        event_hooks={"response": [async_response_hook]}
    ) as client:
        response = await client.post(
            f"{backend}/shout", json={"text": "offload me"}
        )
        print(response.status_code, response.json())


# --8<-- [end:async]


def main() -> None:
    with loopback_servers() as servers:
        fetch_report(servers.backend)
        asyncio.run(shout(servers.backend))


if __name__ == "__main__":
    main()
