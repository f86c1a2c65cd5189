"""Prometheus metrics for offloaders, through ``prometheus-client``.

Install the ``metrics`` extra (``pip install "offloader[metrics]"``);
nothing else in offloader imports this module or ``prometheus-client``.

`PrometheusObserver` is an offload observer (see `offloader.OffloadEvent`)
that keeps these metrics, with the default namespace ``offloader``:

- ``offloader_offloads_in_flight`` (gauge): offloads started and not
  yet finished.
- ``offloader_offloads_total`` (counter, by ``outcome``): offloads ended.
- ``offloader_offload_duration_seconds`` (histogram, by ``outcome``):
  from the directive to the offload response's last byte.
- ``offloader_offload_received_bytes_total`` (counter): body bytes
  received from offload servers.
- ``offloader_offloads_limit`` (gauge): the most offloads allowed in
  flight (0 for no limit).
- ``offloader_pool_connections`` (gauge, by ``state``: ``active`` or
  ``idle``): connections in the offloaders' own pools.

``outcome`` is ``ok`` or the kind of failure: ``invalid_directive``,
``destination_refused``, ``request_failed``, ``body_too_large``,
``cancelled`` (the caller gave up), ``timeout``, ``capacity_exceeded``
(or ``error`` for anything else). The
last two gauges describe offloaders passed to `PrometheusObserver.watch`.

`start_metrics_server` serves a registry on ``HOST:PORT`` for scraping;
`instrument` connects an observer to an offloader in one call; and
`serving_metrics` is what ``offloader serve --metrics-listen`` runs, with
one worker process or several.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

try:
    import prometheus_client
    from prometheus_client import multiprocess
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "offloader.metrics needs prometheus-client: "
        'pip install "offloader[metrics]"'
    ) from exc

import attrs

from ._errors import (
    BodyTooLarge,
    DestinationRefused,
    InvalidDirective,
    OffloadCancelled,
    OffloadCapacityExceeded,
    OffloadError,
    OffloadRequestFailed,
    OffloadTimeout,
)
from ._events import OffloadEvent

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

    from ._offloader import Offloader

__all__ = [
    "DEFAULT_BUCKETS",
    "MULTIPROCESS_ENV",
    "MetricsServer",
    "PrometheusObserver",
    "instrument",
    "outcome_of",
    "serving_metrics",
    "start_metrics_server",
]

#: Latency buckets in seconds. Offloads are slow calls by design, so the
#: buckets reach further than prometheus-client's default 10 s.
DEFAULT_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)

# Most specific first: the first matching type names the outcome.
_OUTCOMES: tuple[tuple[type[OffloadError], str], ...] = (
    (DestinationRefused, "destination_refused"),
    (InvalidDirective, "invalid_directive"),
    (BodyTooLarge, "body_too_large"),
    (OffloadCancelled, "cancelled"),
    (OffloadRequestFailed, "request_failed"),
    (OffloadTimeout, "timeout"),
    (OffloadCapacityExceeded, "capacity_exceeded"),
)


def outcome_of(error: OffloadError | None) -> str:
    """Return the ``outcome`` label for an offload that ended with
    *error* (`None` for success)."""
    if error is None:
        return "ok"
    for error_type, outcome in _OUTCOMES:
        if isinstance(error, error_type):
            return outcome
    return "error"


class PrometheusObserver:
    """An offload observer that keeps Prometheus metrics.

    Pass it to an offloader, and serve its registry::

        observer = PrometheusObserver()
        offloader = Offloader(observers=[observer])
        observer.watch(offloader)
        start_metrics_server("127.0.0.1", 9100)

    Args:
        registry: Where the metrics are registered; prometheus-client's
            global registry by default. A registry holds one observer of
            a given namespace: make one observer and share it between
            offloaders.
        namespace: The prefix of every metric name.
        buckets: The latency histogram's buckets, in seconds.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "offloader",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = (
            prometheus_client.REGISTRY if registry is None else registry
        )
        self.in_flight = prometheus_client.Gauge(
            "offloads_in_flight",
            "Offloads started and not yet finished.",
            namespace=namespace,
            registry=self.registry,
            # With several worker processes: the sum over live workers.
            multiprocess_mode="livesum",
        )
        self.total = prometheus_client.Counter(
            "offloads",
            "Offloads ended, by outcome.",
            ["outcome"],
            namespace=namespace,
            registry=self.registry,
        )
        self.duration = prometheus_client.Histogram(
            "offload_duration_seconds",
            "Time from the directive to the offload response's last byte.",
            ["outcome"],
            namespace=namespace,
            buckets=tuple(buckets),
            registry=self.registry,
        )
        self.received_bytes = prometheus_client.Counter(
            "offload_received_bytes",
            "Body bytes received from offload servers.",
            namespace=namespace,
            registry=self.registry,
        )
        self._pools = _PoolCollector(namespace)
        self.registry.register(self._pools)

    def __repr__(self) -> str:
        return f"<PrometheusObserver registry={self.registry!r}>"

    def __call__(self, event: OffloadEvent) -> None:
        """Record *event*; called by the offloader on its request path."""
        if event.kind == "start":
            self.in_flight.inc()
            return
        if event.kind == "refuse":
            # Never started: neither in flight nor timed.
            self.total.labels(outcome_of(event.error)).inc()
            return
        self.in_flight.dec()
        outcome = outcome_of(event.error)
        self.total.labels(outcome).inc()
        self.duration.labels(outcome).observe(event.duration)
        if event.bytes_received:
            self.received_bytes.inc(event.bytes_received)

    def watch(self, offloader: Offloader) -> None:
        """Also report *offloader*'s limit and connection pool use.

        The gauges are read at scrape time, so watching costs nothing on
        the request path.
        """
        self._pools.watch(offloader)


def instrument(
    offloader: Offloader, registry: CollectorRegistry | None = None
) -> PrometheusObserver:
    """Add a `PrometheusObserver` to *offloader* and watch it.

    Args:
        offloader: The offloader to observe, from now on.
        registry: As for `PrometheusObserver`.

    Returns:
        The observer, to share with other offloaders.
    """
    observer = PrometheusObserver(registry)
    offloader.observers = (*offloader.observers, observer)
    observer.watch(offloader)
    return observer


class _PoolCollector(Collector):
    """Reads the watched offloaders' limits and pools when scraped."""

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._offloaders: list[Offloader] = []
        self._lock = threading.Lock()

    def watch(self, offloader: Offloader) -> None:
        with self._lock:
            if offloader not in self._offloaders:
                self._offloaders.append(offloader)

    def describe(self) -> Iterable[Metric]:
        return self._families([])

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            offloaders = list(self._offloaders)
        return self._families(offloaders)

    def _families(self, offloaders: list[Offloader]) -> Iterator[Metric]:
        limit = GaugeMetricFamily(
            f"{self._namespace}_offloads_limit",
            "The most offloads allowed in flight at once (0: no limit).",
        )
        pool = GaugeMetricFamily(
            f"{self._namespace}_pool_connections",
            "Connections in the offloaders' own pools.",
            labels=["state"],
        )
        if offloaders:
            limit.add_metric([], sum(o.max_offloads or 0 for o in offloaders))
            active = idle = 0
            for offloader in offloaders:
                busy, free = _pool_use(offloader)
                active += busy
                idle += free
            pool.add_metric(["active"], active)
            pool.add_metric(["idle"], idle)
        yield limit
        yield pool


class _PooledConnection(Protocol):
    def is_idle(self) -> bool: ...


class _CountingTransport(Protocol):
    def connection_counts(self) -> tuple[int, int]: ...


def _pool_use(offloader: Offloader) -> tuple[int, int]:
    """The connections of *offloader*'s pools in use, and idle."""
    # A transport that counts its own connections, such as the aiohttp
    # engine's, is read whether the offloader made it or was given it.
    given = offloader._async_transport
    if not offloader._owns_async_transport and hasattr(
        given, "connection_counts"
    ):
        counting: _CountingTransport = given  # type: ignore[assignment]
        return counting.connection_counts()
    active = idle = 0
    for connection in _pooled_connections(offloader):
        if connection.is_idle():
            idle += 1
        else:
            active += 1
    return active, idle


def _pooled_connections(
    offloader: Offloader,
) -> Iterator[_PooledConnection]:
    # Limitation: httpx does not expose its connection pool publicly. This
    # reads httpcore's pool (whose ``connections`` property is public)
    # through httpx's private ``_pool`` attribute, and reports nothing for
    # transports or clients that the user passed in or that have another
    # engine (`_pool_use` reads a given AiohttpTransport itself).
    transports: list[object] = []
    if offloader._owns_transport:
        transports.append(offloader._transport)
    if offloader._owns_async_transport:
        # One pool per event loop that has offloaded.
        transports += list(offloader._loop_transports.values())
    for transport in transports:
        # Our async transports spread their connections over shards.
        for shard in getattr(transport, "shards", (transport,)):
            pool: Any = getattr(shard, "_pool", None)
            yield from getattr(pool, "connections", ())


@attrs.define
class MetricsServer:
    """A running metrics endpoint; `close` stops it.

    Attributes:
        host: The address it listens on.
        port: The port it listens on (the real one when 0 was asked).
    """

    host: str
    port: int
    _server: WSGIServer = attrs.field(repr=False)
    _thread: threading.Thread = attrs.field(repr=False)

    @property
    def url(self) -> str:
        """The URL to scrape."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and wait for the server thread to end."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_metrics_server(
    host: str = "127.0.0.1",
    port: int = 9100,
    registry: CollectorRegistry | None = None,
) -> MetricsServer:
    """Serve *registry* for Prometheus on ``http://HOST:PORT/metrics``.

    The server runs in a daemon thread (prometheus-client's own), apart
    from the proxy's event loop, so a busy loop does not delay a scrape.

    Args:
        host: The address to listen on; loopback by default.
        port: The port; 0 picks a free one (see `MetricsServer.port`).
        registry: The registry to serve; prometheus-client's global one
            by default.

    Returns:
        The running server.
    """
    server, thread = prometheus_client.start_http_server(
        port,
        addr=host,
        registry=prometheus_client.REGISTRY if registry is None else registry,
    )
    return MetricsServer(host, server.server_port, server, thread)


#: The environment variable that puts prometheus-client in its
#: multiprocess mode (read when a process first imports it).
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def serving_metrics(
    host: str, port: int, *, workers: int = 1
) -> Iterator[MetricsServer]:
    """Serve the metrics of a proxy run in this process or its workers.

    With one worker, the proxy runs in this process: the global registry
    is served. With several, prometheus-client's multiprocess mode is
    switched on for the worker processes started inside the block: each
    writes its metrics to files in a temporary directory, and this
    process adds them up at each scrape.

    Limitation: in multiprocess mode, gauges read at scrape time
    (``offloader_offloads_limit``, ``offloader_pool_connections``) are not
    reported, and a worker that dies leaves its last in-flight count
    behind until the command restarts.

    Args:
        host: The address to listen on.
        port: The port to listen on.
        workers: How many worker processes will run the proxy.
    """
    if workers <= 1:
        with start_metrics_server(host, port) as server:
            yield server
        return
    with tempfile.TemporaryDirectory(prefix="offloader-metrics-") as path:
        previous = os.environ.get(MULTIPROCESS_ENV)
        os.environ[MULTIPROCESS_ENV] = path
        try:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                registry, path=path
            )
            with start_metrics_server(host, port, registry) as server:
                yield server
        finally:
            if previous is None:
                del os.environ[MULTIPROCESS_ENV]
            else:
                os.environ[MULTIPROCESS_ENV] = previous
