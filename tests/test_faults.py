"""Faults of the offload server and of the backend, at the core level.

Each fault is played by a raw-socket loopback server (tests/faultservers)
and driven through each of the four core adapters. Whatever breaks, the
caller gets a typed error with its status, never a clean but short
response, and the offload is accounted as failed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from offloader import (
    OffloadError,
    OffloadEvent,
    OffloadRequestFailed,
    OffloadTimeout,
)

from .faultservers import (
    MODES,
    Outcome,
    answers_without_reading,
    call,
    closed_port,
    directing_backend,
    never_reads_body,
    raw_server,
    records_request,
    reset_after_headers,
    reset_before_headers,
    truncated_body,
    truncated_forward,
)
from .servers import RunningServer, serve
from .test_limits import wait_for


@pytest.fixture(scope="module")
def backend() -> Iterator[RunningServer]:
    with serve(directing_backend) as server:
        yield server


def run(
    mode: str, backend: RunningServer, target: str, **options: object
) -> tuple[Outcome, list[OffloadEvent]]:
    events: list[OffloadEvent] = []
    outcome = call(
        mode,
        backend.url,
        {"X-Target": target},
        observers=[events.append],
        **options,
    )
    return outcome, events


@pytest.mark.parametrize("mode", MODES)
def test_connection_refused(backend: RunningServer, mode: str) -> None:
    """An offload server that refuses the connection gives
    OffloadRequestFailed (502) and an error event."""
    outcome, events = run(mode, backend, f"http://127.0.0.1:{closed_port()}/")

    assert isinstance(outcome.error, OffloadRequestFailed)
    assert outcome.error.status_code == 502
    assert [event.kind for event in events] == ["start", "error"]


@pytest.mark.parametrize("mode", MODES)
def test_reset_before_the_headers(backend: RunningServer, mode: str) -> None:
    """A reset before any response header gives OffloadRequestFailed."""
    with raw_server(reset_before_headers) as server:
        outcome, events = run(mode, backend, server.url)

    assert isinstance(outcome.error, OffloadRequestFailed)
    assert outcome.status is None
    assert [event.kind for event in events] == ["start", "error"]
    assert server.accepted == 1


@pytest.mark.parametrize("mode", MODES)
def test_reset_after_the_headers(backend: RunningServer, mode: str) -> None:
    """A reset in the middle of the body surfaces as OffloadRequestFailed
    while the body is read: the caller can never take the part it got
    for the whole."""
    with raw_server(reset_after_headers) as server:
        outcome, events = run(mode, backend, server.url)

    assert outcome.status == 200
    assert isinstance(outcome.body_error, OffloadRequestFailed)
    assert outcome.body == b""
    assert [event.kind for event in events] == ["start", "error"]


@pytest.mark.parametrize("mode", MODES)
def test_truncated_offload_body(backend: RunningServer, mode: str) -> None:
    """An offload server that closes cleanly after 100 of the 1000 bytes
    it promised makes reading the body fail; it is never a clean short
    response."""
    with raw_server(truncated_body) as server:
        outcome, events = run(mode, backend, server.url)

    assert outcome.status == 200
    assert isinstance(outcome.body_error, OffloadRequestFailed)
    assert outcome.body_error.status_code == 502
    assert events[-1].kind == "error"
    assert events[-1].bytes_received <= 100


@pytest.mark.parametrize("mode", MODES)
def test_truncated_backend_body_while_forwarded(mode: str) -> None:
    """A backend body cut short while it is being forwarded aborts the
    offload request: the offload server never receives a whole request,
    and its connection is closed."""
    bodies: list[bytes] = []

    with raw_server(records_request(bodies)) as offload:
        with raw_server(truncated_forward(offload.url)) as backend:
            outcome = call(mode, backend.url)
        closed = wait_for(lambda: offload.closed == offload.accepted)

    assert isinstance(outcome.error, OffloadRequestFailed)
    assert outcome.error.status_code == 502
    assert bodies == []
    assert offload.accepted == 1
    assert 1000 <= offload.received < 100_000
    assert closed


@pytest.mark.parametrize("mode", MODES)
def test_offload_server_that_never_reads_the_body(
    backend: RunningServer, mode: str
) -> None:
    """An offload server that reads the head and then nothing more
    stalls the forwarded body; the deadline ends the offload with
    OffloadTimeout (504) instead of hanging."""
    with raw_server(never_reads_body) as server:
        outcome = call(
            mode,
            backend.url,
            {
                "X-Target": server.url,
                "X-Method": "POST",
                "X-Forward": str(32 * 1024 * 1024),
            },
            deadline=1.0,
        )

    assert isinstance(outcome.error, OffloadTimeout)
    assert outcome.error.status_code == 504


@pytest.mark.parametrize("mode", MODES)
def test_offload_server_that_answers_before_reading_the_body(
    backend: RunningServer, mode: str
) -> None:
    """An early answer to a large forwarded body is either relayed whole
    or reported as a failed offload, never anything in between."""
    with raw_server(answers_without_reading) as server:
        outcome = call(
            mode,
            backend.url,
            {
                "X-Target": server.url,
                "X-Method": "POST",
                "X-Forward": str(8 * 1024 * 1024),
            },
            deadline=5.0,
        )

    if outcome.error is None and outcome.body_error is None:
        assert outcome.status == 200
        assert outcome.body == b"early"
    else:
        error = outcome.error or outcome.body_error
        assert isinstance(error, OffloadError)
        assert not isinstance(error, OffloadTimeout)
