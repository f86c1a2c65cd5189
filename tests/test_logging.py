"""What the ``offloader`` logger says, at which level (docs/logging.md).

One INFO line per offload (method, destination host, status, duration,
bytes), a WARNING with the cause for each failure, DEBUG for the life
cycle, and nothing on the pass-through path.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from offloader import (
    InvalidDirective,
    OffloadCancelled,
    OffloadCapacityExceeded,
    Offloader,
    OffloadEvent,
    OffloadRequestFailed,
)
from offloader.hooks.httpx import hooks

from .servers import RunningServer, serve

BODY = b"offloaded body\n"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _offload_server(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"content-length", str(len(BODY)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def _backend_for(offload_url: str, dead_url: str) -> Any:
    directives = {
        "/plain": [],
        "/offload": [
            (b"offload-requested", b""),
            (b"offload-url", f"{offload_url}/secret-path?q=1".encode()),
            (b"offload-method", b"POST"),
        ],
        "/dead": [
            (b"offload-requested", b""),
            (b"offload-url", dead_url.encode()),
        ],
        "/invalid": [
            (b"offload-requested", b""),
            (b"offload-url", f"{offload_url}/x".encode()),
            (b"offload-method", b"DELETE"),
        ],
    }

    async def backend(scope: Any, receive: Any, send: Any) -> None:
        headers = [*directives[scope["path"]], (b"content-length", b"5")]
        await send(
            {"type": "http.response.start", "status": 200, "headers": headers}
        )
        await send({"type": "http.response.body", "body": b"plain"})

    return backend


@pytest.fixture
def backend() -> Iterator[RunningServer]:
    dead_url = f"http://127.0.0.1:{_closed_port()}/gone"
    with (
        serve(_offload_server) as offload_server,
        serve(_backend_for(offload_server.url, dead_url)) as backend,
    ):
        yield backend


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with (
        Offloader() as offloader,
        httpx.Client(
            event_hooks={"response": [hooks(offloader).response_hook]}
        ) as client,
    ):
        yield client


def _records(
    caplog: pytest.LogCaptureFixture, level: int
) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "offloader" and record.levelno == level
    ]


def test_pass_through_logs_nothing(
    backend: RunningServer,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A response that asks for no offload leaves no log record at all."""
    caplog.set_level(logging.DEBUG, logger="offloader")

    response = client.get(f"{backend.url}/plain")

    assert response.content == b"plain"
    assert [r for r in caplog.records if r.name == "offloader"] == []


def test_one_info_line_per_offload(
    backend: RunningServer,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A finished offload logs one INFO line with the method, the host
    (not the path or query), the status, a duration and the bytes."""
    caplog.set_level(logging.INFO, logger="offloader")

    response = client.get(f"{backend.url}/offload")
    response.read()

    info = _records(caplog, logging.INFO)
    assert len(info) == 1
    message = info[0].getMessage()
    assert message.startswith("offload POST 127.0.0.1 -> 201 in ")
    assert message.endswith(f"s, {len(BODY)} bytes")
    assert "secret-path" not in message
    assert _records(caplog, logging.WARNING) == []


def test_messages_are_formatted_lazily(
    backend: RunningServer,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Records carry %-style arguments, formatted only when emitted."""
    caplog.set_level(logging.INFO, logger="offloader")

    client.get(f"{backend.url}/offload").read()

    record = _records(caplog, logging.INFO)[0]
    assert "%s" in record.msg
    assert record.args


def test_life_cycle_at_debug(
    backend: RunningServer,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The start of an offload is logged at DEBUG with its full URL."""
    caplog.set_level(logging.DEBUG, logger="offloader")

    client.get(f"{backend.url}/offload").read()

    debug = [r.getMessage() for r in _records(caplog, logging.DEBUG)]
    assert any(
        m.startswith("offloading POST http://127.0.0.1:") for m in debug
    )
    assert any("/secret-path?q=1" in m for m in debug)


def test_failed_offload_logs_a_warning_with_its_cause(
    backend: RunningServer,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unreachable offload server gives one WARNING naming the cause,
    and no INFO line."""
    caplog.set_level(logging.INFO, logger="offloader")

    with pytest.raises(OffloadRequestFailed):
        client.get(f"{backend.url}/dead")

    warnings = [r.getMessage() for r in _records(caplog, logging.WARNING)]
    assert len(warnings) == 1
    assert "failed after" in warnings[0]
    assert "/gone" in warnings[0]
    assert "ConnectError" in warnings[0]
    assert _records(caplog, logging.INFO) == []


@pytest.mark.anyio
async def test_cancelled_offload_logs_that_it_was_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An offload whose caller gives up (a client that disconnected)
    logs one WARNING saying it was cancelled, not the task's cancel
    message."""
    caplog.set_level(logging.INFO, logger="offloader")
    with socket.socket() as silent:
        # Connections complete in the backlog, and nothing ever answers.
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/never"
        backend = httpx.Response(
            200,
            headers={"Offload-Requested": "", "Offload-Url": url},
            request=httpx.Request("GET", "http://backend.test/"),
        )
        events: list[OffloadEvent] = []
        async with Offloader(observers=[events.append]) as offloader:
            offload = asyncio.create_task(offloader.amodify_response(backend))
            await asyncio.sleep(0.3)
            offload.cancel()
            with pytest.raises(asyncio.CancelledError):
                await offload
            assert offloader.in_flight == 0

    warnings = [r.getMessage() for r in _records(caplog, logging.WARNING)]
    assert len(warnings) == 1
    assert warnings[0].endswith(f"offload to {url} was cancelled")
    assert [event.kind for event in events] == ["start", "error"]
    assert isinstance(events[1].error, OffloadCancelled)
    assert "CancelledError" not in warnings[0]


def test_invalid_directive_logs_a_warning(
    backend: RunningServer,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A directive the offloader refuses is logged at WARNING with the
    reason."""
    caplog.set_level(logging.INFO, logger="offloader")

    with pytest.raises(InvalidDirective):
        client.get(f"{backend.url}/invalid")

    warnings = [r.getMessage() for r in _records(caplog, logging.WARNING)]
    assert len(warnings) == 1
    assert "invalid offload directive" in warnings[0]
    assert "'DELETE'" in warnings[0]


def test_capacity_refusal_logs_a_warning(
    backend: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Past max_offloads, the refused offload is logged at WARNING with
    the count in flight; the held one still logs its INFO line."""
    caplog.set_level(logging.INFO, logger="offloader")
    offloader = Offloader(max_offloads=1)
    bound = hooks(offloader)

    with (
        offloader,
        httpx.Client(event_hooks={"response": [bound.response_hook]}) as c,
        c.stream("GET", f"{backend.url}/offload") as held,
    ):
        with pytest.raises(OffloadCapacityExceeded):
            c.get(f"{backend.url}/offload")
        held.read()

    warnings = [r.getMessage() for r in _records(caplog, logging.WARNING)]
    assert warnings == [
        "refusing an offload: 1 offloads are already in flight"
    ]
    assert len(_records(caplog, logging.INFO)) == 1
