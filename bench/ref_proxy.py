"""The minimal reference proxy: uvicorn and aiohttp's client, no library.

It does a fraction of offloader's work on purpose (no policy, no
forwarded bodies, no limits, no header hygiene beyond the hop-by-hop
pair), so it is the floor a Python proxy can reach on this stack. The
bench runs it with::

    BENCH_BACKEND=http://127.0.0.1:PORT uvicorn bench.ref_proxy:app \
        --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

BACKEND = os.environ.get("BENCH_BACKEND", "http://127.0.0.1:9001")
DROPPED = {"connection", "keep-alive", "transfer-encoding", "host"}
_session: aiohttp.ClientSession | None = None


def _session_now() -> aiohttp.ClientSession:
    global _session  # noqa: PLW0603 - one pool for the process
    if _session is None:
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=60),
        )
    return _session


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    session = _session_now()
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    url = BACKEND + scope["raw_path"].decode()
    if scope["query_string"]:
        url += "?" + scope["query_string"].decode()
    headers = [
        (k.decode(), v.decode())
        for k, v in scope["headers"]
        if k.decode().lower() not in DROPPED
    ]
    response = await session.request(
        scope["method"], url, headers=headers, data=body or None
    )
    try:
        target = response.headers.get("Offload-Url")
        if "Offload-Requested" in response.headers and target:
            await response.read()
            response.release()
            response = await session.get(target)
        out = [
            (k.lower(), v)
            for k, v in response.raw_headers
            if k.lower().decode() not in DROPPED
            and not k.lower().startswith(b"offload-")
        ]
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": out,
            }
        )
        async for chunk in response.content.iter_any():
            await send(
                {
                    "type": "http.response.body",
                    "body": chunk,
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b""})
    finally:
        response.release()
