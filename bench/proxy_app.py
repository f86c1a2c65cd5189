"""offloader's `OffloadProxy` on a chosen async engine, for the bench.

The same proxy ``offloader serve`` runs, with its backend transport and
its offloader's transport made by `bench.core_proxy.make_transport`::

    BENCH_BACKEND=... BENCH_ENGINE=aiohttp uvicorn --factory \
        bench.proxy_app:create_app --loop uvloop --http httptools
"""

from __future__ import annotations

import os

import httpx

from bench.core_proxy import make_transport
from offloader import DestinationPolicy, Offloader
from offloader.hooks.asgi import OffloadProxy


def create_app() -> OffloadProxy:
    """Build the proxy from ``BENCH_BACKEND`` and ``BENCH_ENGINE``."""
    engine = os.environ.get("BENCH_ENGINE", "httpcore")
    offloader = Offloader(
        async_transport=make_transport(engine),
        timeout=httpx.Timeout(30.0, connect=5.0),
        max_offloads=int(os.environ.get("BENCH_MAX_OFFLOADS", "20000")),
        policy=DestinationPolicy(),
    )
    return OffloadProxy(
        os.environ["BENCH_BACKEND"],
        offloader=offloader,
        # A four-slot backend needs few connections; capping them keeps
        # aiohttp, which has no cap of idle connections, from spending
        # the descriptors that held offloads need after a burst.
        backend_transport=make_transport(
            engine, httpx.Limits(max_connections=512)
        ),
        max_requests=int(os.environ.get("BENCH_MAX_OFFLOADS", "20000")),
    )
