"""A minimal proxy on offloader's core, with a choice of async engine.

Used to pick the engine by measurement: the same loop runs over httpx's
own pool (httpcore), over ``httpx-aiohttp``'s transport, or over
offloader's transport on aiohttp. Run it like the reference proxy::

    BENCH_BACKEND=... BENCH_ENGINE=httpcore uvicorn bench.core_proxy:app \
        --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import os
from typing import Any

import httpx

import offloader

BACKEND = os.environ.get("BENCH_BACKEND", "http://127.0.0.1:9001")
ENGINE = os.environ.get("BENCH_ENGINE", "httpcore")
DROPPED = {b"connection", b"keep-alive", b"transfer-encoding", b"host"}
LIMITS = httpx.Limits(max_connections=20_000, max_keepalive_connections=512)


def make_transport(
    engine: str, limits: httpx.Limits = LIMITS
) -> httpx.AsyncBaseTransport:
    """Return a fresh async transport of the named engine."""
    if engine == "httpcore":
        return httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    if engine == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=limits, trust_env=False)
    if engine == "aiohttp":
        from offloader import _aiohttp_transport

        return _aiohttp_transport.AiohttpTransport(limits=limits)
    raise ValueError(f"unknown engine {engine!r}")


_state: dict[str, Any] = {}


def _parts() -> tuple[httpx.AsyncBaseTransport, offloader.Offloader]:
    if not _state:
        _state["backend"] = make_transport(ENGINE)
        _state["offloader"] = offloader.Offloader(
            async_transport=make_transport(ENGINE)
        )
    return _state["backend"], _state["offloader"]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    backend, off = _parts()
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    url = BACKEND + scope["raw_path"].decode()
    if scope["query_string"]:
        url += "?" + scope["query_string"].decode()
    headers = [(k, v) for k, v in scope["headers"] if k not in DROPPED]
    request = httpx.Request(
        scope["method"], url, headers=headers, content=body
    )
    response = await backend.handle_async_request(request)
    try:
        response = await off.amodify_response(response)
    except offloader.OffloadError as exc:
        await send(
            {
                "type": "http.response.start",
                "status": exc.status_code,
                "headers": [],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        return
    try:
        out = [
            (k.lower(), v)
            for k, v in response.headers.raw
            if k.lower() not in DROPPED
        ]
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": out,
            }
        )
        async for chunk in response.aiter_raw():
            await send(
                {
                    "type": "http.response.body",
                    "body": chunk,
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b""})
    finally:
        await response.aclose()
