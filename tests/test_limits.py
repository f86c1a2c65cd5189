"""Limits: forwarded body size, total deadline, pool and offload capacity.

Every limit is checked against real loopback servers through each of the
four core adapters (sync and async hook, sync and async transport).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from offloader import (
    BodyTooLarge,
    OffloadCapacityExceeded,
    Offloader,
    OffloadTimeout,
)
from offloader.hooks.httpx import hooks

from .faultservers import (
    MODES,
    call,
    directing_backend,
    raw_server,
    records_request,
    trickle,
    trickle_head,
)
from .servers import RunningServer, serve


@pytest.fixture(scope="module")
def backend() -> Iterator[RunningServer]:
    with serve(directing_backend) as server:
        yield server


def wait_for(check: object, timeout: float = 5.0) -> bool:
    """Poll the callable *check* until it is true or *timeout* passes."""
    import time

    assert callable(check)
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return bool(check())
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("mode", MODES)
def test_a_forwarded_body_past_the_limit_aborts_the_offload(
    backend: RunningServer, mode: str
) -> None:
    """A backend body larger than max_forward_body_size gives BodyTooLarge
    (502); the offload server never gets a whole request, and it got no
    more than the limit and one chunk: the body was never held whole."""
    limit = 256 * 1024
    bodies: list[bytes] = []

    with raw_server(records_request(bodies)) as offload:
        outcome = call(
            mode,
            backend.url,
            {
                "X-Target": offload.url,
                "X-Method": "POST",
                "X-Forward": "8388608",
            },
            max_forward_body_size=limit,
        )
        closed = wait_for(lambda: offload.closed == offload.accepted)

    assert isinstance(outcome.error, BodyTooLarge)
    assert outcome.error.status_code == 502
    assert bodies == []
    assert offload.received < limit + 2 * 65536 + 4096
    assert closed


@pytest.mark.parametrize("mode", MODES)
def test_a_body_within_the_limit_is_forwarded_whole(
    backend: RunningServer, mode: str
) -> None:
    """Control: at the limit exactly, the whole body arrives."""
    limit = 256 * 1024
    bodies: list[bytes] = []

    with raw_server(records_request(bodies)) as offload:
        outcome = call(
            mode,
            backend.url,
            {
                "X-Target": offload.url,
                "X-Method": "POST",
                "X-Forward": str(limit),
            },
            max_forward_body_size=limit,
        )

    assert outcome.error is None
    assert outcome.body == b"ok"
    assert bodies == [b"f" * limit]


@pytest.mark.parametrize("mode", MODES)
def test_the_deadline_cuts_off_a_body_trickled_a_byte_a_second(
    backend: RunningServer, mode: str
) -> None:
    """A server that sends its head at once, then one body byte a
    second, is cut off at the offload's total deadline with
    OffloadTimeout (504), and its connection is closed."""
    with raw_server(trickle(interval=1.0)) as slow:
        outcome = call(mode, backend.url, {"X-Target": slow.url}, deadline=0.5)
        closed = wait_for(lambda: slow.closed == slow.accepted == 1)

    assert outcome.status == 200
    assert isinstance(outcome.body_error, OffloadTimeout)
    assert outcome.body_error.status_code == 504
    assert closed


@pytest.mark.parametrize("mode", MODES)
def test_the_deadline_cuts_off_headers_trickled_a_byte_a_second(
    backend: RunningServer, mode: str
) -> None:
    """A server that trickles its response head is cut off before any
    response reaches the caller, also on the sync path, where no single
    read ever times out."""
    with raw_server(trickle_head(interval=1.0)) as slow:
        outcome = call(mode, backend.url, {"X-Target": slow.url}, deadline=0.5)
        closed = wait_for(lambda: slow.closed == slow.accepted == 1)

    assert outcome.status is None
    assert isinstance(outcome.error, OffloadTimeout)
    assert closed


@pytest.mark.parametrize("mode", ["sync-hook", "async-transport"])
def test_the_directive_timeout_is_the_deadline_when_shorter(
    backend: RunningServer, mode: str
) -> None:
    """Offload-Timeout shortens the offloader's deadline."""
    with raw_server(trickle(interval=1.0)) as slow:
        outcome = call(
            mode,
            backend.url,
            {"X-Target": slow.url, "X-Timeout": "0.5"},
            deadline=30.0,
        )

    assert isinstance(outcome.body_error, OffloadTimeout)


def test_an_exhausted_pool_answers_503_at_its_pool_timeout(
    backend: RunningServer,
) -> None:
    """With every pooled connection busy, the next offload fails with
    OffloadCapacityExceeded (503) at the pool timeout, long before its
    30-second deadline, instead of waiting for a connection."""
    offloader = Offloader(
        limits=httpx.Limits(max_connections=1),
        timeout=httpx.Timeout(30.0, pool=0.2),
        deadline=30.0,
    )
    bound = hooks(offloader)
    client = httpx.Client(event_hooks={"response": [bound.response_hook]})

    with raw_server(trickle(interval=1.0)) as slow, offloader, client:
        headers = {"X-Target": slow.url}
        holding = client.send(
            client.build_request("GET", backend.url, headers=headers),
            stream=True,
        )
        with pytest.raises(OffloadCapacityExceeded) as caught:
            client.get(backend.url, headers=headers)
        holding.close()
        after = client.send(
            client.build_request("GET", backend.url, headers=headers),
            stream=True,
        )
        after.close()

    assert holding.status_code == 200
    assert caught.value.status_code == 503
    assert after.status_code == 200
    assert slow.accepted == 2


@pytest.mark.anyio
async def test_an_exhausted_async_pool_answers_503_at_its_pool_timeout(
    backend: RunningServer,
) -> None:
    """The async twin: a full pool answers 503 at the pool timeout."""
    offloader = Offloader(
        limits=httpx.Limits(max_connections=1),
        timeout=httpx.Timeout(30.0, pool=0.2),
    )
    bound = hooks(offloader)
    client = httpx.AsyncClient(
        event_hooks={"response": [bound.async_response_hook]}
    )

    with raw_server(trickle(interval=1.0)) as slow:
        async with offloader, client:
            headers = {"X-Target": slow.url}
            holding = await client.send(
                client.build_request("GET", backend.url, headers=headers),
                stream=True,
            )
            with pytest.raises(OffloadCapacityExceeded) as caught:
                await client.get(backend.url, headers=headers)
            await holding.aclose()

    assert holding.status_code == 200
    assert caught.value.status_code == 503
    assert slow.accepted == 1


@pytest.mark.parametrize("mode", MODES)
def test_max_offloads_refuses_at_once_without_connecting(
    backend: RunningServer, mode: str
) -> None:
    """Past max_offloads, an offload is refused (503) before it connects
    anywhere."""
    offloader = Offloader(max_offloads=1)

    with raw_server(trickle(interval=1.0)) as slow, offloader:
        bound = hooks(offloader)
        with httpx.Client(
            event_hooks={"response": [bound.response_hook]}
        ) as client:
            holding = client.send(
                client.build_request(
                    "GET", backend.url, headers={"X-Target": slow.url}
                ),
                stream=True,
            )
            outcome = call(
                mode, backend.url, {"X-Target": slow.url}, offloader=offloader
            )
            holding.close()
        in_flight_after = offloader.in_flight

    assert isinstance(outcome.error, OffloadCapacityExceeded)
    assert outcome.error.status_code == 503
    assert slow.accepted == 1
    assert in_flight_after == 0
