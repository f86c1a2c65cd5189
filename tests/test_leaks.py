"""The proxy leaks nothing: after 10,000 mixed requests (successes,
errors, aborted offloads and client disconnects) its file descriptors and
asyncio tasks are back at their idle counts."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from offloader import DestinationPolicy
from offloader._netguard import POOL_SHARDS, make_async_transport
from offloader.hooks.aiohttp import AiohttpTransport
from offloader.hooks.asgi import OffloadProxy
from tests.engines import make_offloader, make_proxy
from tests.servers import serve

#: Idle pooled connections expire quickly, so that the idle state the
#: test compares against is reached in a moment. Expiring connections
#: under load also meet httpcore's race between a pass that closes an
#: expired connection and the request it was just handed to
#: (encode/httpcore#1110): the pools offloader makes keep such a
#: connection, and the backend pool here is one of them.
LIMITS = httpx.Limits(
    max_connections=1000, max_keepalive_connections=64, keepalive_expiry=0.3
)
REQUESTS = 10_000
CONCURRENCY = 16


class LoopSpy:
    """An ASGI wrapper that remembers the event loop the proxy runs on."""

    def __init__(self, app: OffloadProxy) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    def tasks(self) -> int:
        """The tasks alive on the proxy's loop, this probe aside."""
        assert self.loop is not None

        async def count() -> int:
            return len(asyncio.all_tasks()) - 1

        future = asyncio.run_coroutine_threadsafe(count(), self.loop)
        return future.result(5)


@contextlib.contextmanager
def upstreams_process() -> Iterator[tuple[str, str]]:
    """Run the backend and the offload server in a process of their own,
    so that they neither share the proxy's CPU nor count in its
    descriptors."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.upstreams", "64"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert process.stdout is not None
        backend_url, upstream_url = process.stdout.readline().split()
        yield backend_url, upstream_url
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()  # type: ignore[union-attr]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def offload_to(url: str, **extra: str) -> dict[str, str]:
    headers = {"x-reply-offload-requested": "", "x-reply-offload-url": url}
    for name, value in extra.items():
        headers["x-reply-offload-" + name.replace("_", "-")] = value
    return headers


def open_fds() -> int:
    """The file descriptors this process holds (Linux)."""
    return len(os.listdir("/proc/self/fd"))


async def settle(proxy_url: str, offload_url: str) -> None:
    """Bring the proxy to its idle state: let pooled connections expire,
    then send requests one at a time, which close them. The offloader's
    pool is split into shards; each request closes the expired
    connections of one idle shard, so enough are sent to visit them all."""
    await asyncio.sleep(LIMITS.keepalive_expiry + 0.2)  # type: ignore[operator]
    async with httpx.AsyncClient() as client:
        plain = await client.get(proxy_url + "/settle")
        offloaded = [
            await client.get(
                proxy_url + "/settle",
                headers=offload_to(offload_url + "/slow"),
            )
            for _ in range(2 * POOL_SHARDS)
        ]
    assert plain.status_code == 200
    assert {response.status_code for response in offloaded} == {200}


async def settle_until(
    proxy_url: str, offload_url: str, idle_fds: int, rounds: int = 5
) -> int:
    """Settle the proxy until it holds *idle_fds* descriptors, at most
    *rounds* times; return the last count. A pooled connection that
    expired is closed only when its pool is next used, and which pool a
    request uses depends on the load of the moment: one round may miss
    one, which is not a leak, while a leaked descriptor stays through
    every round."""
    fds = open_fds()
    for _ in range(rounds):
        await settle(proxy_url, offload_url)
        fds = await wait_for_equal(open_fds, idle_fds, timeout=2)
        if fds == idle_fds:
            break
    return fds


async def steady(measure: Callable[[], int]) -> int:
    """Poll *measure* until it reads the same ten times in a row, so that
    connections still closing do not count."""
    value, same = measure(), 0
    while same < 10:
        await asyncio.sleep(0.02)
        latest = measure()
        value, same = latest, same + 1 if latest == value else 0
    return value


async def wait_for_equal(
    measure: Callable[[], int], expected: int, timeout: float = 10
) -> int:
    """Poll *measure* until it gives *expected*; return its last value."""
    deadline = time.monotonic() + timeout
    value = measure()
    while value != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        value = measure()
    return value


#: Each kind of request: its share of the mix, and what the client sees.
MIX: dict[str, tuple[int, object]] = {
    "plain": (30, 200),
    "post": (10, 201),
    "offload": (25, 200),
    "forward": (10, 200),
    "invalid": (5, 502),
    "refused": (5, 502),
    "timeout": (5, 504),
    "truncated": (5, "RemoteProtocolError"),
    "disconnect": (5, "ReadTimeout"),
}


def requests_of(
    upstream_url: str,
) -> dict[str, tuple[str, dict[str, str], bytes | None]]:
    """Method, headers and body of each kind of request in `MIX`."""
    slow = upstream_url + "/slow"
    refused = f"http://127.0.0.1:{free_port()}/nothing"
    return {
        "plain": ("GET", {}, None),
        "post": ("POST", {"x-status": "201"}, b"x" * 3000),
        "offload": ("GET", offload_to(slow), None),
        "forward": (
            "POST",
            offload_to(slow, method="POST", forward_body=""),
            b"y" * 5000,
        ),
        "invalid": ("GET", offload_to("ftp://10.0.0.1/"), None),
        "refused": ("GET", offload_to(refused), None),
        "timeout": (
            "GET",
            offload_to(slow + "?delay=1", timeout="0.05"),
            None,
        ),
        "truncated": ("GET", offload_to(upstream_url + "/truncated"), None),
        # The client gives up while its offload hangs, and httpx closes
        # the connection: a disconnect.
        "disconnect": ("GET", offload_to(upstream_url + "/hang"), None),
    }


async def load(
    proxy_url: str,
    requests: dict[str, tuple[str, dict[str, str], bytes | None]],
    plan: list[str],
) -> collections.Counter[tuple[str, object]]:
    """Send the requests of *plan*, `CONCURRENCY` at a time; count each
    kind's outcomes (a status, or the name of the client's error)."""
    outcomes: collections.Counter[tuple[str, object]] = collections.Counter()
    queue = iter(plan)

    async def worker() -> None:
        async with httpx.AsyncClient() as client:
            for kind in queue:
                method, headers, body = requests[kind]
                try:
                    response = await client.request(
                        method,
                        proxy_url + "/" + kind,
                        headers=headers,
                        content=body,
                        # Only the wait for the answer is short: a
                        # connect slowed by a busy machine must not
                        # turn a disconnect into a ConnectTimeout.
                        timeout=httpx.Timeout(
                            30, read=0.2 if kind == "disconnect" else 30
                        ),
                    )
                    outcome: object = response.status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                outcomes[kind, outcome] += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return outcomes


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc"
)
@pytest.mark.anyio
async def test_no_descriptor_or_task_leaks_after_10000_mixed_requests(
    engine: str,
) -> None:
    """10,000 requests of every kind (successes, errors, truncated
    offloads, client disconnects) are each answered as they should be,
    and leave the proxy with the descriptors and tasks it had when idle,
    on either engine."""
    plan = list(
        itertools.islice(
            itertools.cycle(
                [
                    kind
                    for kind, (share, _) in MIX.items()
                    for _ in range(share)
                ]
            ),
            REQUESTS,
        )
    )
    # Generous timeouts: on a busy machine a slow connect must not count
    # as a failure. The "timeout" requests set their own short deadline.
    offloader = make_offloader(
        engine,
        limits=LIMITS,
        timeout=60,
        policy=DestinationPolicy(hosts=["127.0.0.1"]),
    )
    backend_transport: httpx.AsyncBaseTransport = (
        AiohttpTransport(limits=LIMITS)
        if engine == "aiohttp"
        else make_async_transport(DestinationPolicy(), LIMITS)
    )

    with upstreams_process() as (backend_url, upstream_url):
        proxy = make_proxy(
            backend_url,
            engine,
            offloader=offloader,
            backend_transport=backend_transport,
            backend_timeout=60,
        )
        spy = LoopSpy(proxy)
        with serve(spy, lifespan="on", proxy_headers=False) as server:
            await settle(server.url, upstream_url)
            idle_fds, idle_tasks = await steady(open_fds), spy.tasks()
            outcomes = await load(server.url, requests_of(upstream_url), plan)
            fds = await settle_until(server.url, upstream_url, idle_fds)
            tasks = await wait_for_equal(spy.tasks, idle_tasks)

    assert outcomes == {
        (kind, seen): plan.count(kind) for kind, (_, seen) in MIX.items()
    }
    assert fds == idle_fds
    assert tasks == idle_tasks
    assert proxy.active == 0
    assert offloader.in_flight == 0
