"""Hypothesis properties over the parsers and the whole hook path.

Whatever header names, values and bytes a backend or an offload server
sends, the offloader raises only its documented errors, puts nothing on
the wire that h11 would refuse to send, and lets no ``Offload-*`` or
hop-by-hop header out.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import h11
import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from offloader import (
    InvalidDirective,
    OffloadDirective,
    Offloader,
    OffloadError,
    parse_directive,
)
from offloader._headers import HOP_BY_HOP_HEADERS, is_token, is_valid_value

from .faultservers import RawServer, call, raw_server, read_head

INTERESTING_NAMES = [
    "Offload-Requested",
    "offload-requested",
    "Offload-Url",
    "OFFLOAD-URL",
    "Offload-Method",
    "Offload-Forward-Body",
    "Offload-Timeout",
    "Offload-Keep-Headers",
    "Offload-X-Trace",
    "Offload-X-Content-Type",
    "Offload-X-Content-Length",
    "Offload-X-Transfer-Encoding",
    "Offload-X-Host",
    "Offload-X-Connection",
    "Offload-X-Offload-Url",
    "Offload-X-",
    "Offload-X-a b",
    "Content-Type",
    "Connection",
    "Keep-Alive",
    "Set-Cookie",
    "X-Other",
]

INTERESTING_VALUES = [
    "",
    "1",
    "http://127.0.0.1:9/x?y=1",
    "https://offload.example/a%20b",
    "/relative",
    "ftp://x/",
    "POST",
    "head",
    "DELETE",
    "0.5",
    "-1",
    "nan",
    "inf",
    "set-cookie, x-other",
    "offload-url",
    "content-length",
    "close, x-other",
    "a\r\nInjected: 1",
    "a\nb",
    "a\x00b",
    "caf\xe9",
    "text/plain",
]

names = st.one_of(st.sampled_from(INTERESTING_NAMES), st.text(max_size=12))
values = st.one_of(st.sampled_from(INTERESTING_VALUES), st.text(max_size=30))
pairs = st.lists(st.tuples(names, values), max_size=12)


def with_request(header_pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Most fuzzed responses should ask for an offload at all."""
    return [("Offload-Requested", ""), *header_pairs]


def with_directive(
    header_pairs: list[tuple[str, str]],
) -> list[tuple[str, str]]:
    """A valid directive, with fuzzed headers around it."""
    return [
        ("Offload-Requested", ""),
        ("Offload-Url", "http://offload.test/x?y=1"),
        *header_pairs,
    ]


responses = st.one_of(
    pairs, pairs.map(with_request), pairs.map(with_directive)
)


def latin1(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [
        (name.encode("utf-8", "replace"), value.encode("utf-8", "replace"))
        for name, value in pairs
    ]


def assert_sendable(directive: OffloadDirective) -> None:
    """The directive's request head is one h11 would put on the wire."""
    url = httpx.URL(directive.url)
    for name, value in directive.headers:
        assert is_token(name)
        assert is_valid_value(value)
        assert name.lower() not in HOP_BY_HOP_HEADERS
        assert name.lower() not in {"host", "content-length"}
    h11.Request(
        method=directive.method,
        target=url.raw_path,
        headers=[("Host", url.netloc.decode("ascii")), *directive.headers],
    )


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(responses)
def test_parsing_any_str_headers(header_pairs: list[tuple[str, str]]) -> None:
    """Any str headers give a sendable directive, None, or
    InvalidDirective; never another exception."""
    try:
        directive = parse_directive(header_pairs)
    except InvalidDirective:
        return

    if directive is not None:
        assert_sendable(directive)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(responses.map(latin1))
def test_parsing_any_byte_headers(
    header_pairs: list[tuple[bytes, bytes]],
) -> None:
    """The same holds for bytes headers, as WSGI and ASGI give them."""
    try:
        directive = parse_directive(header_pairs)
    except InvalidDirective:
        return

    if directive is not None:
        assert_sendable(directive)


def httpx_headers(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Headers as an HTTP engine could hand them over: names are tokens
    (an engine refuses others), values any latin-1 bytes without CR/LF."""
    kept = []
    for name, value in pairs:
        if not is_token(name) or name.lower() == "content-length":
            continue
        raw = value.encode("latin-1", "replace")
        kept.append(
            (name.encode("ascii"), raw.replace(b"\r", b"").replace(b"\n", b""))
        )
    return kept


OFFLOAD_REPLY_NAMES = st.sampled_from(
    [
        "Offload-Url",
        "Offload-Requested",
        "OFFLOAD-Anything",
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authenticate",
        "Trailer",
        "TE",
        "X-Named",
        "X-Plain",
        "Set-Cookie",
    ]
)
reply_pairs = st.lists(
    st.tuples(
        OFFLOAD_REPLY_NAMES,
        st.one_of(
            st.sampled_from(["x-named", "close", "1", "offload-url"]),
            st.text(
                alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                max_size=20,
            ),
        ),
    ),
    max_size=8,
)


def check_final(response: httpx.Response) -> None:
    """No Offload-* or hop-by-hop header, nor one the offload server's
    Connection header named, is left on a final response."""
    for name in response.headers:
        lowered = name.lower()
        assert not lowered.startswith("offload-")
        assert lowered not in HOP_BY_HOP_HEADERS
        assert lowered != "x-named" or "x-named" not in str(
            response.headers.get("connection", "")
        )


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    responses.map(httpx_headers),
    reply_pairs,
    st.binary(max_size=64),
)
def test_the_whole_hook_path_with_any_headers(
    backend_headers: list[tuple[bytes, bytes]],
    reply: list[tuple[str, str]],
    body: bytes,
) -> None:
    """Through the sync and async hooks, with any backend headers and an
    offload server answering with hop-by-hop and Offload-* headers:
    only InvalidDirective is raised, the offload request is sendable,
    and nothing hop-by-hop or Offload-* comes out."""
    sent: list[httpx.Request] = []

    def offload_server(request: httpx.Request) -> httpx.Response:
        request.read()
        sent.append(request)
        return httpx.Response(200, headers=reply, content=b"answer")

    def backend(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=backend_headers, content=body)

    offloader = Offloader(
        transport=httpx.MockTransport(offload_server),
        async_transport=httpx.MockTransport(offload_server),
    )
    # (final response, whether it is the backend response itself, body)
    results: list[tuple[httpx.Response, bool, bytes] | InvalidDirective] = []
    with httpx.Client(transport=httpx.MockTransport(backend)) as client:
        response = client.get("http://b/")
        try:
            final = offloader.modify_response(response)
            results.append((final, final is response, final.read()))
        except InvalidDirective as exc:
            results.append(exc)

    async def async_path() -> None:
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(backend)
        ) as client:
            response = await client.get("http://b/")
            try:
                final = await offloader.amodify_response(response)
                body = await final.aread()
                results.append((final, final is response, body))
            except InvalidDirective as exc:
                results.append(exc)

    asyncio.run(async_path())

    assert len(results) == 2
    assert type(results[0]) is type(results[1])
    for request in sent:
        h11.Request(
            method=request.method,
            target=request.url.raw_path,
            headers=list(request.headers.raw),
        )
    for result in results:
        if isinstance(result, InvalidDirective):
            continue
        final, untouched, content = result
        if untouched:
            # No offload asked: the core returns the backend response
            # itself, untouched by contract; a proxy strips Offload-*
            # headers from it (see the proxy's tests).
            assert "offload-requested" not in final.headers
        else:
            event("offloaded")
            check_final(final)
            assert content == b"answer"


# -- the same through real loopback sockets --------------------------------


@pytest.fixture(scope="module")
def wire() -> Iterator[tuple[RawServer, RawServer, dict[str, bytes]]]:
    """A raw backend and a raw offload server whose answers a test sets
    in the returned dict, and whose requests it logs there."""
    state: dict[str, bytes] = {"backend": b"", "reply": b"", "seen": b""}

    def backend(conn: socket.socket, server: RawServer) -> None:
        if read_head(conn, server):
            conn.sendall(state["backend"])

    def offload(conn: socket.socket, server: RawServer) -> None:
        state["seen"] += read_head(conn, server)
        conn.sendall(state["reply"])

    with raw_server(offload) as offload_server, raw_server(backend) as b:
        yield b, offload_server, state


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(INTERESTING_NAMES[4:]),
            st.binary(max_size=20),
        ),
        max_size=6,
    ),
    reply_pairs,
)
def test_any_bytes_from_real_servers(
    wire: tuple[RawServer, RawServer, dict[str, bytes]],
    extra: list[tuple[str, bytes]],
    reply: list[tuple[str, str]],
) -> None:
    """Raw header bytes from a real backend and a real offload server on
    loopback: the caller sees an OffloadError, or the backend's own
    protocol error from httpx, or a clean final response; whatever
    reached the offload server is a request head h11 accepts."""
    backend, offload, state = wire
    head = b"HTTP/1.1 200 OK\r\nOffload-Requested: 1\r\n"
    head += b"Offload-Url: %s/f\r\n" % offload.url.encode()
    for name, value in extra:
        head += name.encode() + b": " + value + b"\r\n"
    state["backend"] = head + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    reply_head = b"".join(
        name.encode() + b": " + value.encode() + b"\r\n"
        for name, value in reply
        if name.lower() not in {"transfer-encoding", "connection"}
    )
    state["reply"] = (
        b"HTTP/1.1 200 OK\r\n"
        + reply_head
        + b"Content-Length: 2\r\nConnection: close\r\n\r\nok"
    )
    state["seen"] = b""

    outcome = call("sync-hook", backend.url)

    if outcome.error is not None:
        assert isinstance(
            outcome.error, (OffloadError, httpx.RemoteProtocolError)
        )
    else:
        assert outcome.headers is not None
        assert outcome.body == b"ok"
        for name in outcome.headers:
            assert not name.lower().startswith("offload-")
            assert name.lower() not in HOP_BY_HOP_HEADERS
    if state["seen"]:
        event("reached the offload server")
        server = h11.Connection(h11.SERVER)
        server.receive_data(state["seen"])
        assert isinstance(server.next_event(), h11.Request)
