"""Real HTTP servers on loopback for the tests.

`serve` runs any ASGI application under a real uvicorn in a background
thread, on 127.0.0.1 and a free port, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


class RunningServer:
    """A uvicorn server running in a thread; `url` is its base URL."""

    def __init__(self, server: uvicorn.Server, port: int) -> None:
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @property
    def open_connections(self) -> int:
        """Connections the server holds open right now."""
        return len(self.server.server_state.connections)


@contextlib.contextmanager
def serve(app: Any, **config: Any) -> Iterator[RunningServer]:
    """Serve *app* with uvicorn on 127.0.0.1 until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config.setdefault("log_level", "warning")
    config.setdefault("lifespan", "off")
    server = uvicorn.Server(uvicorn.Config(app, **config))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.005)
    try:
        yield RunningServer(server, port)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
