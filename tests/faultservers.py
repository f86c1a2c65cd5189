"""Raw-socket loopback servers that misbehave on purpose.

Each `RawServer` listens on a loopback address and a free port, runs a
*behaviour* in a thread per connection, and counts what it saw: the
connections it accepted and the bytes it received. Behaviours speak just
enough HTTP/1.1 by hand to break it at a chosen point, which a
well-behaved framework such as uvicorn would never do.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import httpx

from offloader import Offloader
from offloader.hooks.httpx import (
    AsyncOffloadTransport,
    OffloadTransport,
    hooks,
)

__all__ = [
    "MODES",
    "Behaviour",
    "Outcome",
    "RawServer",
    "call",
    "closed_port",
    "closes_reused",
    "directing_backend",
    "raw_server",
    "read_head",
    "reset",
]

#: A behaviour receives the accepted socket, the bytes read so far, and
#: the server (for its counters and its stop event).
Behaviour = Callable[[socket.socket, "RawServer"], None]


class RawServer:
    """A threaded TCP server on loopback; see `raw_server`."""

    def __init__(
        self, behaviour: Behaviour, host: str, port: int, rcvbuf: int = 0
    ) -> None:
        self.behaviour = behaviour
        self.host = host
        self.accepted = 0
        self.received = 0
        self.closed = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            # Accepted sockets inherit a small receive buffer, so that a
            # server that stops reading stalls its peer quickly.
            self._listener.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf
            )
        self._listener.bind((host, port))
        self._listener.listen(512)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        # Live connections and their threads only, so that a long soak
        # does not keep a record of every connection it ever served.
        self._threads: set[threading.Thread] = set()
        self._conns: set[socket.socket] = set()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def count_received(self, n: int) -> None:
        with self._lock:
            self.received += n

    def recv(self, conn: socket.socket, size: int = 65536) -> bytes:
        """Receive from *conn*, counting the bytes; b"" on EOF or error."""
        try:
            data = conn.recv(size)
        except OSError:
            return b""
        self.count_received(len(data))
        return data

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(
                target=self._run, args=(conn,), daemon=True
            )
            with self._lock:
                self.accepted += 1
                self._conns.add(conn)
                self._threads.add(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.behaviour(conn, self)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self.closed += 1
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    def stop(self) -> None:
        self.stopping.set()
        self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)


@contextlib.contextmanager
def raw_server(
    behaviour: Behaviour,
    host: str = "127.0.0.1",
    port: int = 0,
    rcvbuf: int = 0,
) -> Iterator[RawServer]:
    """Run *behaviour* for each connection to a loopback server, on
    *port* or a free one; *rcvbuf* sets a receive buffer size."""
    server = RawServer(behaviour, host, port, rcvbuf)
    try:
        yield server
    finally:
        server.stop()


def closed_port(host: str = "127.0.0.1") -> int:
    """Return a port on *host* where nothing listens (connections are
    refused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def read_head(conn: socket.socket, server: RawServer) -> bytes:
    """Read a request head, up to the blank line; b"" if the peer left."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = server.recv(conn)
        if not chunk:
            return b""
        data += chunk
    return data


def reset(conn: socket.socket) -> None:
    """Close *conn* with a TCP reset instead of an orderly FIN."""
    conn.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    conn.close()


# -- behaviours ---------------------------------------------------------------


def silent(conn: socket.socket, server: RawServer) -> None:
    """Read whatever comes until the peer leaves; never answer."""
    while server.recv(conn):
        pass


def reset_before_headers(conn: socket.socket, server: RawServer) -> None:
    """Read the request head, then reset the connection."""
    read_head(conn, server)
    reset(conn)


def reset_after_headers(conn: socket.socket, server: RawServer) -> None:
    """Send the head and part of a body, then reset the connection."""
    read_head(conn, server)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100
    )
    time.sleep(0.05)
    reset(conn)


def truncated_body(conn: socket.socket, server: RawServer) -> None:
    """Promise 1000 bytes, send 100, close cleanly (FIN)."""
    read_head(conn, server)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 100
    )
    conn.shutdown(socket.SHUT_WR)


def trickle(interval: float = 1.0, size: int = 1000) -> Behaviour:
    """Send a head, then one body byte every *interval* seconds."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        read_head(conn, server)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        conn.settimeout(interval)
        for _ in range(size):
            if _peer_left(conn, server):
                return
            conn.sendall(b"z")

    return behaviour


def _peer_left(conn: socket.socket, server: RawServer) -> bool:
    """Wait one timeout of *conn* for the peer to close; True if it did
    (or the server is stopping). Nothing is consumed."""
    if server.stopping.is_set():
        return True
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except TimeoutError:
        return False


def trickle_head(interval: float = 1.0) -> Behaviour:
    """Send the response head one byte every *interval* seconds."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        read_head(conn, server)
        conn.settimeout(interval)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
            if _peer_left(conn, server):
                return
            conn.sendall(bytes([byte]))

    return behaviour


def never_reads_body(conn: socket.socket, server: RawServer) -> None:
    """Read only the request head and hold the connection, never reading
    the body, until the peer leaves or the server stops."""
    read_head(conn, server)
    # Nothing more is read: the client's send buffer fills up and its
    # writes stall, as with a real stuck server. poll() tells when the
    # peer has gone even though unread data is pending.
    poller = select.poll()
    gone = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)
    poller.register(conn, gone)
    while not server.stopping.is_set():
        if poller.poll(50):
            return


def answers_without_reading(conn: socket.socket, server: RawServer) -> None:
    """Answer at once without reading the request body, then close."""
    read_head(conn, server)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n"
        b"\r\nearly"
    )
    conn.shutdown(socket.SHUT_WR)
    time.sleep(0.2)


def ok(body: bytes = b"ok", extra: bytes = b"") -> Behaviour:
    """Answer every request on the connection with 200 and *body*."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        while read_head(conn, server):
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s"
                % (len(body), extra, body)
            )

    return behaviour


def closes_reused(orderly: bool = True, first: bool = False) -> Behaviour:
    """Answer the first request of each connection with 200 and keep the
    connection open; when the next request's head arrives, close without
    answering it: the moment a server's keep-alive timeout closes an idle
    connection just as a request goes out on it. *orderly* closes with a
    FIN, otherwise with a reset; *first* fails the first request too."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        head = read_head(conn, server)
        if not head:
            return
        if not first:
            body = b"" if head.startswith(b"HEAD ") else b"ok"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + body
            )
            if not read_head(conn, server):
                return
        if orderly:
            conn.shutdown(socket.SHUT_RDWR)
        else:
            reset(conn)

    return behaviour


def records_request(log: list[bytes]) -> Behaviour:
    """Read a request with its Content-Length body; append the body to
    *log* only when it arrived whole, then answer 200."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        data = read_head(conn, server)
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = server.recv(conn)
            if not chunk:
                return
            body += chunk
        log.append(body)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    return behaviour


def truncated_forward(target: str) -> Behaviour:
    """A backend that asks for its body to be forwarded to *target*,
    promises 100,000 bytes of it and closes after 1,000."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        read_head(conn, server)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nOffload-Requested: 1\r\n"
            b"Offload-Url: %s\r\nOffload-Method: POST\r\n"
            b"Offload-Forward-Body: 1\r\nContent-Length: 100000\r\n\r\n"
            % target.encode()
            + b"b" * 1000
        )
        time.sleep(0.1)
        conn.shutdown(socket.SHUT_WR)

    return behaviour


# -- a backend and the four ways of calling through the core ----------------


async def directing_backend(
    scope: dict[str, Any], receive: Any, send: Any
) -> None:
    """A backend (ASGI) that offloads as its request headers say.

    ``X-Target`` is the offload URL, ``X-Method`` its method,
    ``X-Forward: N`` forwards an N-byte body of ``f`` bytes, and
    ``X-Timeout`` sets ``Offload-Timeout``. ``X-Extra: name=value``
    adds any response header. ``X-Delay: S`` waits S seconds first, and
    ``X-Plain`` answers without offloading.
    """
    assert scope["type"] == "http"
    asked = {name.lower(): value for name, value in scope["headers"]}
    if b"x-delay" in asked:
        await asyncio.sleep(float(asked[b"x-delay"]))
    if b"x-plain" in asked:
        # No offload asked, but stray directive headers that name an
        # internal URL: a proxy must not relay them.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"offload-url", b"http://internal.example/secret"),
                    (b"offload-method", b"POST"),
                    (b"content-length", b"5"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"plain"})
        return
    headers = [
        (b"offload-requested", b""),
        (b"offload-url", asked.get(b"x-target", b"")),
    ]
    if b"x-method" in asked:
        headers.append((b"offload-method", asked[b"x-method"]))
    if b"x-timeout" in asked:
        headers.append((b"offload-timeout", asked[b"x-timeout"]))
    if b"x-extra" in asked:
        name, _, value = asked[b"x-extra"].partition(b"=")
        headers.append((name, value))
    size = int(asked.get(b"x-forward", b"-1"))
    if size < 0:
        body_chunks = [b"backend"]
    else:
        headers.append((b"offload-forward-body", b"1"))
        headers.append((b"content-type", b"application/octet-stream"))
        chunk = b"f" * 65536
        body_chunks = [chunk] * (size // len(chunk))
        body_chunks.append(b"f" * (size % len(chunk)))
    total = sum(len(chunk) for chunk in body_chunks)
    headers.append((b"content-length", str(total).encode()))
    await send(
        {"type": "http.response.start", "status": 200, "headers": headers}
    )
    for chunk in body_chunks:
        await send(
            {"type": "http.response.body", "body": chunk, "more_body": True}
        )
    await send({"type": "http.response.body", "body": b""})


MODES = ("sync-hook", "async-hook", "sync-transport", "async-transport")


@attrs.define
class Outcome:
    """What a caller got: a response (maybe with a broken body) or an
    error before any response."""

    status: int | None = None
    headers: httpx.Headers | None = None
    body: bytes = b""
    error: BaseException | None = None
    body_error: BaseException | None = None


def _record(outcome: Outcome, response: httpx.Response) -> None:
    outcome.status = response.status_code
    outcome.headers = response.headers


def call(
    mode: str,
    url: str,
    headers: dict[str, str] | None = None,
    offloader: Offloader | None = None,
    **options: Any,
) -> Outcome:
    """Send GET *url* through the core adapter *mode* and read it all.

    A new `Offloader(**options)` is made and closed unless *offloader*
    is given.
    """
    if mode.startswith("async"):
        return asyncio.run(_acall(mode, url, headers, offloader, options))
    outcome = Outcome()
    owned = offloader is None
    offloader = offloader or Offloader(**options)
    if mode == "sync-hook":
        bound = hooks(offloader)
        client = httpx.Client(event_hooks={"response": [bound.response_hook]})
    else:
        client = httpx.Client(
            transport=OffloadTransport(httpx.HTTPTransport(), offloader)
        )
    try:
        with client, client.stream("GET", url, headers=headers) as response:
            _record(outcome, response)
            try:
                outcome.body = response.read()
            except Exception as exc:
                outcome.body_error = exc
    except Exception as exc:
        outcome.error = exc
    finally:
        if owned:
            offloader.close()
    return outcome


async def _acall(
    mode: str,
    url: str,
    headers: dict[str, str] | None,
    offloader: Offloader | None,
    options: dict[str, Any],
) -> Outcome:
    outcome = Outcome()
    owned = offloader is None
    offloader = offloader or Offloader(**options)
    if mode == "async-hook":
        bound = hooks(offloader)
        client = httpx.AsyncClient(
            event_hooks={"response": [bound.async_response_hook]}
        )
    else:
        client = httpx.AsyncClient(
            transport=AsyncOffloadTransport(
                httpx.AsyncHTTPTransport(), offloader
            )
        )
    try:
        async with (
            client,
            client.stream("GET", url, headers=headers) as response,
        ):
            _record(outcome, response)
            try:
                outcome.body = await response.aread()
            except Exception as exc:
                outcome.body_error = exc
    except Exception as exc:
        outcome.error = exc
    finally:
        if owned:
            await offloader.aclose()
    return outcome


def replies(raw: bytes) -> Behaviour:
    """Answer each request head with the bytes *raw*, verbatim, then
    close."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        if read_head(conn, server):
            conn.sendall(raw)
            conn.shutdown(socket.SHUT_WR)
            _peer_left(conn, server)

    return behaviour


def records_raw(log: list[bytes], raw: bytes) -> Behaviour:
    """Record each whole request, head and body, verbatim in *log*, and
    answer with the bytes *raw*, then close."""

    def behaviour(conn: socket.socket, server: RawServer) -> None:
        data = read_head(conn, server)
        head, _, body = data.partition(b"\r\n\r\n")
        lowered = head.lower()
        length = 0
        for line in lowered.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip() == b"content-length":
                length = int(value)
        chunked = b"transfer-encoding" in lowered
        while (
            not body.endswith(b"0\r\n\r\n") if chunked else len(body) < length
        ):
            chunk = server.recv(conn)
            if not chunk:
                return
            body += chunk
        log.append(head + b"\r\n\r\n" + body)
        conn.sendall(raw)
        conn.shutdown(socket.SHUT_WR)
        _peer_left(conn, server)

    return behaviour
