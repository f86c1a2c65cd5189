"""The ready proxy as an ASGI application, configured in Python.

`OffloadProxy` is what ``offloader serve`` runs. Built in Python, it takes
any `Offloader`: here one that understands both the ``Offload-*`` headers
and NGINX's ``X-Accel-Redirect``, with Prometheus metrics. Needs the
``server`` and ``metrics`` extras. Run it with
``python examples/asgi_proxy.py``: it serves the proxy with uvicorn on
loopback and sends requests through it.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import uvicorn
from _servers import loopback_servers
from prometheus_client import CollectorRegistry, generate_latest

from offloader import (
    DestinationPolicy,
    Offloader,
    OffloadHeaderParser,
    XAccelRedirectParser,
)
from offloader.hooks.asgi import OffloadProxy
from offloader.metrics import instrument


# --8<-- [start:app]
def make_proxy(
    backend: str, file_store: str, registry: CollectorRegistry
) -> OffloadProxy:
    offloader = Offloader(
        parsers=[
            OffloadHeaderParser(),
            XAccelRedirectParser({"/protected/": f"{file_store}/files/"}),
        ],
        policy=DestinationPolicy(hosts=["127.0.0.1"]),
        deadline=60.0,
        max_offloads=5_000,
    )
    instrument(offloader, registry)  # Prometheus metrics
    return OffloadProxy(backend, offloader=offloader)


# Serve it with any ASGI server. With uvicorn, from a module myproxy.py
# that defines
#     def app() -> OffloadProxy:
#         return make_proxy(BACKEND, FILE_STORE, REGISTRY)
# run:
#     uvicorn --factory myproxy:app --host 127.0.0.1 --port 8080
# --8<-- [end:app]


async def run(backend: str, file_store: str) -> None:
    registry = CollectorRegistry()
    app = make_proxy(backend, file_store, registry)
    # A socket listening before uvicorn starts: requests wait in its
    # backlog until the server accepts them.
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        for path in ("/report", "/download", "/hello", "/broken"):
            response = await c.get(path)
            print(path, response.status_code, response.text.strip())
    server.should_exit = True
    await serving
    sock.close()
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("offloader_offloads_total"):
            print(line)


def main() -> None:
    with loopback_servers() as servers:
        asyncio.run(run(servers.backend, servers.offload_server))


if __name__ == "__main__":
    main()
