"""Decide where offloads may go, with a `DestinationPolicy`.

The scheme, host and port are checked on the URL; the address rules on
every address the host resolves to, before a byte is sent. Run it with
``python examples/destination_policy.py``: it checks a few URLs, then
shows an offload to a loopback address refused by ``block_private``.
"""

from __future__ import annotations

import httpx
from _servers import loopback_servers

from offloader import DestinationPolicy, DestinationRefused, Offloader
from offloader.hooks.httpx import hooks


def main() -> None:
    # --8<-- [start:policy]
    offloader = Offloader(
        policy=DestinationPolicy(
            hosts=["*.svc.internal", "api.example.com"],
            ports=[80, 443],
            block_private=True,
            allow_networks=["10.20.0.0/16"],  # where *.svc.internal lives
        )
    )
    # --8<-- [end:policy]

    for url in (
        "https://api.example.com/v1/report",
        "http://reports.svc.internal/r/42",
        "http://evil.example.net/",  # not an allowed host
        "http://api.example.com:8080/",  # not an allowed port
        "file:///etc/passwd",  # not http or https
    ):
        try:
            offloader.policy.check(httpx.URL(url))
            print("allowed:", url)
        except DestinationRefused as exc:
            print("refused:", exc)
    offloader.close()

    # Loopback is not public: with block_private, an offload there is
    # refused when its address is checked, before anything is sent.
    guarded = Offloader(policy=DestinationPolicy(block_private=True))
    bound = hooks(guarded)
    with (
        loopback_servers() as servers,
        guarded,
        httpx.Client(event_hooks={"response": [bound.response_hook]}) as c,
    ):
        try:
            c.get(f"{servers.backend}/report")
        except DestinationRefused as exc:
            print("refused:", exc)


if __name__ == "__main__":
    main()
