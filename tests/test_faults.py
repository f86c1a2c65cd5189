"""Faults of the offload server and of the backend, at the core level.

Each fault is played by a raw-socket loopback server (tests/faultservers)
and driven through each of the four core adapters. Whatever breaks, the
caller gets a typed error with its status, never a clean but short
response, and the offload is accounted as failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from offloader import (
    InvalidDirective,
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
    records_raw,
    records_request,
    replies,
    reset_after_headers,
    reset_before_headers,
    silent,
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
    mode: str, backend: RunningServer, target: str, **options: Any
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


# -- header hygiene -------------------------------------------------------

HOSTILE_OFFLOAD_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Connection: x-secret, keep-alive\r\n"
    b"X-Secret: internal\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Offload-Url: http://internal.example/\r\n"
    b"Offload-Requested: 1\r\n"
    b"OFFLOAD-Secret: 1\r\n"
    b"Proxy-Authenticate: Basic\r\n"
    b"Upgrade: h2c\r\n"
    b"Trailer: X-T\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"X-Kept: yes\r\n"
    b"\r\n"
    b"5\r\nhello\r\n0\r\n\r\n"
)


def hostile_backend_response(offload_url: str) -> bytes:
    """A backend answer whose directive tries to set framing, routing
    and hop-by-hop headers of the offload request."""
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"Offload-Requested: 1\r\n"
        b"Offload-Url: %s/p?q=1\r\n"
        b"Offload-Method: POST\r\n"
        b"Offload-Forward-Body: 1\r\n"
        b"Offload-X-Content-Length: 3\r\n"
        b"Offload-X-Transfer-Encoding: chunked\r\n"
        b"Offload-X-Host: evil.example\r\n"
        b"Offload-X-Connection: close, trace\r\n"
        b"Offload-X-Te: trailers\r\n"
        b"Offload-X-Upgrade: h2c\r\n"
        b"Offload-X-Keep-Alive: 1\r\n"
        b"Offload-X-Trace: abc\r\n"
        b"Content-Length: 11\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"hello world" % offload_url.encode()
    )


def head_lines(raw: bytes) -> list[tuple[bytes, bytes]]:
    head = raw.partition(b"\r\n\r\n")[0]
    pairs = []
    for line in head.split(b"\r\n")[1:]:
        assert not line.startswith((b" ", b"\t")), "folded header line"
        name, _, value = line.partition(b":")
        pairs.append((name.lower(), value.strip()))
    return pairs


@pytest.mark.parametrize("mode", MODES)
def test_directives_cannot_set_framing_or_hop_by_hop_headers(
    mode: str,
) -> None:
    """Framing, routing and hop-by-hop headers in a directive are not
    forwarded: the offload request carries one Content-Length matching
    its body, no Transfer-Encoding, its own Host, and the rest."""
    log: list[bytes] = []
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    with raw_server(records_raw(log, reply)) as offload:
        raw_backend = replies(hostile_backend_response(offload.url))
        with raw_server(raw_backend) as backend:
            outcome = call(mode, backend.url)
        [request] = log

    pairs = head_lines(request)
    names = [name for name, _ in pairs]
    assert outcome.body == b"ok"
    assert request.startswith(b"POST /p?q=1 HTTP/1.1\r\n")
    assert request.endswith(b"\r\n\r\nhello world")
    assert names.count(b"content-length") == 1
    assert dict(pairs)[b"content-length"] == b"11"
    assert b"transfer-encoding" not in names
    assert names.count(b"host") == 1
    assert dict(pairs)[b"host"] == f"127.0.0.1:{offload.port}".encode()
    assert b"upgrade" not in names
    assert b"te" not in names
    assert b"keep-alive" not in names
    assert (b"connection", b"close, trace") not in pairs
    assert (b"trace", b"abc") in pairs
    assert (b"content-type", b"text/plain") in pairs


@pytest.mark.parametrize("mode", MODES)
def test_offload_response_loses_hop_by_hop_and_offload_headers(
    mode: str,
) -> None:
    """The final response carries none of the offload server's hop-by-hop
    headers, headers named in its Connection header, or Offload-*
    headers; its own other headers and its body come through."""
    with raw_server(replies(HOSTILE_OFFLOAD_RESPONSE)) as offload:
        directive = (
            b"HTTP/1.1 200 OK\r\nOffload-Requested: 1\r\n"
            b"Offload-Url: %s\r\nContent-Length: 0\r\n\r\n"
            % offload.url.encode()
        )
        with raw_server(replies(directive)) as backend:
            outcome = call(mode, backend.url)

    assert outcome.headers is not None
    names = {name.lower() for name in outcome.headers}
    assert outcome.body == b"hello"
    assert outcome.headers["x-kept"] == "yes"
    assert not any(name.startswith("offload-") for name in names)
    assert not names & {
        "connection",
        "keep-alive",
        "x-secret",
        "proxy-authenticate",
        "upgrade",
        "trailer",
        "transfer-encoding",
    }


@pytest.mark.parametrize(
    "value",
    [
        b"a\x00b",
        b"a\rb",
        b"a\x7fb",
        b"caf\xc3\xa9",
        b"a\x01b",
        b"\xff",
    ],
)
def test_directive_values_that_cannot_be_sent_send_nothing(
    value: bytes,
) -> None:
    """A directive value holding NUL, CR, other controls or non-ASCII
    bytes is refused (by h11 reading the backend, or as an
    InvalidDirective), and the offload server receives nothing."""
    with (
        raw_server(silent) as offload,
        raw_server(
            replies(
                b"HTTP/1.1 200 OK\r\nOffload-Requested: 1\r\n"
                b"Offload-Url: %s\r\nOffload-X-Trace: %s\r\n"
                b"Content-Length: 0\r\n\r\n" % (offload.url.encode(), value)
            )
        ) as backend,
    ):
        outcomes = [call(mode, backend.url) for mode in MODES]

    for outcome in outcomes:
        assert isinstance(
            outcome.error, (InvalidDirective, httpx.RemoteProtocolError)
        )
    assert offload.accepted == 0


def test_a_folded_directive_value_is_sent_on_one_line() -> None:
    """An obsolete folded header line from the backend reaches the
    offload server unfolded, on one line, if at all."""
    log: list[bytes] = []
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    with (
        raw_server(records_raw(log, reply)) as offload,
        raw_server(
            replies(
                b"HTTP/1.1 200 OK\r\nOffload-Requested: 1\r\n"
                b"Offload-Url: %s\r\nOffload-X-Trace: a\r\n b\r\n"
                b"Content-Length: 0\r\n\r\n" % offload.url.encode()
            )
        ) as backend,
    ):
        outcome = call("sync-hook", backend.url)

    if outcome.error is None:
        [request] = log
        assert (b"trace", b"a b") in head_lines(request)
    else:
        assert isinstance(
            outcome.error, (InvalidDirective, httpx.RemoteProtocolError)
        )
        assert log == []
