"""Micro-benchmarks of the per-response cost of the core.

``modify_response`` on a response that asks for no offload should cost
about one header look-up; parsing a typical directive is the next cost
on the offload path. The last figure is offloader's own share of a
proxied offload: `OffloadProxy` and its `Offloader` with transports that
answer from memory, so no socket, server or HTTP client counts, only
the proxy's work (httpx's models, the directive, the policy, deadlines,
events, relaying). Run alone with ``python -m bench.micro``.
"""

from __future__ import annotations

import asyncio
import json
import time
import timeit
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx

import offloader

TYPICAL = [
    ("Content-Type", "application/json; charset=utf-8"),
    ("Content-Length", "0"),
    ("Date", "Thu, 03 Dec 2026 17:00:00 GMT"),
    ("Server", "puma"),
    ("Cache-Control", "no-store"),
    ("X-Request-Id", "5f0c9a1e-9a4b-4f3a-8f0e-2d5f7b1c9e21"),
    ("Set-Cookie", "session=abc; Path=/; HttpOnly"),
    ("Vary", "Accept-Encoding"),
]
DIRECTIVE = [
    *TYPICAL,
    ("Offload-Requested", "1"),
    ("Offload-Url", "https://api.example.com/v1/reports/42?format=json"),
    ("Offload-Method", "POST"),
    ("Offload-Forward-Body", "1"),
    ("Offload-X-Authorization", "Bearer abc.def.ghi"),
    ("Offload-X-Accept", "application/json"),
    ("Offload-Timeout", "20"),
]


class _Body(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._data:
            yield self._data


class _Answers(httpx.AsyncBaseTransport):
    """Answers every request at once with *headers* and *body*."""

    def __init__(self, headers: list[tuple[str, str]], body: bytes) -> None:
        self._headers = headers
        self._body = body

    async def handle_async_request(
        self, request: httpx.Request
    ) -> httpx.Response:
        return httpx.Response(
            200, headers=self._headers, stream=_Body(self._body)
        )


_SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/offload",
    "raw_path": b"/offload",
    "query_string": b"ms=0",
    "root_path": "",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


def _proxy_layer(number: int) -> float:
    """Seconds per offload proxied by `OffloadProxy` from memory."""
    from offloader.hooks.asgi import OffloadProxy

    backend = _Answers(
        [
            *TYPICAL[:4],
            ("Offload-Requested", "1"),
            ("Offload-Url", "http://127.0.0.1:9002/sleep?ms=0"),
        ],
        b"",
    )
    slow = _Answers([("Content-Type", "text/plain")], b"ok")
    proxy = OffloadProxy(
        "http://127.0.0.1:9001",
        offloader=offloader.Offloader(async_transport=slow),
        backend_transport=backend,
    )
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def rounds() -> float:
        best = float("inf")
        for _ in range(5):
            sent.clear()
            started = time.perf_counter()
            for _ in range(number):
                await proxy(dict(_SCOPE), receive, send)
            best = min(best, time.perf_counter() - started)
        # What the client got, so that a broken proxy cannot time well.
        assert [m.get("status", m.get("body")) for m in sent[:3]] == [
            200, b"ok", b"",
        ]  # fmt: skip
        return best / number

    return asyncio.run(rounds())


def _per_call(stmt: Any, number: int, repeat: int = 5) -> float:
    """Best seconds per call of *stmt* over *repeat* rounds."""
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number


def run(quick: bool = False) -> dict[str, Any]:
    """Time the cases and return seconds per call and the ratios."""
    number = 20_000 if quick else 200_000
    plain = httpx.Response(200, headers=TYPICAL, content=b"{}")
    asked = httpx.Headers(DIRECTIVE)
    headers = plain.headers
    off = offloader.Offloader()
    parse = offloader.parse_directive

    lookup = _per_call(lambda: "offload-requested" in headers, number)
    modify = _per_call(lambda: off.modify_response(plain), number)
    module_modify = _per_call(lambda: offloader.modify_response(plain), number)
    parsing = _per_call(lambda: parse(asked), number // 10)
    parsing_pairs = _per_call(lambda: parse(DIRECTIVE), number // 10)
    layer = _proxy_layer(number // 40)
    return {
        "header_lookup_us": lookup * 1e6,
        "modify_response_no_header_us": modify * 1e6,
        "module_modify_response_no_header_us": module_modify * 1e6,
        "modify_vs_lookup": modify / lookup,
        "parse_directive_httpx_headers_us": parsing * 1e6,
        "parse_directive_pairs_us": parsing_pairs * 1e6,
        "proxy_layer_per_offload_us": layer * 1e6,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
