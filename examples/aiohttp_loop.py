"""A hand-rolled offloading proxy in aiohttp.web, from the public pieces.

Run it with ``python examples/aiohttp_loop.py`` (needs ``aiohttp``): it
starts the loopback backend and offload server, serves the proxy with
aiohttp, and sends requests through it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from _servers import loopback_servers
from aiohttp import web

from offloader import Offloader
from offloader.hooks.asgi import (
    backend_request,
    error_response,
    response_headers,
)


# --8<-- [start:proxy]
def make_app(backend: str) -> web.Application:
    offloader = Offloader()
    client = httpx.AsyncClient()  # reaches the backend

    async def proxy(request: web.Request) -> web.StreamResponse:
        outgoing = backend_request(
            backend,
            request.method,
            request.raw_path,
            request.headers,
            content=request.content.iter_any(),
            client_host=request.remote,
            scheme=request.scheme,
        )
        try:
            response = await client.send(outgoing, stream=True)
            response = await offloader.amodify_response(response)
        except Exception as exc:
            error = error_response(exc)  # 502, 503 or 504, no details
            headers = dict(error.headers)
            return web.Response(
                status=error.status_code, body=error.body, headers=headers
            )
        async with contextlib.aclosing(response):
            relayed = web.StreamResponse(status=response.status_code)
            for name, value in response_headers(response):
                relayed.headers.add(name.decode(), value.decode("latin-1"))
            await relayed.prepare(request)
            async for chunk in response.aiter_raw():
                await relayed.write(chunk)
            await relayed.write_eof()
        return relayed

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        async with client, offloader:
            yield

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    app.cleanup_ctx.append(lifespan)
    return app


# --8<-- [end:proxy]


async def run(backend: str) -> None:
    runner = web.AppRunner(make_app(backend), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        report = await c.get("/report")
        print(report.status_code, report.text.strip())
        shouted = await c.post("/shout", json={"text": "hello"})
        print(shouted.status_code, shouted.json())
        plain = await c.get("/hello")
        print(plain.status_code, plain.text.strip())
        broken = await c.get("/broken")  # an invalid directive
        print(broken.status_code, broken.text.strip())
    await runner.cleanup()


def main() -> None:
    with loopback_servers() as servers:
        asyncio.run(run(servers.backend))


if __name__ == "__main__":
    main()
