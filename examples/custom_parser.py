"""Write a directive parser of your own and chain it with the default one.

This backend asks for an offload with one header of its own,
``X-Defer-To: <url>``. A parser is any object with a ``parse(headers)``
method (the `offloader.DirectiveParser` protocol). Run it with
``python examples/custom_parser.py``.
"""

from __future__ import annotations

import httpx
from _servers import loopback_servers

from offloader import (
    DirectiveParser,
    HeadersInput,
    OffloadDirective,
    Offloader,
    OffloadHeaderParser,
)
from offloader.hooks.httpx import OffloadTransport


# --8<-- [start:parser]
class DeferToParser:
    """Reads ``X-Defer-To: <url>``: a GET of that URL."""

    # Headers with these prefixes never reach the client.
    header_prefixes = ("x-defer-",)

    def parse(self, headers: HeadersInput) -> OffloadDirective | None:
        # httpx.Headers reads every shape a parser may be given.
        urls = httpx.Headers(headers).get_list("x-defer-to")
        if not urls:
            return None
        # OffloadDirective validates itself: a bad URL raises
        # InvalidDirective, which a proxy answers with 502.
        return OffloadDirective(url=urls[-1].strip(), method="GET")


# --8<-- [end:parser]


# --8<-- [start:use]
def main() -> None:
    parser: DirectiveParser = DeferToParser()
    offloader = Offloader(parsers=[OffloadHeaderParser(), parser])
    transport = OffloadTransport(offloader=offloader)
    with (
        loopback_servers() as servers,
        offloader,
        httpx.Client(transport=transport) as client,
    ):
        deferred = client.get(f"{servers.backend}/deferred")
        print(deferred.status_code, deferred.text.strip())
        # The Offload-* headers still work through the same chain.
        report = client.get(f"{servers.backend}/report")
        print(report.status_code, report.text.strip())
        print("X-Defer-To" in deferred.headers)


# --8<-- [end:use]


if __name__ == "__main__":
    main()
