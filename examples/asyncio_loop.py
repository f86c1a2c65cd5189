"""A hand-rolled offloading proxy on plain asyncio, with no web framework.

The HTTP/1.1 wire format is h11's job (httpx already depends on it); the
proxy itself is the public pieces of `offloader.hooks.asgi` and an
`Offloader`. Run it with ``python examples/asyncio_loop.py``: it starts
the loopback backend and offload server, the proxy, and sends requests
through it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import h11
import httpx
from _servers import loopback_servers

from offloader import Offloader
from offloader.hooks.asgi import (
    backend_request,
    error_response,
    response_headers,
)


# --8<-- [start:proxy]
async def proxy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    backend: str,
    client: httpx.AsyncClient,
    offloader: Offloader,
) -> None:
    """Serve one client connection, one request after another."""
    conn = h11.Connection(h11.SERVER)

    async def next_event() -> object:
        while (event := conn.next_event()) is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        return event

    async def body() -> AsyncIterator[bytes]:
        while isinstance(event := await next_event(), h11.Data):
            yield bytes(event.data)

    def write(event: h11.Event) -> None:
        writer.write(conn.send(event) or b"")

    try:
        while isinstance(request := await next_event(), h11.Request):
            outgoing = backend_request(
                backend,
                request.method.decode(),
                request.target,
                request.headers,
                content=body(),
                client_host=writer.get_extra_info("peername")[0],
            )
            try:
                response = await client.send(outgoing, stream=True)
                response = await offloader.amodify_response(response)
            except Exception as exc:
                error = error_response(exc)  # 502, 503 or 504, no details
                write(
                    h11.Response(
                        status_code=error.status_code,
                        headers=error.raw_headers,
                    )
                )
                write(h11.Data(data=error.body))
            else:
                async with contextlib.aclosing(response):
                    headers = response_headers(response)
                    write(
                        h11.Response(
                            status_code=response.status_code, headers=headers
                        )
                    )
                    async for chunk in response.aiter_raw():
                        write(h11.Data(data=chunk))
                        await writer.drain()
            write(h11.EndOfMessage())
            await writer.drain()
            while conn.their_state is h11.SEND_BODY:
                await next_event()  # what the backend left of the body
            if conn.their_state is not h11.DONE:
                break  # the client asked to close, or broke the protocol
            conn.start_next_cycle()
    finally:
        writer.close()


# --8<-- [end:proxy]


async def run(backend: str) -> None:
    offloader = Offloader()
    client = httpx.AsyncClient()  # reaches the backend

    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await proxy(reader, writer, backend, client, offloader)

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, offloader, client:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            report = await c.get("/report")
            print(report.status_code, report.text.strip())
            shouted = await c.post("/shout", json={"text": "hello"})
            print(shouted.status_code, shouted.json())
            plain = await c.get("/hello")
            print(plain.status_code, plain.text.strip())
            broken = await c.get("/broken")  # an invalid directive
            print(broken.status_code, broken.text.strip())
        server.close()


def main() -> None:
    with loopback_servers() as servers:
        asyncio.run(run(servers.backend))


if __name__ == "__main__":
    main()
