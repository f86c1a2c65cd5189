"""A hand-rolled offloading proxy in Starlette, from the public pieces.

Run it with ``python examples/starlette_loop.py`` (needs ``starlette`` and
the ``server`` extra): it starts the loopback backend and offload server,
serves the proxy with uvicorn, and sends requests through it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from _servers import loopback_servers
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from offloader import Offloader
from offloader.hooks.asgi import (
    error_response,
    request_from_scope,
    response_headers,
)


# --8<-- [start:proxy]
def make_app(backend: str) -> Starlette:
    offloader = Offloader()
    client = httpx.AsyncClient()  # reaches the backend

    async def proxy(request: Request) -> Response:
        outgoing = await request_from_scope(
            request.scope, request.receive, backend
        )
        try:
            response = await client.send(outgoing, stream=True)
            response = await offloader.amodify_response(response)
        except Exception as exc:
            error = error_response(exc)  # 502, 503 or 504, no details
            return Response(error.body, error.status_code, dict(error.headers))
        relayed = StreamingResponse(
            response.aiter_raw(),
            response.status_code,
            background=BackgroundTask(response.aclose),
        )
        relayed.raw_headers = response_headers(response)
        return relayed

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with client, offloader:
            yield

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    route = Route("/{path:path}", proxy, methods=methods)
    return Starlette(routes=[route], lifespan=lifespan)


# --8<-- [end:proxy]


async def run(backend: str) -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_app(backend), log_level="error")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        report = await c.get("/report")
        print(report.status_code, report.text.strip())
        shouted = await c.post("/shout", json={"text": "hello"})
        print(shouted.status_code, shouted.json())
        plain = await c.get("/hello")
        print(plain.status_code, plain.text.strip())
        broken = await c.get("/broken")  # an invalid directive
        print(broken.status_code, broken.text.strip())
    server.should_exit = True
    await serving
    sock.close()


def main() -> None:
    with loopback_servers() as servers:
        asyncio.run(run(servers.backend))


if __name__ == "__main__":
    main()
