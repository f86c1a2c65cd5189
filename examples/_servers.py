"""Loopback servers the examples talk to: a backend and an offload server.

The *backend* plays an application with few workers. Its slow endpoints
answer at once with ``Offload-*`` headers (or ``X-Accel-Redirect``) and
let whatever sits in front of it make the slow call:

- ``GET /hello``: a plain answer, no offload.
- ``GET /report``: asks for ``GET <offload server>/reports/42?format=txt``
  with an ``Api-Key`` header.
- ``POST /shout``: forwards its own JSON body with ``POST`` to
  ``<offload server>/shout``.
- ``GET /download``: answers ``X-Accel-Redirect: /protected/report.txt``,
  as it would behind NGINX.
- ``GET /deferred``: asks for an offload with a header of its own,
  ``X-Defer-To: <offload server>/reports/7``.
- ``GET /unreachable``: asks for an offload from a port where nothing
  listens (127.0.0.1:9), so the offload request fails.
- ``GET /broken``: asks for an offload with a method the contract does
  not allow, ``DELETE``: an invalid directive.

The *offload server* plays the slow service. Both are Python's standard
``http.server`` on 127.0.0.1 and a free port, in daemon threads, so the
examples need nothing but offloader itself.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import attrs

__all__ = ["LoopbackServers", "loopback_servers"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Keep the examples' output to what they print themselves."""

    def answer(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length)


class _OffloadServerHandler(_Handler):
    """The slow service: reports and a shouting echo."""

    def do_GET(self) -> None:
        key = self.headers.get("Api-Key", "none")
        self.answer(
            200,
            f"report for {self.path} (api key: {key})\n".encode(),
            {"Content-Type": "text/plain", "X-Served-By": "offload-server"},
        )

    def do_POST(self) -> None:
        received = json.loads(self.read_body())
        content_type = self.headers.get("Content-Type", "none")
        answer = {
            "shouted": received["text"].upper(),
            "content_type": content_type,
        }
        self.answer(
            201,
            json.dumps(answer).encode(),
            {"Content-Type": "application/json"},
        )


# --8<-- [start:backend]
class _BackendHandler(_Handler):
    """The application: answers at once, the slow work is offloaded."""

    offload_url: str  # the slow service's base URL, set by the server

    def do_GET(self) -> None:
        if self.path == "/report":
            self.answer(
                200,
                b"",
                {
                    "Offload-Requested": "true",
                    "Offload-Url": f"{self.offload_url}/reports/42?format=txt",
                    "Offload-X-Api-Key": "secret-key",
                },
            )
        elif self.path == "/download":
            self.answer(
                200, b"", {"X-Accel-Redirect": "/protected/report.txt"}
            )
        elif self.path == "/unreachable":
            self.answer(
                200,
                b"",
                {
                    "Offload-Requested": "true",
                    "Offload-Url": "http://127.0.0.1:9/nothing-here",
                },
            )
        elif self.path == "/broken":
            self.answer(
                200,
                b"",
                {
                    "Offload-Requested": "true",
                    "Offload-Url": f"{self.offload_url}/reports/1",
                    "Offload-Method": "DELETE",
                },
            )
        elif self.path == "/deferred":
            self.answer(
                200, b"", {"X-Defer-To": f"{self.offload_url}/reports/7"}
            )
        else:
            self.answer(200, b"hello from the backend\n")

    def do_POST(self) -> None:
        body = self.read_body()
        self.answer(
            200,
            body,
            {
                "Content-Type": "application/json",
                "Offload-Requested": "",
                "Offload-Url": f"{self.offload_url}/shout",
                "Offload-Method": "POST",
                "Offload-Forward-Body": "1",
            },
        )


# --8<-- [end:backend]


@attrs.frozen
class LoopbackServers:
    """The base URLs of the running backend and offload server."""

    backend: str
    offload_server: str


@contextlib.contextmanager
def _running(server: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def loopback_servers() -> Iterator[LoopbackServers]:
    """Run a backend and an offload server on 127.0.0.1 until the end."""
    offload_server = ThreadingHTTPServer(
        ("127.0.0.1", 0), _OffloadServerHandler
    )
    with _running(offload_server) as offload_url:
        handler = type(
            "BackendHandler", (_BackendHandler,), {"offload_url": offload_url}
        )
        backend = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        with _running(backend) as backend_url:
            yield LoopbackServers(backend_url, offload_url)
