"""The two engines `OffloadProxy` runs on, so that the proxy's tests prove
each behaviour on both: httpx's own pool and aiohttp's client (through
`AiohttpTransport`), as ``offloader serve --engine`` chooses."""

from __future__ import annotations

import weakref
from typing import Any

import httpx

from offloader import DestinationPolicy, Offloader
from offloader._offloader import DEFAULT_LIMITS
from offloader.hooks.aiohttp import AiohttpTransport
from offloader.hooks.asgi import (
    DEFAULT_BACKEND_LIMITS,
    DEFAULT_OFFLOAD_LIMITS,
    OffloadProxy,
)

__all__ = [
    "ENGINES",
    "EngineProxy",
    "close_offloader",
    "make_offloader",
    "make_proxy",
]

ENGINES = ("httpx", "aiohttp")

# The aiohttp transport each offloader made here was given, so that the
# proxy serving it can close it on its loop: an offloader closes only the
# transports it made itself.
_given: weakref.WeakKeyDictionary[Offloader, httpx.AsyncBaseTransport] = (
    weakref.WeakKeyDictionary()
)


def make_offloader(engine: str, **options: Any) -> Offloader:
    """An `Offloader(**options)` whose async offloads go through
    *engine*, with the same limits and policy either way."""
    if engine == "httpx":
        return Offloader(**options)
    transport = AiohttpTransport(
        limits=options.get("limits", DEFAULT_LIMITS),
        policy=options.get("policy"),
    )
    offloader = Offloader(async_transport=transport, **options)
    _given[offloader] = transport
    return offloader


async def close_offloader(offloader: Offloader) -> None:
    """Close *offloader* and the transport `make_offloader` gave it."""
    try:
        await offloader.aclose()
    finally:
        transport = _given.pop(offloader, None)
        if transport is not None:
            await transport.aclose()


class EngineProxy(OffloadProxy):
    """An `OffloadProxy` that also closes its offloader's transport."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            transport = _given.pop(self.offloader, None)
            if transport is not None:
                await transport.aclose()


def make_proxy(backend_url: str, engine: str, **options: Any) -> OffloadProxy:
    """An `OffloadProxy(backend_url, **options)` on *engine*: its backend
    requests and, unless an offloader is given, its offloads."""
    if engine == "aiohttp":
        options.setdefault(
            "backend_transport",
            AiohttpTransport(limits=DEFAULT_BACKEND_LIMITS),
        )
        if "offloader" not in options:
            # As the proxy's own default: offloads to the backend's host.
            options["offloader"] = make_offloader(
                engine,
                limits=DEFAULT_OFFLOAD_LIMITS,
                policy=DestinationPolicy(hosts=(httpx.URL(backend_url).host,)),
            )
    return EngineProxy(backend_url, **options)
