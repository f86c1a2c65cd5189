"""Connect your own metrics or tracing to an offloader's events.

An observer is any callable taking an `OffloadEvent`: ``start`` when the
offload request is about to go out, then ``finish`` after the last byte
of the offload response, or ``error``. Run it with
``python examples/observer.py``.
"""

from __future__ import annotations

import httpx
from _servers import loopback_servers

from offloader import Offloader, OffloadError, OffloadEvent
from offloader.hooks.httpx import hooks


# --8<-- [start:observer]
def print_event(event: OffloadEvent) -> None:
    """Runs inline on the request path: keep it quick, never block."""
    if event.kind == "start":
        print(f"start  {event.method} {event.url}")
    elif event.kind == "finish":
        print(
            f"finish {event.status_code}, {event.bytes_received} bytes"
            f" in {event.duration:.3f}s"
        )
    elif event.kind == "refuse":  # refused before it started
        print(f"refuse {type(event.error).__name__}")
    else:
        print(
            f"error  {type(event.error).__name__} after {event.duration:.3f}s"
        )


# --8<-- [end:observer]


def main() -> None:
    # --8<-- [start:connect]
    offloader = Offloader(observers=[print_event])
    # --8<-- [end:connect]
    bound = hooks(offloader)
    with (
        loopback_servers() as servers,
        offloader,
        httpx.Client(event_hooks={"response": [bound.response_hook]}) as c,
    ):
        c.get(f"{servers.backend}/report").read()
        for path in ("/unreachable", "/broken"):
            try:
                c.get(f"{servers.backend}{path}")
            except OffloadError as exc:
                print(f"raised {type(exc).__name__}")
        c.get(f"{servers.backend}/hello")  # no offload: no event


if __name__ == "__main__":
    main()
