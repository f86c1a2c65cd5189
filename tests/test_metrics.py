"""Prometheus metrics: the observer, the gauges read at scrape time, and
the metrics endpoint, through real loopback servers."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from offloader import (
    BodyTooLarge,
    DestinationPolicy,
    DestinationRefused,
    InvalidDirective,
    OffloadCancelled,
    OffloadCapacityExceeded,
    Offloader,
    OffloadError,
    OffloadEvent,
    OffloadRequestFailed,
    OffloadTimeout,
)
from offloader.hooks.aiohttp import AiohttpTransport
from offloader.hooks.httpx import hooks
from offloader.metrics import (
    MULTIPROCESS_ENV,
    PrometheusObserver,
    instrument,
    outcome_of,
    serving_metrics,
    start_metrics_server,
)

from .servers import RunningServer, serve

REPORT = b"the slow report\n"


async def _offload_server(scope: Any, receive: Any, send: Any) -> None:
    """Answers /report at once and /slow after two seconds."""
    if scope["path"] == "/slow":
        await asyncio.sleep(2)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(REPORT)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": REPORT})


def _backend_for(offload_url: str) -> Any:
    async def backend(scope: Any, receive: Any, send: Any) -> None:
        """Asks for an offload of the path it was asked for."""
        headers = [
            (b"offload-requested", b""),
            (b"offload-url", f"{offload_url}{scope['path']}".encode()),
            (b"content-length", b"0"),
        ]
        if scope["path"] == "/slow":
            headers.append((b"offload-timeout", b"0.3"))
        await send(
            {"type": "http.response.start", "status": 200, "headers": headers}
        )
        await send({"type": "http.response.body", "body": b""})

    return backend


@pytest.fixture
def servers() -> Iterator[tuple[RunningServer, RunningServer]]:
    with (
        serve(_offload_server) as offload_server,
        serve(_backend_for(offload_server.url)) as backend,
    ):
        yield backend, offload_server


def _value(
    registry: CollectorRegistry, name: str, **labels: str
) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "ok"),
        (InvalidDirective("x"), "invalid_directive"),
        (DestinationRefused("x"), "destination_refused"),
        (OffloadRequestFailed("x"), "request_failed"),
        (BodyTooLarge("x"), "body_too_large"),
        (OffloadCancelled("x"), "cancelled"),
        (OffloadTimeout("x"), "timeout"),
        (OffloadCapacityExceeded("x"), "capacity_exceeded"),
        (OffloadError("x"), "error"),
    ],
)
def test_outcome_names_the_most_specific_error(
    error: OffloadError | None, outcome: str
) -> None:
    """Each error type has its own outcome label."""
    assert outcome_of(error) == outcome


@pytest.mark.anyio
async def test_observer_counts_a_successful_offload(
    servers: tuple[RunningServer, RunningServer],
) -> None:
    """While the body is unread the offload is in flight; once read, it
    counts as ok with its duration and bytes."""
    backend, _ = servers
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    offloader = Offloader(observers=[observer])
    bound = hooks(offloader)

    async with (
        offloader,
        httpx.AsyncClient(
            event_hooks={"response": [bound.async_response_hook]}
        ) as client,
        client.stream("GET", f"{backend.url}/report") as response,
    ):
        in_flight = _value(registry, "offloader_offloads_in_flight")
        body = await response.aread()

    assert body == REPORT
    assert in_flight == 1
    assert _value(registry, "offloader_offloads_in_flight") == 0
    assert _value(registry, "offloader_offloads_total", outcome="ok") == 1
    assert (
        _value(
            registry,
            "offloader_offload_duration_seconds_count",
            outcome="ok",
        )
        == 1
    )
    assert _value(registry, "offloader_offload_received_bytes_total") == len(
        REPORT
    )


@pytest.mark.anyio
async def test_observer_counts_timeouts_and_refusals(
    servers: tuple[RunningServer, RunningServer],
) -> None:
    """A timed-out and a refused offload count under their outcome, and
    leave nothing in flight."""
    backend, _ = servers
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    timing_out = Offloader(observers=[observer])
    refusing = Offloader(
        observers=[observer], policy=DestinationPolicy(hosts=["a.test"])
    )

    async with timing_out, refusing:
        for offloader, path, error in [
            (timing_out, "/slow", OffloadTimeout),
            (refusing, "/report", DestinationRefused),
        ]:
            bound = hooks(offloader)
            async with httpx.AsyncClient(
                event_hooks={"response": [bound.async_response_hook]}
            ) as client:
                with pytest.raises(error):
                    await client.get(f"{backend.url}{path}")

    assert _value(registry, "offloader_offloads_in_flight") == 0
    assert _value(registry, "offloader_offloads_total", outcome="timeout") == 1
    assert (
        _value(
            registry,
            "offloader_offloads_total",
            outcome="destination_refused",
        )
        == 1
    )
    assert _value(registry, "offloader_offloads_total", outcome="ok") is None


def test_watch_reports_the_limit_and_the_pool(
    servers: tuple[RunningServer, RunningServer],
) -> None:
    """A watched offloader's limit and pooled connections are read when
    the registry is collected."""
    backend, _ = servers
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    offloader = Offloader(observers=[observer], max_offloads=123)
    observer.watch(offloader)
    bound = hooks(offloader)

    with (
        offloader,
        httpx.Client(event_hooks={"response": [bound.response_hook]}) as c,
    ):
        before = _value(registry, "offloader_pool_connections", state="idle")
        assert c.get(f"{backend.url}/report").content == REPORT
        after = _value(registry, "offloader_pool_connections", state="idle")
        limit = _value(registry, "offloader_offloads_limit")

    assert before == 0
    assert after == 1
    assert limit == 123


def test_metrics_server_serves_the_registry_until_closed() -> None:
    """The endpoint answers with the registry's metrics on loopback, and
    stops listening once closed."""
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    observer.in_flight.inc(3)

    with start_metrics_server("127.0.0.1", 0, registry) as server:
        scraped = httpx.get(server.url)
    refused = socket.socket()
    try:
        closed = refused.connect_ex(("127.0.0.1", server.port)) != 0
    finally:
        refused.close()

    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    assert scraped.status_code == 200
    assert "offloader_offloads_in_flight 3.0" in scraped.text
    assert closed


def test_one_registry_refuses_a_second_observer() -> None:
    """Two observers with one namespace cannot share a registry: the
    second would silently split the counts."""
    registry = CollectorRegistry()
    PrometheusObserver(registry)

    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PrometheusObserver(registry)


def test_offloader_does_not_import_prometheus_client() -> None:
    """Only ``offloader.metrics`` imports prometheus-client."""
    code = (
        "import sys, offloader, offloader.hooks.httpx;"
        "print('prometheus_client' in sys.modules)"
    )

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    assert result.stdout.strip() == "False"


def test_instrument_adds_an_observer_and_watches(
    servers: tuple[RunningServer, RunningServer],
) -> None:
    """`instrument` connects a new observer to an existing offloader,
    keeping the observers it had."""
    backend, _ = servers
    registry = CollectorRegistry()
    seen: list[str] = []
    offloader = Offloader(
        observers=[lambda event: seen.append(event.kind)], max_offloads=7
    )

    observer = instrument(offloader, registry)
    with (
        offloader,
        httpx.Client(
            event_hooks={"response": [hooks(offloader).response_hook]}
        ) as client,
    ):
        client.get(f"{backend.url}/report")

    assert observer in offloader.observers
    assert seen == ["start", "finish"]
    assert _value(registry, "offloader_offloads_total", outcome="ok") == 1
    assert _value(registry, "offloader_offloads_limit") == 7


def test_serving_metrics_with_one_worker_serves_the_global_registry() -> None:
    """With one worker the proxy runs in this process: the endpoint shows
    the global registry, and multiprocess mode stays off."""
    with serving_metrics("127.0.0.1", 0, workers=1) as server:
        scraped = httpx.get(server.url).text

    assert MULTIPROCESS_ENV not in os.environ
    # prometheus-client's own process metrics live in the global registry.
    assert "python_info" in scraped


def test_serving_metrics_with_workers_reads_their_files() -> None:
    """With several workers, each worker process writes its metrics to
    the shared directory, and one scrape adds them up."""
    code = (
        "from offloader.metrics import PrometheusObserver as P;"
        "from offloader import OffloadEvent as E;"
        "p = P();"
        "p(E(kind='start', method='GET', url='http://a/'));"
        "p(E(kind='finish', method='GET', url='http://a/', duration=0.2));"
        "p(E(kind='start', method='GET', url='http://a/'))"
    )

    with serving_metrics("127.0.0.1", 0, workers=2) as server:
        path = os.environ[MULTIPROCESS_ENV]
        for _ in range(2):  # two "workers", one after the other
            subprocess.run(
                [sys.executable, "-c", code], check=True, timeout=60
            )
        scraped = httpx.get(server.url).text

    assert MULTIPROCESS_ENV not in os.environ
    assert not os.path.exists(path)
    assert 'offloader_offloads_total{outcome="ok"} 2.0' in scraped
    # Gauges of processes that exited are left behind (livesum counts the
    # files present); what matters here is that both were summed.
    assert "offloader_offloads_in_flight 2.0" in scraped


@pytest.mark.anyio
async def test_watch_reports_the_async_pool(
    servers: tuple[RunningServer, RunningServer],
) -> None:
    """The pool gauge also counts the connections of async offloads."""
    backend, _ = servers
    registry = CollectorRegistry()
    offloader = Offloader()
    instrument(offloader, registry)
    bound = hooks(offloader)

    async with (
        offloader,
        httpx.AsyncClient(
            event_hooks={"response": [bound.async_response_hook]}
        ) as client,
    ):
        response = await client.get(f"{backend.url}/report")
        idle = _value(registry, "offloader_pool_connections", state="idle")

    assert response.content == REPORT
    assert idle == 1


@pytest.mark.anyio
async def test_watch_reports_the_pool_of_the_aiohttp_engine(
    servers: tuple[RunningServer, RunningServer],
) -> None:
    """The pool gauge reads the aiohttp engine's pool too, as
    ``offloader serve`` runs by default: a connection is active while an
    offload is relayed, and idle after."""
    backend, _ = servers
    registry = CollectorRegistry()
    transport = AiohttpTransport()
    offloader = Offloader(async_transport=transport)
    instrument(offloader, registry)
    bound = hooks(offloader)

    async with (
        offloader,
        httpx.AsyncClient(
            event_hooks={"response": [bound.async_response_hook]}
        ) as client,
    ):
        async with client.stream("GET", f"{backend.url}/report") as response:
            active = _value(
                registry, "offloader_pool_connections", state="active"
            )
            body = await response.aread()
        idle = _value(registry, "offloader_pool_connections", state="idle")
        after = _value(registry, "offloader_pool_connections", state="active")
    await transport.aclose()

    assert body == REPORT
    assert (active, after, idle) == (1, 0, 1)


def test_refusals_before_a_start_are_counted_once(
    servers: tuple[RunningServer, RunningServer],
) -> None:
    """An invalid directive and the max_offloads cap emit one ``refuse``
    event each, with no ``start``: the totals count them by outcome and
    the in-flight gauge is left alone."""
    backend, _ = servers
    registry = CollectorRegistry()
    events: list[OffloadEvent] = []
    capped = Offloader(
        observers=[PrometheusObserver(registry), events.append],
        max_offloads=1,
    )
    bound = hooks(capped)
    invalid = httpx.Response(
        200,
        headers={"Offload-Requested": "", "Offload-Method": "DELETE"},
        request=httpx.Request("GET", backend.url),
    )

    with (
        capped,
        httpx.Client(event_hooks={"response": [bound.response_hook]}) as c,
        c.stream("GET", f"{backend.url}/report") as held,
    ):
        with pytest.raises(OffloadCapacityExceeded):
            c.get(f"{backend.url}/report")
        with pytest.raises(InvalidDirective):
            capped.modify_response(invalid)
        in_flight = _value(registry, "offloader_offloads_in_flight")
        assert held.read() == REPORT

    assert [event.kind for event in events] == [
        "start",
        "refuse",
        "refuse",
        "finish",
    ]
    capacity, invalid_event = events[1], events[2]
    assert isinstance(capacity.error, OffloadCapacityExceeded)
    assert capacity.url.endswith("/report")
    assert isinstance(invalid_event.error, InvalidDirective)
    assert (invalid_event.method, invalid_event.url) == ("", "")
    assert in_flight == 1
    assert _value(registry, "offloader_offloads_in_flight") == 0
    for outcome in ("capacity_exceeded", "invalid_directive", "ok"):
        assert (
            _value(registry, "offloader_offloads_total", outcome=outcome) == 1
        )
    assert (
        _value(
            registry,
            "offloader_offload_duration_seconds_count",
            outcome="capacity_exceeded",
        )
        is None
    )
