"""`Offloader`, the module-level functions and the httpx adapters'
own promises, beyond the wire contract of `test_contract.py`."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import anyio.to_thread
import httpx
import pytest

import offloader
import offloader._parsers
from offloader import (
    BodyTooLarge,
    DestinationPolicy,
    DestinationRefused,
    HeadersInput,
    InvalidDirective,
    OffloadCapacityExceeded,
    OffloadDirective,
    Offloader,
    OffloadError,
    OffloadHeaderParser,
    OffloadRequestFailed,
    OffloadTimeout,
    XAccelRedirectParser,
    amodify_response,
    modify_response,
)
from offloader.hooks.httpx import (
    AsyncOffloadTransport,
    OffloadTransport,
    async_response_hook,
    hooks,
    response_hook,
)
from tests.backends import (
    Responder,
    Sites,
    big_body,
    hang_until_disconnect,
    open_sites,
)


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    """A backend, an offload server and a third server, for the module."""
    with open_sites() as running:
        yield running


def offload_to(url: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    """Backend headers asking for an offload to *url*."""
    return [("Offload-Requested", "1"), ("Offload-Url", url), *extra]


# -- modify_response ----------------------------------------------------------


def test_pass_through_is_the_same_response_unread(sites: Sites) -> None:
    """A response asking for no offload comes back as the very same
    object, its headers the same object, its body not read."""
    sites.backend.use(Responder(headers=[("X-A", "1")], body=[b"kept"]))
    with httpx.Client() as client, Offloader() as off:
        response = client.send(
            client.build_request("GET", sites.backend.url), stream=True
        )
        headers = response.headers

        result = off.modify_response(response)

        assert result is response
        assert result.headers is headers
        assert not response.is_stream_consumed
        assert not response.is_closed
        assert response.read() == b"kept"
        response.close()


@pytest.mark.anyio
async def test_async_pass_through_is_the_same_response_unread(
    sites: Sites,
) -> None:
    """The async twin: the same object, body unread."""
    sites.backend.use(Responder(body=[b"kept"]))
    async with httpx.AsyncClient() as client, Offloader() as off:
        response = await client.send(
            client.build_request("GET", sites.backend.url), stream=True
        )

        result = await off.amodify_response(response)

        assert result is response
        assert not response.is_stream_consumed
        assert await response.aread() == b"kept"
        await response.aclose()


class _CountingHeaders(httpx.Headers):
    """Headers that count the look-ups made in them."""

    lookups = 0

    def __contains__(self, key: object) -> bool:
        self.lookups += 1
        return super().__contains__(key)


def test_pass_through_costs_one_header_look_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deciding that a response asks for no offload is one look-up of
    Offload-Requested: the headers are not scanned."""
    scans: list[object] = []
    monkeypatch.setattr(offloader._parsers, "header_pairs", scans.append)
    response = httpx.Response(200, content=b"x")
    headers = _CountingHeaders([("X-A", "1")] * 50)
    response.headers = headers

    result = Offloader().modify_response(response)

    assert result is response
    assert headers.lookups == 1
    assert scans == []


def test_modify_response_returns_a_new_streaming_response(
    sites: Sites,
) -> None:
    """An offload returns a new response: the offload server's status,
    headers and streamed body; the backend response is closed; the
    result remembers the caller's request."""
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(status=206, body=[b"a", b"b", b"c"]))
    with httpx.Client() as client, Offloader() as off:
        request = client.build_request("GET", sites.backend.url + "/r")
        response = client.send(request, stream=True)

        result = off.modify_response(response)

        assert result is not response
        assert response.is_closed
        assert result.status_code == 206
        assert result.request is request
        assert off.in_flight == 1
        assert b"".join(result.iter_raw()) == b"abc"
        result.close()
        assert off.in_flight == 0


def test_module_level_functions_use_the_default_offloader(
    sites: Sites,
) -> None:
    """`modify_response` offloads with one shared default offloader."""
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(body=[b"default"]))
    with httpx.Client() as client:
        response = client.send(
            client.build_request("GET", sites.backend.url), stream=True
        )

        result = modify_response(response)

        assert result.read() == b"default"
    assert offloader.default_offloader() is offloader.default_offloader()


@pytest.mark.anyio
async def test_module_level_async_function(sites: Sites) -> None:
    """`amodify_response` is the async twin."""
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(body=[b"async default"]))
    async with httpx.AsyncClient() as client:
        response = await client.send(
            client.build_request("GET", sites.backend.url), stream=True
        )

        result = await amodify_response(response)

        assert await result.aread() == b"async default"
    await offloader.default_offloader().aclose()


# -- the adapters -------------------------------------------------------------


def test_module_level_hooks(sites: Sites) -> None:
    """`response_hook` works in a plain httpx.Client."""
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(headers=[("X-O", "1")], body=[b"hooked"]))

    with httpx.Client(event_hooks={"response": [response_hook]}) as client:
        response = client.get(sites.backend.url)

    assert response.text == "hooked"
    assert response.headers["x-o"] == "1"


@pytest.mark.anyio
async def test_module_level_async_hook(sites: Sites) -> None:
    """`async_response_hook` works in a plain httpx.AsyncClient."""
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(body=[b"async hooked"]))

    async with httpx.AsyncClient(
        event_hooks={"response": [async_response_hook]}
    ) as client:
        response = await client.get(sites.backend.url)

    assert response.text == "async hooked"
    await offloader.default_offloader().aclose()


def test_hook_changes_the_response_in_place(sites: Sites) -> None:
    """The hook makes the client's own response object carry the
    offload server's status, headers and body; closing it closes the
    offload response too."""
    sites.backend.use(
        Responder(status=200, headers=offload_to(sites.offload.url))
    )
    sites.offload.use(
        Responder(status=404, headers=[("X-O", "1")], body=[b"x"] * 100)
    )
    off = Offloader()
    with httpx.Client(
        event_hooks={"response": [hooks(off).response_hook]}
    ) as client:
        with client.stream("GET", sites.backend.url) as response:
            status = response.status_code
            header = response.headers["x-o"]
            first = next(response.iter_raw())

        assert sites.offload.settled(max_connections=1)
        assert sites.backend.settled(max_connections=1)
    off.close()

    assert status == 404
    assert header == "1"
    assert first.startswith(b"x")
    assert response.url == httpx.URL(sites.backend.url)
    assert off.in_flight == 0


def test_transport_returns_a_new_response(sites: Sites) -> None:
    """The transport returns the offload response as a new object, and
    the one from the wrapped transport closed."""
    seen: list[httpx.Response] = []

    class Remember(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(self.inner.handle_request(request))
            return seen[-1]

        def close(self) -> None:
            self.inner.close()

    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(body=[b"new"]))
    transport = OffloadTransport(Remember(), Offloader())

    with httpx.Client(transport=transport) as client:
        response = client.get(sites.backend.url)

    assert response.text == "new"
    assert len(seen) == 1
    assert seen[0] is not response
    assert seen[0].is_closed
    transport.offloader.close()


@pytest.mark.anyio
async def test_async_transport_defaults(sites: Sites) -> None:
    """AsyncOffloadTransport with no arguments reaches the backend with
    its own transport and offloads with the default offloader."""
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(body=[b"defaults"]))

    async with httpx.AsyncClient(transport=AsyncOffloadTransport()) as c:
        response = await c.get(sites.backend.url)

    assert response.text == "defaults"
    await offloader.default_offloader().aclose()


# -- configuration ------------------------------------------------------------


class _ToPath:
    """A custom parser: ``X-Job: <id>`` means GET <base>/jobs/<id>."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.calls = 0

    def parse(self, headers: HeadersInput) -> OffloadDirective | None:
        self.calls += 1
        job = httpx.Headers(headers).get("x-job")  # type: ignore[arg-type]
        if job is None:
            return None
        return OffloadDirective(url=f"{self.base}/jobs/{job}")


def test_custom_parser(sites: Sites) -> None:
    """Offloader(parsers=[...]) uses a user's DirectiveParser instead of
    the Offload-* one."""
    parser = _ToPath(sites.offload.url)
    offload = Responder(body=[b"job done"])
    sites.backend.use(
        Responder(headers=[("X-Job", "17"), *offload_to(sites.third.url)])
    )
    sites.offload.use(offload)
    sites.third.use(Responder())
    off = Offloader(parsers=[parser])
    bound = hooks(off)

    with httpx.Client(event_hooks={"response": [bound.response_hook]}) as c:
        response = c.get(sites.backend.url)
    off.close()

    assert response.text == "job done"
    assert offload.last.raw_path == b"/jobs/17"
    assert parser.calls >= 1
    assert sites.third.requests == 0


def test_custom_prefix_parser_and_its_headers_are_stripped(
    sites: Sites,
) -> None:
    """With OffloadHeaderParser(prefix="X-Defer-") the X-Defer-* headers
    drive the offload and never reach the caller, nor Offload-* ones."""
    offload = Responder(
        headers=[("X-Defer-Trace", "1"), ("Offload-Trace", "2")],
        body=[b"deferred"],
    )
    sites.backend.use(
        Responder(
            headers=[
                ("X-Defer-Requested", "1"),
                ("X-Defer-Url", sites.offload.url + "/d"),
                ("X-Defer-X-Token", "t"),
            ]
        )
    )
    sites.offload.use(offload)
    off = Offloader(parsers=[OffloadHeaderParser(prefix="X-Defer-")])

    with httpx.Client(transport=OffloadTransport(offloader=off)) as client:
        response = client.get(sites.backend.url)

    assert response.text == "deferred"
    assert offload.last.header("token") == ["t"]
    assert "x-defer-trace" not in response.headers
    assert "offload-trace" not in response.headers
    off.close()


def test_x_accel_redirect_parser_through_real_servers(sites: Sites) -> None:
    """A backend written for NGINX's X-Accel-Redirect works unchanged."""
    offload = Responder(body=[b"file body"])
    sites.backend.use(
        Responder(headers=[("X-Accel-Redirect", "/protected/a.txt?v=2")])
    )
    sites.offload.use(offload)
    parser = XAccelRedirectParser(
        {
            "/protected/": sites.offload.url + "/store/",
            "/": sites.third.url + "/",
        }
    )
    off = Offloader(parsers=[parser, OffloadHeaderParser()])

    with httpx.Client(transport=OffloadTransport(offloader=off)) as client:
        response = client.get(sites.backend.url)

    assert response.text == "file body"
    assert offload.last.raw_path == b"/store/a.txt"
    assert offload.last.query_string == b"v=2"
    assert "x-accel-redirect" not in response.headers
    off.close()


def test_offload_through_a_users_client(sites: Sites) -> None:
    """Offloader(client=...) sends offload requests through that client:
    its hooks run, but redirects are still not followed."""
    seen: list[str] = []
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(
        Responder(status=307, headers=[("Location", sites.third.url)])
    )
    sites.third.use(Responder())
    offload_client = httpx.Client(
        follow_redirects=True,
        event_hooks={"request": [lambda r: seen.append(str(r.url))]},
    )
    off = Offloader(client=offload_client)

    with httpx.Client(transport=OffloadTransport(offloader=off)) as client:
        response = client.get(sites.backend.url)

    assert response.status_code == 307
    assert seen == [sites.offload.url]
    assert sites.third.requests == 0
    offload_client.close()


def test_offload_through_a_users_transport(sites: Sites) -> None:
    """Offloader(transport=...) sends offload requests through it."""
    sent: list[httpx.URL] = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request.url)
            return super().handle_request(request)

    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(body=[b"via transport"]))
    own = Counting()
    off = Offloader(transport=own)

    with httpx.Client(transport=OffloadTransport(offloader=off)) as client:
        response = client.get(sites.backend.url)

    assert response.text == "via transport"
    assert sent == [httpx.URL(sites.offload.url)]
    off.close()
    own.close()


@pytest.mark.anyio
async def test_offload_through_a_users_async_client(sites: Sites) -> None:
    """Offloader(async_client=...) sends async offload requests through
    that client."""
    seen: list[str] = []

    async def record(request: httpx.Request) -> None:
        seen.append(str(request.url))

    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(body=[b"async client"]))
    async with httpx.AsyncClient(
        event_hooks={"request": [record]}
    ) as offload_client:
        off = Offloader(async_client=offload_client)
        transport = AsyncOffloadTransport(offloader=off)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(sites.backend.url)

    assert response.text == "async client"
    assert seen == [sites.offload.url]


def test_capacity_limit_answers_503(sites: Sites) -> None:
    """Past max_offloads an offload is refused with a 503 error, and the
    backend response is closed; a finished offload frees its slot."""
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(body=[b"slot"]))
    off = Offloader(max_offloads=1)
    with httpx.Client(transport=OffloadTransport(offloader=off)) as client:
        with client.stream("GET", sites.backend.url) as first:
            with pytest.raises(OffloadCapacityExceeded) as raised:
                client.get(sites.backend.url)
            first.read()
        second = client.get(sites.backend.url)

        assert sites.backend.settled(max_connections=1)
    off.close()

    assert raised.value.status_code == 503
    assert second.text == "slot"


def test_destination_policy_refuses_before_sending(sites: Sites) -> None:
    """A destination outside the policy is DestinationRefused, an
    InvalidDirective; nothing is sent and the backend response, larger
    than socket buffers, is closed."""
    sites.backend.use(
        Responder(
            headers=offload_to(sites.offload.url),
            body=big_body(16 * 1024 * 1024),
        )
    )
    sites.offload.use(Responder())
    off = Offloader(policy=DestinationPolicy(hosts=["api.internal"]))

    with httpx.Client(transport=OffloadTransport(offloader=off)) as client:
        for _ in range(2):
            with pytest.raises(DestinationRefused):
                client.get(sites.backend.url)
        settled = sites.backend.settled(max_connections=1)
    off.close()

    assert sites.offload.requests == 0
    assert settled


@pytest.mark.parametrize(
    "config",
    [
        {"deadline": 0},
        {"deadline": -1},
        {"max_hops": 0},
        {"max_offloads": 0},
    ],
)
def test_bad_configuration_is_refused(config: dict[str, float]) -> None:
    """Impossible settings raise ValueError at construction."""
    with pytest.raises(ValueError):  # noqa: PT011 - one per setting
        Offloader(**config)  # type: ignore[arg-type]


# -- pure steps ---------------------------------------------------------------


def test_build_request_is_pure_and_exact() -> None:
    """build_request makes the offload request from the directive alone:
    method, URL as given, directive headers and nothing else."""
    directive = OffloadDirective(
        url="http://api.internal:81/a%2Fb?x=%20",
        method="head",
        headers=[("X-Trace", "1"), ("X-Trace", "2")],
    )

    request = Offloader().build_request(directive)

    assert request.method == "HEAD"
    assert request.url.raw_path == b"/a%2Fb?x=%20"
    assert request.headers.get_list("x-trace") == ["1", "2"]
    assert set(request.headers) == {"host", "x-trace"}


def test_build_request_caps_timeouts_by_the_deadline() -> None:
    """Each per-operation timeout fits within the remaining deadline."""
    directive = OffloadDirective(url="http://a/")

    request = Offloader(timeout=30.0).build_request(
        directive, deadline=time.monotonic() + 2
    )

    timeouts = request.extensions["timeout"]
    assert set(timeouts) == {"connect", "read", "write", "pool"}
    assert all(0 < value <= 2 for value in timeouts.values())


def test_build_request_checks_the_policy() -> None:
    """The policy is checked when the request is built, before any I/O."""
    off = Offloader(policy=DestinationPolicy(ports=[443]))

    with pytest.raises(DestinationRefused):
        off.build_request(OffloadDirective(url="http://a:8080/"))


class _Tracked(httpx.SyncByteStream):
    def __init__(self) -> None:
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"body"

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00"])
def test_unsendable_directive_closes_the_response(bad: str) -> None:
    """A CR, LF or NUL in a directive (which no HTTP server would send,
    so this needs no network) raises InvalidDirective and closes the
    backend response."""
    stream = _Tracked()
    response = httpx.Response(
        200,
        headers=[
            ("Offload-Requested", "1"),
            ("Offload-Url", "http://a/"),
            ("Offload-X-Evil", f"a{bad}Injected: 1"),
        ],
        stream=stream,
    )

    with pytest.raises(InvalidDirective):
        Offloader().modify_response(response)

    assert stream.closed


def test_mock_transport_round_trip() -> None:
    """A pure unit check with MockTransport: the offload request carries
    exactly the directive, and the answer replaces the response."""
    received: list[httpx.Request] = []

    def offload_server(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200, headers={"X-O": "1"}, content=b"mock")

    def backend(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers=offload_to("http://offload/x?y=1", ("Offload-X-K", "v")),
        )

    off = Offloader(transport=httpx.MockTransport(offload_server))
    transport = OffloadTransport(httpx.MockTransport(backend), off)

    with httpx.Client(transport=transport) as client:
        response = client.get("http://backend/")

    assert response.text == "mock"
    assert str(received[0].url) == "http://offload/x?y=1"
    assert received[0].headers["k"] == "v"


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "base"),
    [
        (InvalidDirective, 502, ValueError),
        (DestinationRefused, 502, InvalidDirective),
        (OffloadRequestFailed, 502, OffloadError),
        (BodyTooLarge, 502, OffloadRequestFailed),
        (OffloadTimeout, 504, OffloadError),
        (OffloadCapacityExceeded, 503, OffloadError),
    ],
)
def test_error_types_and_statuses(
    error: type[OffloadError], status: int, base: type[Exception]
) -> None:
    """Every error is an OffloadError carrying the status a proxy should
    answer with, and the message given."""
    raised = error("why")

    assert isinstance(raised, OffloadError)
    assert isinstance(raised, base)
    assert raised.status_code == status
    assert raised.message == "why"
    assert str(raised) == "why"


def test_timeout_is_not_a_request_failure() -> None:
    """A timeout and a failed request are distinct types."""
    assert not issubclass(OffloadTimeout, OffloadRequestFailed)
    assert not issubclass(OffloadRequestFailed, OffloadTimeout)
    assert OffloadError("x").status_code == 502


# -- event loops and cancellation ---------------------------------------------


#: Offloads with the module-level async hook in three event loops, one
#: after another, without closing anything in between.
_LOOPS_SCRIPT = """
import asyncio, sys
import httpx
from offloader.hooks.httpx import async_response_hook

async def main():
    hooks = {"response": [async_response_hook]}
    async with httpx.AsyncClient(event_hooks=hooks) as client:
        return (await client.get(sys.argv[1])).text

print([asyncio.run(main()) for _ in range(3)])
"""


def test_one_offloader_serves_one_event_loop_after_another(
    sites: Sites,
) -> None:
    """The module-level default offloader keeps working from one event
    loop to the next, as several `asyncio.run` calls in a script do,
    even without `aclose` in between. (Run in a child process: the
    pools of the ended loops are dropped unclosed, a documented
    limitation, and their sockets warn.)"""
    sites.backend.use(Responder(headers=offload_to(sites.offload.url)))
    sites.offload.use(Responder(body=[b"loop"]))

    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore::ResourceWarning",
            "-c",
            _LOOPS_SCRIPT,
            sites.backend.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.stdout.strip() == "['loop', 'loop', 'loop']", result.stderr


@pytest.mark.anyio
@pytest.mark.parametrize("adapter", ["hook", "transport"])
async def test_cancelled_offload_leaves_nothing_open(
    sites: Sites, adapter: str
) -> None:
    """Cancelling a caller mid-offload closes the backend response and
    the offload request, and frees the offload's slot."""
    sites.backend.use(
        Responder(headers=offload_to(sites.offload.url), body=[b"b"])
    )
    sites.offload.use(hang_until_disconnect)
    off = Offloader()
    if adapter == "hook":
        client = httpx.AsyncClient(
            event_hooks={"response": [hooks(off).async_response_hook]}
        )
    else:
        client = httpx.AsyncClient(
            transport=AsyncOffloadTransport(offloader=off)
        )

    async with client:
        with anyio.move_on_after(0.3) as scope:
            await client.get(sites.backend.url)
        in_flight = off.in_flight
    await off.aclose()

    assert scope.cancelled_caught
    assert in_flight == 0
    assert await anyio.to_thread.run_sync(sites.offload.settled, 0)
    assert await anyio.to_thread.run_sync(sites.backend.settled, 0)


def test_transport_client_keeps_the_offload_servers_cookies(
    sites: Sites,
) -> None:
    """Through the transport, the client's cookie jar gets the offload
    server's cookies, not those of the dropped backend response."""
    sites.backend.use(
        Responder(
            headers=offload_to(
                sites.offload.url, ("Set-Cookie", "backend=1; Path=/")
            )
        )
    )
    sites.offload.use(Responder(headers=[("Set-Cookie", "offload=1; Path=/")]))
    off = Offloader()

    with httpx.Client(transport=OffloadTransport(offloader=off)) as client:
        client.get(sites.backend.url)
        cookies = dict(client.cookies)
    off.close()

    assert cookies == {"offload": "1"}
