from __future__ import annotations

import httpx

from tests.servers import serve


async def _hello(scope, receive, send):  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


def test_serve_answers_on_loopback() -> None:
    """`serve` runs a real server that a real client reaches."""
    with serve(_hello) as server:
        response = httpx.get(server.url)

    assert response.status_code == 200
    assert response.text == "hi"
