"""Soak the proxy: many requests mixing successes and every fault.

Run with ``nox -s soak`` (or ``python -m tests.soak`` from the
repository root). It is not part of the test suite: it takes minutes.

Three processes, all on 127.0.0.1: a backend (uvicorn), the proxy
(uvicorn serving `OffloadProxy`, with a stats endpoint of its own), and
this driver, which also runs the misbehaving offload servers of
`tests.faultservers` in threads. The driver sends the requests from
many concurrent workers, checks each answer against what its kind must
give, then lets the proxy go idle and compares its file descriptors,
asyncio tasks, pooled connections and memory with the baseline taken
after a warm-up. It prints the figures and exits 1 if any request was
answered wrongly or the proxy did not come back to its baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx

from offloader import DestinationPolicy, Offloader
from offloader.hooks.aiohttp import AiohttpTransport
from offloader.hooks.asgi import (
    DEFAULT_BACKEND_LIMITS,
    DEFAULT_OFFLOAD_LIMITS,
    OffloadProxy,
)
from tests.faultservers import (
    closed_port,
    directing_backend,
    never_reads_body,
    raw_server,
    reset_after_headers,
    reset_before_headers,
    silent,
    trickle,
    truncated_body,
)

STATS_PATH = "/__soak__/stats"
FORWARDED = 16 * 1024
STUCK_BODY = 2 * 1024 * 1024

#: Kinds of request and how many of each in a thousand.
WEIGHTS = {
    "offload": 560,
    "offload_forward": 60,
    "pass_through": 100,
    "refused": 40,
    "policy_refused": 20,
    "reset_before_headers": 40,
    "reset_after_headers": 40,
    "truncated_offload_body": 40,
    "truncated_backend_body": 20,
    "never_reads_body": 5,
    "trickle_past_deadline": 15,
    "disconnect": 50,
    "slow_loris": 10,
}
FAULTS = set(WEIGHTS) - {"offload", "offload_forward", "pass_through"}
DISCONNECT_STAGES = (
    "partial head",
    "partial body",
    "backend thinking",
    "offload waiting",
    "offload relaying",
)


# -- the backend process ----------------------------------------------------


async def backend_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The soak's backend: `directing_backend`, an ``/ok`` endpoint that
    plays a well-behaved offload server, and ``X-Break``, a forwarded
    body that breaks off after 1,000 of its 100,000 bytes."""
    if scope["type"] != "http":
        return
    asked = dict(scope["headers"])
    if scope["path"] == "/ok":
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"ok:%d" % size
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", b"%d" % len(body)),
                    (b"offload-requested", b"ignored"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    if b"x-break" in asked:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"offload-requested", b""),
                    (b"offload-url", asked[b"x-target"]),
                    (b"offload-method", b"POST"),
                    (b"offload-forward-body", b""),
                    (b"content-length", b"100000"),
                ],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"b" * 1000,
                "more_body": True,
            }
        )
        raise RuntimeError("the backend breaks off its body on purpose")
    await directing_backend(scope, receive, send)


def run_backend(port: int) -> None:
    import uvicorn

    uvicorn.run(
        backend_app,
        host="127.0.0.1",
        port=port,
        log_level="critical",
        lifespan="off",
        timeout_keep_alive=5,
    )


# -- the proxy process ------------------------------------------------------


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_connections(transport: object) -> dict[str, Any]:
    """Pooled connections that are open, and those of them in use."""
    if isinstance(transport, AiohttpTransport):
        return _aiohttp_connections(transport)
    connections = [
        connection
        for shard in getattr(transport, "shards", (transport,))
        for connection in getattr(
            getattr(shard, "_pool", None), "connections", ()
        )
    ]
    live = [
        c for c in connections if not c.is_closed() and not c.has_expired()
    ]
    return {
        "busy_connections": [repr(c) for c in live if not c.is_idle()],
        "pooled": len(connections),
        "live": len(live),
        "busy": sum(1 for c in live if not c.is_idle()),
    }


def _aiohttp_connections(transport: AiohttpTransport) -> dict[str, Any]:
    """The same figures for the aiohttp engine: its idle connections, and
    those handed out to requests (private parts of aiohttp's
    connector, read for this report only)."""
    session = transport._session
    connector = getattr(session, "connector", None)
    # aiohttp drops a connection the server closed from its idle lists
    # only on its next look at them: count the open ones as live.
    idle = [
        protocol
        for entries in getattr(connector, "_conns", {}).values()
        for protocol, _ in entries
    ]
    connected = sum(1 for protocol in idle if protocol.is_connected())
    busy = transport._in_use
    return {
        "busy_connections": [],
        "pooled": len(idle) + busy,
        "live": connected + busy,
        "busy": busy,
    }


def run_proxy(port: int, backend: str, log_path: str, engine: str) -> None:
    import logging

    import uvicorn

    # Every injected fault logs a warning: they go to a file, which the
    # driver sums up, so that the soak's output stays its figures.
    logger = logging.getLogger("offloader")
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    policy = DestinationPolicy(hosts=["127.0.0.1"])
    if engine == "aiohttp":
        offload_transport = AiohttpTransport(
            limits=DEFAULT_OFFLOAD_LIMITS, policy=policy
        )
        offloader = Offloader(
            policy=policy, deadline=10.0, async_transport=offload_transport
        )
        proxy = OffloadProxy(
            backend,
            offloader=offloader,
            backend_transport=AiohttpTransport(limits=DEFAULT_BACKEND_LIMITS),
        )
    else:
        offloader = Offloader(policy=policy, deadline=10.0)
        proxy = OffloadProxy(backend, offloader=offloader)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == STATS_PATH:
            # Expired keep-alive connections keep their socket until the
            # pool is next used: close them, so that the figures count
            # what the proxy really holds.
            offload_pool = (
                offloader._async_transport
                if engine == "httpx"
                else offload_transport
            )
            for transport in (offload_pool, proxy.backend_transport):
                for shard in getattr(transport, "shards", (transport,)):
                    pool = getattr(shard, "_pool", None)
                    for connection in list(getattr(pool, "connections", ())):
                        if connection.has_expired():
                            await connection.aclose()
            gc.collect()
            stats = {
                "fds": _fd_count(),
                "tasks": len(asyncio.all_tasks()),
                "active": proxy.active,
                "in_flight": offloader.in_flight,
                "offload_pool": _live_connections(offload_pool),
                "backend_pool": _live_connections(proxy.backend_transport),
                "rss": _rss(),
                "blocks": sys.getallocatedblocks(),
            }
            body = json.dumps(stats).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await proxy(scope, receive, send)

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="critical",
        lifespan="on",
        timeout_keep_alive=5,
        backlog=4096,
    )


# -- the driver -------------------------------------------------------------


def say(text: str = "", flush: bool = True) -> None:
    """Print a line of the soak's report."""
    sys.stdout.write(text + "\n")
    if flush:
        sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class Soak:
    """The driver's state: targets, counters, and the wrong answers."""

    def __init__(self, proxy_port: int, backend_port: int) -> None:
        self.proxy = f"http://127.0.0.1:{proxy_port}"
        self.proxy_port = proxy_port
        self.ok = f"http://127.0.0.1:{backend_port}/ok"
        self.targets: dict[str, str] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.seconds: collections.defaultdict[str, float] = (
            collections.defaultdict(float)
        )
        self.wrong: list[str] = []
        self.random = random.Random(20261203)  # noqa: S311 - not crypto
        self.kinds = list(WEIGHTS)
        self.weights = list(WEIGHTS.values())

    def pick(self) -> str:
        return self.random.choices(self.kinds, self.weights)[0]

    def fail(self, kind: str, what: str) -> None:
        self.counts["wrong"] += 1
        if len(self.wrong) < 20:
            self.wrong.append(f"{kind}: {what}")

    async def send(self, client: httpx.AsyncClient, kind: str) -> None:
        handler: Callable[[httpx.AsyncClient, str], Awaitable[None]]
        if kind == "disconnect":
            handler = self.disconnect
        elif kind == "slow_loris":
            handler = self.slow_loris
        else:
            handler = self.exchange
        self.counts[kind] += 1
        started = time.monotonic()
        await handler(client, kind)
        self.seconds[kind] += time.monotonic() - started

    def request_headers(self, kind: str) -> dict[str, str]:
        t = self.targets
        return {
            "offload": {"X-Target": self.ok},
            "offload_forward": {
                "X-Target": self.ok,
                "X-Method": "POST",
                "X-Forward": str(FORWARDED),
            },
            "pass_through": {"X-Plain": "1"},
            "refused": {"X-Target": t["refused"]},
            "policy_refused": {"X-Target": t["elsewhere"]},
            "reset_before_headers": {"X-Target": t["reset_before"]},
            "reset_after_headers": {"X-Target": t["reset_after"]},
            "truncated_offload_body": {"X-Target": t["truncated"]},
            "truncated_backend_body": {"X-Target": self.ok, "X-Break": "1"},
            "never_reads_body": {
                "X-Target": t["stuck"],
                "X-Method": "POST",
                "X-Forward": str(STUCK_BODY),
                "X-Timeout": "0.3",
            },
            "trickle_past_deadline": {
                "X-Target": t["trickle"],
                "X-Timeout": "0.3",
            },
        }[kind]

    async def exchange(self, client: httpx.AsyncClient, kind: str) -> None:
        expected: dict[str, tuple[int, bytes] | None] = {
            "offload": (200, b"ok:0"),
            "offload_forward": (200, b"ok:%d" % FORWARDED),
            "pass_through": (200, b"plain"),
            "refused": (502, b"Bad Gateway\n"),
            "policy_refused": (502, b"Bad Gateway\n"),
            "reset_before_headers": (502, b"Bad Gateway\n"),
            "truncated_backend_body": (502, b"Bad Gateway\n"),
            "never_reads_body": (504, b"Gateway Timeout\n"),
            # These break after the response started: the client's
            # connection must be aborted.
            "reset_after_headers": None,
            "truncated_offload_body": None,
            "trickle_past_deadline": None,
        }
        # When the proxy is slow to read (the soak loads every core), a
        # fault may strike before the offload server's head was read:
        # then the clean error answer is right too.
        also: dict[str, tuple[int, bytes]] = {
            "reset_after_headers": (502, b"Bad Gateway\n"),
            "trickle_past_deadline": (504, b"Gateway Timeout\n"),
        }
        want = expected[kind]
        try:
            async with client.stream(
                "GET", self.proxy + "/", headers=self.request_headers(kind)
            ) as response:
                body = await response.aread()
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if want is not None:
                self.fail(kind, f"aborted: {exc!r}")
            return
        except httpx.HTTPError as exc:
            self.fail(kind, f"client error {exc!r}")
            return
        if any(n.lower().startswith("offload-") for n in response.headers):
            self.fail(kind, "an Offload-* header reached the client")
        if b"127.0.0.1" in body or b"internal" in body:
            self.fail(kind, f"an internal address in the body: {body!r}")
        if (response.status_code, body) == also.get(kind):
            self.counts[f"{kind}: answered before the head"] += 1
        elif want is None:
            self.fail(kind, f"finished cleanly: {response.status_code}")
        elif (response.status_code, body) != want:
            self.fail(kind, f"got {response.status_code} {body[:60]!r}")

    async def disconnect(self, client: httpx.AsyncClient, kind: str) -> None:
        stage = self.random.choice(DISCONNECT_STAGES)
        self.counts[f"disconnect: {stage}"] += 1
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.proxy_port
        )
        target = {
            "offload waiting": self.targets["silent"],
            "offload relaying": self.targets["slow"],
        }.get(stage, self.ok)
        head = b"GET / HTTP/1.1\r\nHost: soak\r\nX-Target: %s\r\n" % (
            target.encode()
        )
        try:
            if stage == "partial head":
                writer.write(head[:25])
            elif stage == "partial body":
                writer.write(
                    head.replace(b"GET", b"POST", 1)
                    + b"Content-Length: 100\r\n\r\n"
                    + b"x" * 10
                )
            elif stage == "backend thinking":
                writer.write(head + b"X-Delay: 0.3\r\n\r\n")
            else:
                writer.write(head + b"\r\n")
            await writer.drain()
            if stage == "offload relaying":
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            await asyncio.sleep(0.05)
        except (OSError, asyncio.TimeoutError) as exc:
            self.fail(kind, f"{stage}: {exc!r}")
        finally:
            writer.close()
            await _closed(writer)

    async def slow_loris(self, client: httpx.AsyncClient, kind: str) -> None:
        """Send a pass-through request head a few bytes at a time, and
        check the answer."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.proxy_port
        )
        head = (
            b"GET / HTTP/1.1\r\nHost: soak\r\nX-Plain: 1\r\n"
            b"Connection: close\r\n\r\n"
        )
        try:
            for start in range(0, len(head), 6):
                writer.write(head[start : start + 6])
                await writer.drain()
                await asyncio.sleep(0.02)
            answer = await asyncio.wait_for(reader.read(), 10)
        except (OSError, asyncio.TimeoutError) as exc:
            self.fail(kind, repr(exc))
            return
        finally:
            writer.close()
            await _closed(writer)
        if not (
            answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"plain")
        ):
            self.fail(kind, f"got {answer[:60]!r}")


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def drive(soak: Soak, total: int, workers: int, until: float) -> int:
    """Send *total* requests from *workers* workers; stop early past the
    monotonic instant *until*. Returns how many were sent."""
    sent = 0
    last_report = time.monotonic()

    async def worker() -> None:
        nonlocal sent, last_report
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(30.0), trust_env=False
        ) as client:
            while sent < total and time.monotonic() < until:
                sent += 1
                await soak.send(client, soak.pick())
                now = time.monotonic()
                if now - last_report > 10:
                    last_report = now
                    say(
                        f"  ... {sent:,} requests, "
                        f"{soak.counts['wrong']} wrong",
                        flush=True,
                    )

    await asyncio.gather(*(worker() for _ in range(workers)))
    return sent


def stats(soak: Soak) -> dict[str, Any]:
    response = httpx.get(soak.proxy + STATS_PATH, trust_env=False)
    result: dict[str, Any] = response.json()
    return result


def settle(
    soak: Soak, idle: float, baseline: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Let the proxy idle past every keep-alive expiry, then read its
    figures; with a *baseline*, read them again for up to 20 seconds
    until its file descriptors are back down to it (sockets the peers
    are still closing get their time)."""
    time.sleep(idle)
    figures = stats(soak)
    end = time.monotonic() + 20
    while baseline is not None and figures["fds"] > baseline["fds"]:
        if time.monotonic() > end:
            break
        time.sleep(1)
        figures = stats(soak)
    return figures


@contextlib.contextmanager
def processes(
    backend_port: int, proxy_port: int, log_path: str, engine: str
) -> Iterator[None]:
    """Start the backend and the proxy; stop them at the end."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    backend = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.soak",
            "--role",
            "backend",
            "--port",
            str(backend_port),
        ],
        cwd=here,
    )
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.soak",
            "--role",
            "proxy",
            "--port",
            str(proxy_port),
            "--backend",
            f"http://127.0.0.1:{backend_port}",
            "--log",
            log_path,
            "--engine",
            engine,
        ],
        cwd=here,
    )
    try:
        wait_listening(backend_port)
        wait_listening(proxy_port)
        yield
    finally:
        for process in (proxy, backend):
            process.terminate()
        for process in (proxy, backend):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def log_shapes(path: str) -> collections.Counter[str]:
    """Count the proxy's log lines by shape: numbers and paths blanked."""
    shapes: collections.Counter[str] = collections.Counter()
    with open(path, encoding="utf-8", errors="replace") as log:
        for line in log:
            shape = re.sub(r"https?://\S+|\d+(\.\d+)?", "_", line.strip())
            shapes[shape[:110]] += 1
    return shapes


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What did not come back to the baseline."""
    problems = []
    for name in ("fds", "tasks"):
        if after[name] > before[name]:
            problems.append(f"{name}: {before[name]} -> {after[name]}")
    for name in ("active", "in_flight"):
        if after[name] != 0:
            problems.append(f"{name} is {after[name]}, not 0")
    for pool in ("offload_pool", "backend_pool"):
        if after[pool]["live"] > before[pool]["live"]:
            problems.append(f"{pool}: {before[pool]} -> {after[pool]}")
        if after[pool]["busy"]:
            problems.append(f"{pool}: {after[pool]['busy']} still busy")
    # Memory: CPython keeps freed arenas, so RSS may stay a little above
    # the baseline; live Python objects (allocated blocks) must not grow
    # with the number of requests.
    if after["blocks"] > before["blocks"] * 1.10 + 10_000:
        problems.append(
            f"allocated blocks: {before['blocks']} -> {after['blocks']}"
        )
    if after["rss"] > before["rss"] + 64 * 2**20:
        problems.append(f"rss: {before['rss']} -> {after['rss']}")
    return problems


def show(label: str, figures: dict[str, Any]) -> None:
    say(
        f"{label:>9}: fds {figures['fds']}, tasks {figures['tasks']}, "
        f"active {figures['active']}, in flight {figures['in_flight']}, "
        f"offload pool pooled/live/busy "
        f"{figures['offload_pool']['pooled']}/"
        f"{figures['offload_pool']['live']}/"
        f"{figures['offload_pool']['busy']}, backend pool pooled/live/busy "
        f"{figures['backend_pool']['pooled']}/"
        f"{figures['backend_pool']['live']}/"
        f"{figures['backend_pool']['busy']}, "
        f"rss {figures['rss'] / 2**20:.1f} MiB, "
        f"allocated blocks {figures['blocks']:,}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=["driver", "backend", "proxy"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--backend")
    parser.add_argument("--log", help="where the proxy logs (proxy role)")
    parser.add_argument(
        "--engine",
        choices=["aiohttp", "httpx"],
        default="aiohttp",
        help="the proxy's engine (default: aiohttp, as offloader serve)",
    )
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=3_000)
    parser.add_argument("--workers", type=int, default=48)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=1500.0,
        help="stop sending new requests after this long",
    )
    args = parser.parse_args(argv)
    if args.role == "backend":
        run_backend(args.port)
        return 0
    if args.role == "proxy":
        run_proxy(args.port, args.backend, args.log, args.engine)
        return 0

    backend_port, proxy_port = free_port(), free_port()
    soak = Soak(proxy_port, backend_port)
    with contextlib.ExitStack() as stack:
        enter = stack.enter_context
        soak.targets = {
            "refused": f"http://127.0.0.1:{closed_port()}/r",
            "elsewhere": "http://127.0.0.2:9/",
            "reset_before": enter(raw_server(reset_before_headers)).url,
            "reset_after": enter(raw_server(reset_after_headers)).url,
            "truncated": enter(raw_server(truncated_body)).url,
            "stuck": enter(raw_server(never_reads_body, rcvbuf=4096)).url,
            "trickle": enter(raw_server(trickle(0.05, 100))).url,
            "silent": enter(raw_server(silent)).url,
            "slow": enter(raw_server(trickle(0.05, 1000))).url,
        }
        log_path = os.path.join(
            enter(tempfile.TemporaryDirectory()), "proxy.log"
        )
        enter(processes(backend_port, proxy_port, log_path, args.engine))

        say(f"warm-up: {args.warmup:,} mixed requests", flush=True)
        asyncio.run(drive(soak, args.warmup, args.workers, float("inf")))
        before = settle(soak, 6.0)
        soak.counts.clear()

        say(
            f"soak: {args.requests:,} requests, {args.workers} workers, "
            f"on the {args.engine} engine"
        )
        started = time.monotonic()
        sent = asyncio.run(
            drive(
                soak,
                args.requests,
                args.workers,
                started + args.max_seconds,
            )
        )
        elapsed = time.monotonic() - started
        after = settle(soak, 6.0, before)
        logged = log_shapes(log_path)

    faults = sum(soak.counts[kind] for kind in FAULTS)
    say()
    say(
        f"requests: {sent:,} in {elapsed:.0f} s "
        f"({sent / elapsed:,.0f} requests/s)"
    )
    say(f"faults injected: {faults:,}")
    say(f"  {'kind':<24} {'count':>7}  mean seconds")
    for kind in WEIGHTS:
        count = soak.counts[kind]
        mean = soak.seconds[kind] / count if count else 0.0
        say(f"  {kind:<24} {count:>7,}  {mean:.3f}")
    for stage in DISCONNECT_STAGES:
        key = f"disconnect: {stage}"
        say(f"    {key:<30} {soak.counts[key]:>7,}")
    for key in sorted(soak.counts):
        if key.endswith("answered before the head"):
            say(f"  {key}: {soak.counts[key]:,}")
    say(f"answered wrongly: {soak.counts['wrong']}")
    for line in soak.wrong:
        say(f"  {line}")
    say("the proxy's warnings, by kind (warm-up included):")
    for shape, count in logged.most_common(12):
        say(f"  {count:>7,}  {shape}")
    show("baseline", before)
    show("after", after)
    problems = compare(before, after)
    for problem in problems:
        say(f"NOT BACK AT BASELINE: {problem}")
    short = sent < args.requests
    if short:
        say(f"stopped at the time limit: {sent:,} of {args.requests:,}")
    ok = not problems and not soak.counts["wrong"] and not short
    say("soak passed" if ok else "soak FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
