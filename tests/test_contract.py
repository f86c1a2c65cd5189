"""The wire contract, run against every httpx adapter.

Each test runs four times, once per adapter: the sync and the async
response hook, the sync and the async transport (the ``connect``
fixture). Every request goes through real loopback servers: a backend
that answers with ``Offload-*`` headers, an offload server, and a third
server for chains and for the proxy from the environment.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from offloader import (
    DestinationPolicy,
    InvalidDirective,
    Offloader,
    OffloadError,
    OffloadRequestFailed,
    OffloadTimeout,
)
from tests.backends import (
    ADAPTERS,
    Callers,
    Receive,
    Responder,
    Scope,
    Send,
    Sites,
    big_body,
    hang_until_disconnect,
    open_sites,
    read_request,
    stall_body,
)

#: Larger than loopback socket buffers: a backend sending this much to a
#: client that neither reads nor closes stays blocked, visibly.
LARGE = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    """A backend, an offload server and a third server, for the module."""
    with open_sites() as running:
        yield running


@pytest.fixture(params=ADAPTERS)
def connect(request: pytest.FixtureRequest) -> Iterator[Callers]:
    """Callers of one adapter; each test runs once per adapter."""
    callers = Callers(request.param)
    yield callers
    callers.close()


def offload_to(url: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    """Backend headers asking for an offload to *url*."""
    return [("Offload-Requested", "true"), ("Offload-Url", url), *extra]


def offload_names(headers: httpx.Headers) -> list[str]:
    """The names of the ``Offload-*`` headers in *headers*."""
    return [name for name in headers if name.lower().startswith("offload-")]


def unused_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- pass-through -------------------------------------------------------------


def test_response_without_request_header_passes_through(
    sites: Sites, connect: Callers
) -> None:
    """A response without Offload-Requested reaches the caller as sent,
    even when it carries other Offload-* headers, and nothing is
    offloaded."""
    backend = Responder(
        status=203,
        headers=[("X-Backend", "yes"), ("Offload-Url", sites.offload.url)],
        body=[b"plain ", b"answer"],
    )
    sites.backend.use(backend)
    sites.offload.use(Responder())
    caller = connect()

    reply = caller.fetch(sites.backend.url + "/page")

    assert reply.status_code == 203
    assert reply.content == b"plain answer"
    assert reply.headers["x-backend"] == "yes"
    assert reply.headers["offload-url"] == sites.offload.url
    assert sites.offload.requests == 0


def test_empty_requested_value_still_offloads(
    sites: Sites, connect: Callers
) -> None:
    """Offload-Requested with an empty value asks for an offload."""
    sites.backend.use(
        Responder(
            headers=[
                ("Offload-Requested", ""),
                ("Offload-Url", sites.offload.url + "/x"),
            ],
            body=[b"backend"],
        )
    )
    sites.offload.use(Responder(body=[b"offloaded"]))
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert reply.content == b"offloaded"
    assert sites.offload.requests == 1


# -- the Go package's end-to-end case -----------------------------------------


def test_go_end_to_end_post_with_forwarded_json(
    sites: Sites, connect: Callers
) -> None:
    """The Go package's case: the backend's GET answer asks for a POST
    carrying its JSON body; the offload server's status, body and own
    header reach the caller; the backend's do not."""
    body = b'{"job": 42, "name": "report"}'
    backend = Responder(
        headers=offload_to(
            sites.offload.url + "/jobs",
            ("Offload-Method", "POST"),
            ("Offload-Forward-Body", "true"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Backend-Only", "1"),
        ),
        body=[body],
    )
    offload = Responder(
        status=201,
        headers=[("X-Offload-Server", "done"), ("Content-Type", "text/plain")],
        body=[b"created"],
    )
    sites.backend.use(backend)
    sites.offload.use(offload)
    caller = connect()

    reply = caller.fetch(sites.backend.url + "/start")

    assert backend.last.method == "GET"
    assert offload.last.method == "POST"
    assert offload.last.raw_path == b"/jobs"
    assert offload.last.body == body
    assert offload.last.header("content-type") == ["application/json"]
    assert offload.last.header("content-length") == [str(len(body))]
    assert reply.status_code == 201
    assert reply.content == b"created"
    assert reply.headers["x-offload-server"] == "done"
    assert reply.headers["content-type"] == "text/plain"
    assert "x-backend-only" not in reply.headers
    assert offload_names(reply.headers) == []


def test_offload_request_skips_the_callers_hooks_and_transport(
    sites: Sites, connect: Callers
) -> None:
    """The offload request goes through the offloader's own pool, not
    through the caller's event hooks or wrapped transport again."""
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(body=[b"ok"]))
    caller = connect()

    reply = caller.fetch(sites.backend.url + "/only-this")

    assert reply.content == b"ok"
    assert [url.path for url in caller.sent] == ["/only-this"]
    assert sites.offload.requests == 1


# -- URL and method -----------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/p%20a/th%2f%2F/%7e?q=a%20b&x=%2F&y=1+2&empty=&d=1&d=2",
        "/?",
    ],
)
def test_url_is_used_exactly_as_given(
    sites: Sites, connect: Callers, target: str
) -> None:
    """The offload URL's path, query and escapes reach the offload
    server byte for byte."""
    offload = Responder()
    sites.backend.use(
        Responder(headers=offload_to(sites.offload.url + target))
    )
    sites.offload.use(offload)
    caller = connect()

    caller.fetch(sites.backend.url)

    path, _, query = target.partition("?")
    assert offload.last.raw_path == path.encode()
    assert offload.last.query_string == query.encode()


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        (None, "GET"),
        ("pOsT", "POST"),
        ("head", "HEAD"),
    ],
)
def test_method_is_case_insensitive_and_defaults_to_get(
    sites: Sites, connect: Callers, given: str | None, sent: str
) -> None:
    """Offload-Method is GET, POST or HEAD in any case; absent, GET."""
    extra = [("Offload-Method", given)] if given is not None else []
    offload = Responder(headers=[("X-Answer", "1")], body=[b"body"])
    sites.backend.use(Responder(headers=offload_to(sites.offload.url, *extra)))
    sites.offload.use(offload)
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert offload.last.method == sent
    assert reply.headers["x-answer"] == "1"
    assert reply.content == (b"" if sent == "HEAD" else b"body")


def test_head_relays_headers_without_a_body(
    sites: Sites, connect: Callers
) -> None:
    """A HEAD offload relays the offload server's status and headers,
    Content-Length included, and no body."""
    offload = Responder(
        status=200,
        headers=[("Content-Length", "1234"), ("ETag", '"v1"')],
    )
    sites.backend.use(
        Responder(
            headers=offload_to(sites.offload.url, ("Offload-Method", "HEAD"))
        )
    )
    sites.offload.use(offload)
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert offload.last.method == "HEAD"
    assert reply.status_code == 200
    assert reply.headers["content-length"] == "1234"
    assert reply.headers["etag"] == '"v1"'
    assert reply.content == b""


@pytest.mark.parametrize("method", ["PUT", "OPTIONS", ""])
def test_bad_method_is_invalid_directive(
    sites: Sites, connect: Callers, method: str
) -> None:
    """Any method but GET, POST and HEAD is refused before sending."""
    sites.backend.use(
        Responder(
            headers=offload_to(sites.offload.url, ("Offload-Method", method))
        )
    )
    sites.offload.use(Responder())
    caller = connect()

    with pytest.raises(InvalidDirective) as raised:
        caller.fetch(sites.backend.url)

    assert raised.value.status_code == 502
    assert isinstance(raised.value, ValueError)
    assert sites.offload.requests == 0


@pytest.mark.parametrize(
    "urls",
    [
        pytest.param([], id="missing"),
        pytest.param([""], id="empty"),
        pytest.param(["/relative/path"], id="relative"),
        pytest.param(["//127.0.0.1/x"], id="scheme-relative"),
        pytest.param(["ftp://127.0.0.1/file"], id="ftp"),
        pytest.param(["http://"], id="no-host"),
        pytest.param(["{offload}/a", "{offload}/b"], id="twice"),
    ],
)
def test_bad_url_is_invalid_directive(
    sites: Sites, connect: Callers, urls: list[str]
) -> None:
    """A missing, empty, relative, non-http or repeated Offload-Url is
    refused before any byte is sent."""
    headers = [("Offload-Requested", "1")] + [
        ("Offload-Url", url.format(offload=sites.offload.url)) for url in urls
    ]
    sites.backend.use(Responder(headers=headers))
    sites.offload.use(Responder())
    caller = connect()

    with pytest.raises(InvalidDirective):
        caller.fetch(sites.backend.url)

    assert sites.offload.requests == 0


def test_non_ascii_header_value_is_invalid_directive(
    sites: Sites, connect: Callers
) -> None:
    """A directive value with bytes that cannot be sent safely (here
    obs-text, which the wire allows) is refused."""
    sites.backend.use(
        Responder(
            headers=offload_to(
                sites.offload.url, ("Offload-X-Name", "caf\xe9")
            )
        )
    )
    sites.offload.use(Responder())
    caller = connect()

    with pytest.raises(InvalidDirective):
        caller.fetch(sites.backend.url)

    assert sites.offload.requests == 0


# -- headers sent to the offload server ---------------------------------------


def test_custom_headers_are_forwarded_with_every_value(
    sites: Sites, connect: Callers
) -> None:
    """Offload-X-<Name> is sent as <Name>; a repeated one keeps every
    value, in order; no Offload-* header is sent."""
    offload = Responder()
    sites.backend.use(
        Responder(
            headers=offload_to(
                sites.offload.url,
                ("Offload-X-Api-Key", "secret"),
                ("Offload-X-Trace", "one"),
                ("Offload-X-Other", "x"),
                ("offload-x-trace", "two"),
                ("OFFLOAD-X-TRACE", "three, four"),
                ("X-Not-Forwarded", "backend"),
            )
        )
    )
    sites.offload.use(offload)
    caller = connect()

    caller.fetch(sites.backend.url)

    assert offload.last.header("api-key") == ["secret"]
    assert offload.last.header("trace") == ["one", "two", "three, four"]
    assert offload.last.header("other") == ["x"]
    assert "x-not-forwarded" not in offload.last.names
    assert not any(n.startswith("offload-") for n in offload.last.names)


def test_content_type_override(sites: Sites, connect: Callers) -> None:
    """Offload-X-Content-Type replaces the forwarded body's type."""
    offload = Responder()
    sites.backend.use(
        Responder(
            headers=offload_to(
                sites.offload.url,
                ("Offload-Method", "POST"),
                ("Offload-Forward-Body", ""),
                ("Content-Type", "application/json"),
                ("Offload-X-Content-Type", "text/csv; charset=utf-8"),
            ),
            body=[b"a,b\n1,2\n"],
        )
    )
    sites.offload.use(offload)
    caller = connect()

    caller.fetch(sites.backend.url)

    assert offload.last.header("content-type") == ["text/csv; charset=utf-8"]
    assert offload.last.body == b"a,b\n1,2\n"


def test_content_type_not_sent_without_forwarded_body(
    sites: Sites, connect: Callers
) -> None:
    """The backend's Content-Type describes its body: without
    Offload-Forward-Body neither goes to the offload server."""
    offload = Responder()
    sites.backend.use(
        Responder(
            headers=offload_to(
                sites.offload.url, ("Content-Type", "application/json")
            ),
            body=[b"{}"],
        )
    )
    sites.offload.use(offload)
    caller = connect()

    caller.fetch(sites.backend.url)

    assert offload.last.header("content-type") == []
    assert offload.last.body == b""


#: Names that frame or route a message, or concern one connection only.
UNFORWARDABLE = [
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "Proxy-Authorization",
    "TE",
    "Trailer",
    "Upgrade",
]


def test_framing_and_hop_by_hop_names_are_not_forwarded(
    sites: Sites, connect: Callers
) -> None:
    """Offload-X-<Name> for a name that frames or routes the message is
    dropped; the other headers are sent and the offload happens."""
    offload = Responder(body=[b"ok"])
    sites.backend.use(
        Responder(
            headers=offload_to(
                sites.offload.url,
                *[
                    (f"Offload-X-{name}", "evil.example")
                    for name in UNFORWARDABLE
                ],
                ("Offload-X-Wanted", "yes"),
            )
        )
    )
    sites.offload.use(offload)
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert reply.content == b"ok"
    values = [value for _, value in offload.last.headers]
    assert b"evil.example" not in values
    assert offload.last.header("wanted") == ["yes"]
    assert offload.last.header("host") == [
        f"127.0.0.1:{sites.offload.server.port}"
    ]
    assert not {"upgrade", "te", "trailer", "proxy-authorization"} & (
        offload.last.names
    )


# -- the result ---------------------------------------------------------------


def test_keep_headers_adds_named_backend_headers(
    sites: Sites, connect: Callers
) -> None:
    """Offload-Keep-Headers names backend headers added to the result,
    every value kept; other backend headers are dropped."""
    sites.backend.use(
        Responder(
            headers=offload_to(
                sites.offload.url,
                ("Offload-Keep-Headers", "Set-Cookie, cache-control"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
                ("Cache-Control", "no-store"),
                ("X-Dropped", "1"),
            )
        )
    )
    sites.offload.use(Responder(headers=[("X-From-Offload", "1")]))
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert reply.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["x-from-offload"] == "1"
    assert "x-dropped" not in reply.headers


def test_no_backend_header_is_kept_by_default(
    sites: Sites, connect: Callers
) -> None:
    """Without Offload-Keep-Headers no backend header reaches the
    caller."""
    sites.backend.use(
        Responder(
            headers=offload_to(
                sites.offload.url, ("Set-Cookie", "session=backend")
            )
        )
    )
    sites.offload.use(Responder())
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert "set-cookie" not in reply.headers


def test_hop_by_hop_headers_are_removed_from_the_result(
    sites: Sites, connect: Callers
) -> None:
    """Hop-by-hop headers of the offload server, and those it names in
    Connection, do not reach the caller; end-to-end ones do."""
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(
        Responder(
            headers=[
                ("Connection", "X-Hop-Secret, x-other-hop"),
                ("X-Hop-Secret", "1"),
                ("X-Other-Hop", "2"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authenticate", "Basic"),
                ("Trailer", "X-Checksum"),
                ("X-End-To-End", "kept"),
            ],
            body=[b"ok"],
        )
    )
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    for name in [
        "connection",
        "x-hop-secret",
        "x-other-hop",
        "keep-alive",
        "proxy-authenticate",
        "trailer",
    ]:
        assert name not in reply.headers, name
    assert reply.headers["x-end-to-end"] == "kept"
    assert reply.content == b"ok"


def test_offload_headers_never_reach_the_caller(
    sites: Sites, connect: Callers
) -> None:
    """No Offload-* header of the backend or of the offload server
    reaches the caller."""
    sites.backend.use(
        Responder(headers=offload_to(sites.offload.url, ("Offload-X-A", "1")))
    )
    sites.offload.use(
        Responder(
            headers=[
                ("Offload-Trace", "internal"),
                ("OFFLOAD-URL", "http://127.0.0.1:1/"),
                ("X-Kept", "1"),
            ]
        )
    )
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert offload_names(reply.headers) == []
    assert reply.headers["x-kept"] == "1"


def test_status_and_body_of_an_error_are_relayed(
    sites: Sites, connect: Callers
) -> None:
    """An offload server's error status is an answer, relayed as is."""
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(status=503, body=[b"busy"]))
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert reply.status_code == 503
    assert reply.content == b"busy"


def test_redirects_are_relayed_not_followed(
    sites: Sites, connect: Callers
) -> None:
    """A redirect from the offload server reaches the caller as is."""
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(
        Responder(status=302, headers=[("Location", sites.third.url + "/r")])
    )
    sites.third.use(Responder(body=[b"followed"]))
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert reply.status_code == 302
    assert reply.headers["location"] == sites.third.url + "/r"
    assert sites.third.requests == 0


# -- hops ---------------------------------------------------------------------


def _chain(sites: Sites) -> None:
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(
        Responder(
            status=202,
            headers=offload_to(sites.third.url + "/next"),
            body=[b"second"],
        )
    )
    sites.third.use(Responder(status=200, body=[b"third"]))


def test_offload_answer_asking_for_offload_is_not_followed(
    sites: Sites, connect: Callers
) -> None:
    """By default (one hop) an offload answer that asks for an offload
    itself is relayed, without its Offload-* headers."""
    _chain(sites)
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert reply.status_code == 202
    assert reply.content == b"second"
    assert offload_names(reply.headers) == []
    assert sites.third.requests == 0


def test_hop_limit_allows_a_chain(sites: Sites, connect: Callers) -> None:
    """With max_hops=2 the second directive is followed too."""
    _chain(sites)
    caller = connect(max_hops=2)

    reply = caller.fetch(sites.backend.url)

    assert reply.status_code == 200
    assert reply.content == b"third"
    assert sites.third.requests == 1
    assert sites.offload.settled()


# -- environment --------------------------------------------------------------


def test_proxy_variables_are_not_used(
    sites: Sites, connect: Callers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY and friends do not route offload requests, although
    a client trusting the environment would use them."""
    for name in ["NO_PROXY", "no_proxy"]:
        monkeypatch.delenv(name, raising=False)
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy"]:
        monkeypatch.setenv(name, sites.third.url)
    sites.third.use(Responder(body=[b"from proxy"]))
    with httpx.Client() as trusting:
        assert trusting.get(sites.offload.url).content == b"from proxy"
    sites.third.use(Responder(body=[b"from proxy"]))
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(body=[b"direct"]))
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert reply.content == b"direct"
    assert sites.third.requests == 0


def test_netrc_is_not_used(
    sites: Sites,
    connect: Callers,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Credentials from a netrc file are not sent to the offload
    server."""
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    offload = Responder()
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(offload)
    caller = connect()

    caller.fetch(sites.backend.url)

    assert "authorization" not in offload.last.names


# -- deadlines and failures ---------------------------------------------------


def test_offload_timeout_header_sets_the_deadline(
    sites: Sites, connect: Callers
) -> None:
    """Offload-Timeout bounds the offload: a server that does not answer
    in time gives OffloadTimeout (504), and its connection is closed."""
    sites.backend.use(
        Responder(
            headers=offload_to(sites.offload.url, ("Offload-Timeout", "0.2"))
        )
    )
    sites.offload.use(hang_until_disconnect)
    caller = connect()

    with pytest.raises(OffloadTimeout) as raised:
        caller.fetch(sites.backend.url)

    assert raised.value.status_code == 504
    assert sites.offload.settled(max_connections=0)


def test_offload_timeout_is_capped_by_the_offloader_deadline(
    sites: Sites, connect: Callers
) -> None:
    """A directive cannot ask for more time than Offloader(deadline=)."""
    sites.backend.use(
        Responder(
            headers=offload_to(sites.offload.url, ("Offload-Timeout", "60"))
        )
    )
    sites.offload.use(hang_until_disconnect)
    caller = connect(deadline=0.2)

    with pytest.raises(OffloadTimeout):
        caller.fetch(sites.backend.url)

    assert sites.offload.settled(max_connections=0)


def test_offload_timeout_within_the_deadline_succeeds(
    sites: Sites, connect: Callers
) -> None:
    """An offload that ends within its Offload-Timeout is relayed."""
    sites.backend.use(
        Responder(
            headers=offload_to(sites.offload.url, ("Offload-Timeout", "30"))
        )
    )
    sites.offload.use(Responder(delay=0.05, body=[b"in time"]))
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert reply.content == b"in time"


def test_deadline_covers_the_relayed_body(
    sites: Sites, connect: Callers
) -> None:
    """The deadline runs to the last byte: a body that stalls midway
    gives OffloadTimeout from the client call."""
    sites.backend.use(
        Responder(
            headers=offload_to(sites.offload.url, ("Offload-Timeout", "0.2"))
        )
    )
    sites.offload.use(stall_body)
    caller = connect()

    with pytest.raises(OffloadTimeout):
        caller.fetch(sites.backend.url)

    assert sites.offload.settled(max_connections=0)


@pytest.mark.parametrize("value", ["soon", "-1"])
def test_bad_offload_timeout_is_invalid_directive(
    sites: Sites, connect: Callers, value: str
) -> None:
    """Offload-Timeout must be a positive, finite number of seconds."""
    sites.backend.use(
        Responder(
            headers=offload_to(sites.offload.url, ("Offload-Timeout", value))
        )
    )
    sites.offload.use(Responder())
    caller = connect()

    with pytest.raises(InvalidDirective):
        caller.fetch(sites.backend.url)

    assert sites.offload.requests == 0


def test_unreachable_offload_server_is_request_failed(
    sites: Sites, connect: Callers
) -> None:
    """An offload server refusing connections gives OffloadRequestFailed
    (502) from the client call."""
    url = f"http://127.0.0.1:{unused_port()}/gone"
    sites.backend.use(Responder(headers=offload_to(url)))
    caller = connect()

    with pytest.raises(OffloadRequestFailed) as raised:
        caller.fetch(sites.backend.url)

    assert raised.value.status_code == 502
    assert isinstance(raised.value, OffloadError)


# -- streaming ----------------------------------------------------------------


def test_forwarded_body_streams_chunk_by_chunk(
    sites: Sites, connect: Callers
) -> None:
    """The offload server receives the first chunk of the forwarded
    body before the backend has sent its last one."""
    first_arrived = threading.Event()
    streamed: list[bool] = []
    offload = Responder(body=[b"done"])

    async def backend(scope: Scope, receive: Receive, send: Send) -> None:
        await read_request(scope, receive)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"offload-requested", b"1"),
                    (b"offload-url", sites.offload.url.encode()),
                    (b"offload-method", b"POST"),
                    (b"offload-forward-body", b"1"),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"first", "more_body": True}
        )
        for _ in range(500):
            if first_arrived.is_set():
                break
            await asyncio.sleep(0.01)
        streamed.append(first_arrived.is_set())
        await send({"type": "http.response.body", "body": b"|last"})

    async def offload_app(scope: Scope, receive: Receive, send: Send) -> None:
        await offload.__call__(scope, _notify(receive, first_arrived), send)

    sites.backend.use(backend)
    sites.offload.use(offload_app)
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert streamed == [True]
    assert offload.last.body == b"first|last"
    assert reply.content == b"done"


def _notify(receive: Receive, event: threading.Event) -> Receive:
    async def receive_and_notify() -> dict[str, object]:
        message = await receive()
        if message.get("body"):
            event.set()
        return dict(message)

    return receive_and_notify


def test_large_bodies_stream_both_ways(sites: Sites, connect: Callers) -> None:
    """A forwarded body and a relayed body of several MiB arrive whole."""
    size = 4 * 1024 * 1024 + 7
    offload = Responder(body=big_body(size))
    sites.backend.use(
        Responder(
            headers=offload_to(
                sites.offload.url,
                ("Offload-Method", "POST"),
                ("Offload-Forward-Body", "1"),
            ),
            body=big_body(size),
        )
    )
    sites.offload.use(offload)
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert len(offload.last.body) == size
    assert offload.last.body == b"".join(big_body(size))
    assert len(reply.content) == size


def test_encoded_bodies_pass_as_bytes(sites: Sites, connect: Callers) -> None:
    """A gzip backend body is forwarded as is, with its Content-Encoding;
    a gzip offload body reaches the caller with its own, so the client
    decodes it."""
    packed = gzip.compress(b"backend data")
    offload = Responder(
        headers=[("Content-Encoding", "gzip")],
        body=[gzip.compress(b"offload data")],
    )
    sites.backend.use(
        Responder(
            headers=offload_to(
                sites.offload.url,
                ("Offload-Method", "POST"),
                ("Offload-Forward-Body", "1"),
                ("Content-Encoding", "gzip"),
            ),
            body=[packed],
        )
    )
    sites.offload.use(offload)
    caller = connect()

    reply = caller.fetch(sites.backend.url)

    assert offload.last.body == packed
    assert offload.last.header("content-encoding") == ["gzip"]
    assert reply.content == b"offload data"


# -- the backend response is always closed ------------------------------------


def _path_pass_through(sites: Sites) -> type[Exception] | None:
    sites.backend.use(Responder(body=[b"passed"]))
    return None


def _path_not_forwarded(sites: Sites) -> type[Exception] | None:
    sites.backend.use(
        Responder(headers=offload_to(sites.offload.url), body=big_body(LARGE))
    )
    sites.offload.use(Responder(body=[b"ok"]))
    return None


def _path_small_not_forwarded(sites: Sites) -> type[Exception] | None:
    sites.backend.use(
        Responder(headers=offload_to(sites.offload.url), body=[b"small"])
    )
    sites.offload.use(Responder(body=[b"ok"]))
    return None


def _path_forwarded(sites: Sites) -> type[Exception] | None:
    sites.backend.use(
        Responder(
            headers=offload_to(
                sites.offload.url,
                ("Offload-Method", "POST"),
                ("Offload-Forward-Body", "1"),
            ),
            body=big_body(1024 * 1024),
        )
    )
    sites.offload.use(Responder(body=[b"ok"]))
    return None


def _path_invalid(sites: Sites) -> type[Exception] | None:
    sites.backend.use(
        Responder(
            headers=offload_to(sites.offload.url, ("Offload-Method", "PUT")),
            body=big_body(LARGE),
        )
    )
    return InvalidDirective


def _path_unreachable(sites: Sites) -> type[Exception] | None:
    sites.backend.use(
        Responder(
            headers=offload_to(f"http://127.0.0.1:{unused_port()}/"),
            body=big_body(LARGE),
        )
    )
    return OffloadRequestFailed


def _path_timeout(sites: Sites) -> type[Exception] | None:
    sites.backend.use(
        Responder(
            headers=offload_to(sites.offload.url, ("Offload-Timeout", "0.1")),
            body=big_body(LARGE),
        )
    )
    sites.offload.use(hang_until_disconnect)
    return OffloadTimeout


def _path_forward_refused(sites: Sites) -> type[Exception] | None:
    # The offload server answers before reading the forwarded body.
    sites.backend.use(
        Responder(
            headers=offload_to(
                f"http://127.0.0.1:{unused_port()}/",
                ("Offload-Method", "POST"),
                ("Offload-Forward-Body", "1"),
            ),
            body=big_body(LARGE),
        )
    )
    return OffloadRequestFailed


def _path_not_followed(sites: Sites) -> type[Exception] | None:
    sites.backend.use(
        Responder(headers=offload_to(sites.offload.url), body=big_body(LARGE))
    )
    sites.offload.use(
        Responder(headers=offload_to(sites.third.url), body=[b"hop"])
    )
    return None


@pytest.mark.parametrize(
    "arrange",
    [
        _path_pass_through,
        _path_not_forwarded,
        _path_small_not_forwarded,
        _path_forwarded,
        _path_invalid,
        _path_unreachable,
        _path_timeout,
        _path_forward_refused,
        _path_not_followed,
    ],
    ids=lambda arrange: arrange.__name__.removeprefix("_path_"),
)
def test_backend_response_is_closed_on_every_path(
    sites: Sites, connect: Callers, arrange: object
) -> None:
    """Whatever happens, the backend's response is finished or its
    connection closed, as its server sees it: after two requests on
    one client no response is still being sent and at most one idle
    connection is open."""
    assert callable(arrange)
    expected = arrange(sites)
    caller = connect()

    for _ in range(2):
        if expected is None:
            caller.fetch(sites.backend.url)
        else:
            with pytest.raises(expected):
                caller.fetch(sites.backend.url)

    assert sites.backend.requests == 2
    assert sites.backend.settled(max_connections=1)
    assert sites.offload.settled(max_connections=1)


def test_closing_early_closes_the_offload_and_the_backend(
    sites: Sites, connect: Callers
) -> None:
    """A caller that closes the result after one chunk ends the offload
    response too: the offload server stops sending."""
    sites.backend.use(
        Responder(headers=offload_to(sites.offload.url), body=[b"b"])
    )
    sites.offload.use(Responder(body=big_body(LARGE)))
    caller = connect()

    reply = caller.peek(sites.backend.url, size=1)

    assert reply.status_code == 200
    assert len(reply.content) >= 1
    assert sites.offload.settled(max_connections=1)
    assert sites.backend.settled(max_connections=1)
    assert caller.offloader.in_flight == 0


class _ClientPorts:
    """Run *app*, noting the client port of each request: one port for
    several requests means they came over one connection."""

    def __init__(self, app: Responder) -> None:
        self.app = app
        self.ports: list[int] = []

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.ports.append(scope["client"][1])
        await self.app(scope, receive, send)


@pytest.mark.parametrize(
    ("directive", "config"),
    [
        pytest.param([("Offload-Method", "PUT")], {}, id="invalid directive"),
        pytest.param(
            [("Offload-Method", "POST"), ("Offload-Forward-Body", "")],
            {"policy": DestinationPolicy(hosts=["elsewhere.test"])},
            id="refused destination, body to forward",
        ),
        pytest.param(
            [("Offload-Method", "POST"), ("Offload-Forward-Body", "")],
            {"unreachable": True},
            id="unreachable offload server, body to forward",
        ),
    ],
)
def test_a_refused_offload_gives_the_backend_connection_back(
    sites: Sites,
    connect: Callers,
    directive: list[tuple[str, str]],
    config: dict[str, Any],
) -> None:
    """When an offload is refused or fails before any of the backend's
    body was used, the body is still read (up to ``drain_limit``), so
    the backend's connection goes back to the pool: three such requests
    on one client come over one connection."""
    config = dict(config)
    unreachable = config.pop("unreachable", False)
    url = (
        f"http://127.0.0.1:{unused_port()}/"
        if unreachable
        else sites.offload.url
    )
    backend = _ClientPorts(
        Responder(headers=offload_to(url, *directive), body=[b"b" * 5000])
    )
    sites.backend.use(backend)
    sites.offload.use(Responder())
    caller = connect(**config)

    for _ in range(3):
        with pytest.raises(OffloadError):
            caller.fetch(sites.backend.url)

    assert len(backend.ports) == 3
    assert len(set(backend.ports)) == 1
    assert sites.offload.requests == 0


def test_a_response_read_before_the_offload_forwards_its_body(
    sites: Sites,
) -> None:
    """A backend response that was read whole (a client without
    ``stream=True``) forwards the body it read, with its own length."""
    offload = Responder(body=[b"done"])
    sites.offload.use(offload)
    sites.backend.use(
        Responder(
            headers=[
                ("Content-Type", "text/csv"),
                *offload_to(
                    sites.offload.url,
                    ("Offload-Method", "POST"),
                    ("Offload-Forward-Body", ""),
                ),
            ],
            body=[b"a,b\n", b"1,2\n"],
        )
    )
    with httpx.Client(trust_env=False) as client, Offloader() as offloader:
        backend = client.get(sites.backend.url)
        assert backend.is_stream_consumed
        response = offloader.modify_response(backend)
        assert response.read() == b"done"

    (seen,) = offload.seen
    headers = httpx.Headers(seen.headers)
    assert seen.body == b"a,b\n1,2\n"
    assert headers["content-length"] == "8"
    assert headers["content-type"] == "text/csv"


@pytest.mark.anyio
async def test_an_async_response_read_before_the_offload_forwards_its_body(
    sites: Sites,
) -> None:
    """The async twin: `amodify_response` on a response read whole."""
    offload = Responder(body=[b"done"])
    sites.offload.use(offload)
    sites.backend.use(
        Responder(
            headers=offload_to(
                sites.offload.url,
                ("Offload-Method", "POST"),
                ("Offload-Forward-Body", ""),
            ),
            body=[b"x" * 3000],
        )
    )
    async with (
        httpx.AsyncClient(trust_env=False) as client,
        Offloader() as offloader,
    ):
        backend = await client.get(sites.backend.url)
        response = await offloader.amodify_response(backend)
        assert await response.aread() == b"done"
        await response.aclose()

    (seen,) = offload.seen
    assert seen.body == b"x" * 3000
    assert httpx.Headers(seen.headers)["content-length"] == "3000"
