"""Move a backend written for NGINX's ``X-Accel-Redirect`` unchanged.

The backend answers ``X-Accel-Redirect: /protected/report.txt``. Where
NGINX had an ``internal`` location for ``/protected/``, the parser maps
that prefix to a base URL. Run it with
``python examples/x_accel_redirect.py``.
"""

from __future__ import annotations

import httpx
from _servers import loopback_servers

from offloader import Offloader, XAccelRedirectParser
from offloader.hooks.httpx import hooks


# --8<-- [start:parser]
def download(backend: str, file_store: str) -> None:
    parser = XAccelRedirectParser({"/protected/": f"{file_store}/files/"})
    with Offloader(parsers=[parser]) as offloader:
        bound = hooks(offloader)
        with httpx.Client(
            event_hooks={"response": [bound.response_hook]}
        ) as client:
            response = client.get(f"{backend}/download")
            print(response.status_code, response.text.strip())
            print("X-Accel-Redirect" in response.headers)


# --8<-- [end:parser]


def main() -> None:
    with loopback_servers() as servers:
        download(servers.backend, servers.offload_server)


if __name__ == "__main__":
    main()
