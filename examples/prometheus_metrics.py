"""Count offloads with Prometheus and serve the metrics for scraping.

Needs the ``metrics`` extra: ``pip install "offloader[metrics]"``. Run it
with ``python examples/prometheus_metrics.py``: it makes a few offloads,
one of them refused by the destination policy, then scrapes its own
metrics endpoint and prints the offloader's lines.
"""

from __future__ import annotations

import logging

import httpx
from _servers import loopback_servers
from prometheus_client import CollectorRegistry

from offloader import DestinationPolicy, Offloader, OffloadError
from offloader.hooks.httpx import hooks
from offloader.metrics import PrometheusObserver, start_metrics_server


def main() -> None:
    # --8<-- [start:logging]
    # The offloader logs one INFO line per offload and a WARNING per
    # failure; httpx's own request lines stay out at WARNING.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("offloader").setLevel(logging.INFO)
    # --8<-- [end:logging]

    # --8<-- [start:setup]
    registry = CollectorRegistry()  # or leave out: the global registry
    observer = PrometheusObserver(registry)
    offloader = Offloader(observers=[observer], max_offloads=500)
    observer.watch(offloader)  # adds the limit and pool gauges
    metrics = start_metrics_server("127.0.0.1", 0, registry)
    # --8<-- [end:setup]

    # A second offloader shares the observer; its policy refuses every
    # destination but one host, so its offload fails.
    strict = Offloader(
        observers=[observer], policy=DestinationPolicy(hosts=["files.test"])
    )
    client = httpx.Client(
        event_hooks={"response": [hooks(offloader).response_hook]}
    )
    strict_client = httpx.Client(
        event_hooks={"response": [hooks(strict).response_hook]}
    )
    with (
        loopback_servers() as servers,
        metrics,
        offloader,
        strict,
        client,
        strict_client,
    ):
        for _ in range(3):
            client.get(f"{servers.backend}/report")
        client.post(f"{servers.backend}/shout", json={"text": "hi"})
        try:
            strict_client.get(f"{servers.backend}/report")
        except OffloadError as exc:
            print("refused:", type(exc).__name__, exc.status_code)

        # --8<-- [start:scrape]
        scraped = httpx.get(metrics.url).text
        for line in scraped.splitlines():
            if line.startswith("offloader_") and "_bucket" not in line:
                print(line)
        # --8<-- [end:scrape]


if __name__ == "__main__":
    main()
