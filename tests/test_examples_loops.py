"""The hand-rolled proxy loops of ``examples/``, run against real servers.

Each loop (Starlette, aiohttp.web) is built from the public pieces of
`offloader.hooks.asgi` and served for real on loopback; the same contract
cases run against both.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import RunningServer, serve
from tests.upstreams import Backend, OffloadServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str) -> Any:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


@contextlib.contextmanager
def _serve_aiohttp(app: Any) -> Iterator[str]:
    """Serve an aiohttp application on loopback in a thread."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def _serve_loop(kind: str, backend_url: str) -> Iterator[str]:
    if kind == "starlette":
        app = _example("starlette_loop").make_app(backend_url)
        with serve(app, lifespan="on", proxy_headers=False) as server:
            yield server.url
    else:
        with _serve_aiohttp(
            _example("aiohttp_loop").make_app(backend_url)
        ) as url:
            yield url


@pytest.fixture(scope="module")
def backend() -> Iterator[RunningServer]:
    with serve(Backend()) as server:
        yield server


@pytest.fixture(scope="module")
def upstream_app() -> OffloadServer:
    return OffloadServer()


@pytest.fixture(scope="module")
def upstream(upstream_app: OffloadServer) -> Iterator[RunningServer]:
    with serve(upstream_app) as server:
        yield server


@pytest.fixture(scope="module", params=["starlette", "aiohttp"])
def loop_url(
    request: pytest.FixtureRequest, backend: RunningServer
) -> Iterator[str]:
    with _serve_loop(request.param, backend.url) as url:
        yield url


def offload_to(url: str, **extra: str) -> dict[str, str]:
    headers = {"x-reply-offload-requested": "", "x-reply-offload-url": url}
    for name, value in extra.items():
        headers["x-reply-offload-" + name.replace("_", "-")] = value
    return headers


def test_loop_passes_plain_answers_through(loop_url: str) -> None:
    """A plain backend answer comes back with its status, headers and
    body; the request reaches the backend with its body, raw query and
    X-Forwarded-For."""
    response = httpx.put(
        loop_url + "/items/7?q=a%20b",
        content=b"new value",
        headers={"x-status": "202", "x-reply-x-version": "3"},
    )

    assert response.status_code == 202
    assert response.headers["x-version"] == "3"
    seen = response.json()
    assert seen["method"] == "PUT"
    assert seen["body"] == "new value"
    assert seen["raw_path"] == "/items/7"
    assert seen["query"] == "q=a%20b"
    assert dict(seen["headers"])["x-forwarded-for"] == "127.0.0.1"


def test_loop_sends_no_body_on_a_bodiless_get(loop_url: str) -> None:
    """A GET without a body reaches the backend without one, and without
    a chunked Transfer-Encoding."""
    response = httpx.get(loop_url + "/plain")

    headers = dict(response.json()["headers"])
    assert "transfer-encoding" not in headers
    assert response.json()["body"] == ""


def test_loop_carries_out_offloads(
    loop_url: str, upstream: RunningServer
) -> None:
    """An Offload-* answer is replaced by the offload server's, and no
    Offload-* header reaches the client."""
    response = httpx.get(
        loop_url + "/ask",
        headers=offload_to(upstream.url + "/slow", x_trace="abc"),
    )

    assert response.status_code == 200
    assert response.headers["x-slow"] == "yes"
    assert dict(response.json()["headers"])["trace"] == "abc"
    assert not [n for n in response.headers if n.startswith("offload")]


def test_loop_answers_502_without_details(loop_url: str) -> None:
    """An invalid directive becomes a bare 502."""
    response = httpx.get(
        loop_url + "/ask", headers=offload_to("gopher://internal/secret")
    )

    assert response.status_code == 502
    assert response.text == "Bad Gateway\n"
    assert not [n for n in response.headers if n.startswith("offload")]


def test_loop_streams_events_one_by_one(
    loop_url: str, upstream: RunningServer, upstream_app: OffloadServer
) -> None:
    """Server-sent events reach the client one by one: the offload server
    sends each only after the client has the previous one."""
    received = []
    with httpx.stream(
        "GET",
        loop_url + "/events",
        headers=offload_to(upstream.url + "/sse?n=3"),
        timeout=10,
    ) as response:
        upstream_app.release.release()
        for chunk in response.iter_raw():
            received.append(chunk)
            if len(received) < 3:
                upstream_app.release.release()

    assert received == [f"data: event {i}\n\n".encode() for i in range(3)]
