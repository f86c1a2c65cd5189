"""The ``offloader`` command: ``offloader serve`` and ``offloader demo``.

``serve`` runs `OffloadProxy` on uvicorn. Its settings travel to the app
factory, `create_app`, through one environment variable, so that each of
uvicorn's worker processes builds the same proxy.

The proxy's connections go through one of two engines (``--engine``):
aiohttp's client, through `offloader._aiohttp_transport.AiohttpTransport`
(the default), or httpx's own pool. The bench measured httpcore's cost per
request growing with the connections it holds, which a proxy holding
thousands of offloads cannot afford; aiohttp's does not.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import ipaddress
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx

from ._offloader import Offloader
from ._policy import DestinationPolicy

if TYPE_CHECKING:
    from .hooks.asgi import OffloadProxy

__all__ = ["create_app", "main"]

#: The garbage collector's thresholds in a serving process. With
#: Python's defaults (700, 10, 10), a burst of thousands of requests,
#: each making objects that live until its offload ends, sets off full
#: collections over an ever larger heap: on the bench, taking in 9,000
#: offloads cost 11.6 s of CPU with them and 8.3 s with these.
GC_THRESHOLDS = (50_000, 20, 10)

#: The total seconds an offload may take, unless ``--offload-timeout``.
DEFAULT_OFFLOAD_TIMEOUT = 30.0

#: Where `serve` puts its settings for `create_app`, as JSON.
CONFIG_ENV = "OFFLOADER_SERVE_CONFIG"

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_ENGINES = ("aiohttp", "httpx")
_METRICS_HINT = (
    "offloader: --metrics-listen needs the metrics extra; install it with\n"
    "    pip install 'offloader[metrics]'\n"
)
_INSTALL_HINT = (
    "offloader: this command needs the server extra; install it with\n"
    "    pip install 'offloader[server]'\n"
)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT, such as 127.0.0.1:8080, not {value!r}"
        )
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _backend(value: str) -> str:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"invalid URL {value!r}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(
            f"the backend must be an http or https URL, not {value!r}"
        )
    return value


def _positive(kind: type[int] | type[float]) -> Any:
    def convert(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number, not {value!r}"
            ) from None
        if number <= 0:
            raise argparse.ArgumentTypeError(
                f"expected a positive number, not {value!r}"
            )
        return number

    return convert


def _host_pattern(value: str) -> str:
    pattern = value.strip().lower()
    with contextlib.suppress(ValueError):
        # An IP address, IPv6 with or without its brackets.
        bare = pattern.removeprefix("[").removesuffix("]")
        return str(ipaddress.ip_address(bare))
    name = pattern.removeprefix("*.")
    if not name or "*" in name or "/" in name or ":" in name:
        raise argparse.ArgumentTypeError(
            f"expected a host name, an IP address or *.suffix, not {value!r}"
        )
    return pattern


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``offloader`` command line."""
    parser = argparse.ArgumentParser(
        prog="offloader",
        description=(
            "A reverse proxy that carries out the slow requests a backend "
            "hands it through Offload-* response headers."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the offloading reverse proxy in front of a backend",
        description=(
            "Forward every request to BACKEND and carry out the offloads "
            "its responses ask for. Offloads may go to the backend's own "
            "host and to --allow-host hosts, over http or https."
        ),
    )
    serve.add_argument(
        "--backend",
        required=True,
        type=_backend,
        metavar="URL",
        help="the backend's base URL, e.g. http://127.0.0.1:3000",
    )
    serve.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="where to accept connections (default: 127.0.0.1:8080)",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        type=_host_pattern,
        metavar="HOST",
        help=(
            "a host offloads may go to: a name, an IP address or "
            "*.suffix; repeatable "
            "(the backend's host is always allowed)"
        ),
    )
    serve.add_argument(
        "--allow-any-host",
        action="store_true",
        help="let offloads go to any host (only if you trust the backend)",
    )
    serve.add_argument(
        "--offload-timeout",
        type=_positive(float),
        default=DEFAULT_OFFLOAD_TIMEOUT,
        metavar="SECONDS",
        help="the total time an offload may take (default: %(default)g)",
    )
    serve.add_argument(
        "--max-offloads",
        type=_positive(int),
        default=None,
        metavar="N",
        help="the most offloads at once; past it, 503 (default: no limit)",
    )
    serve.add_argument(
        "--max-requests",
        type=_positive(int),
        default=None,
        metavar="N",
        help=(
            "the most requests held at once per worker; past it, 503 "
            "(default: from the file descriptor limit)"
        ),
    )
    serve.add_argument(
        "--grace-period",
        type=_positive(float),
        default=None,
        metavar="SECONDS",
        help=(
            "on SIGTERM, how long in-flight requests may take to finish "
            "(default: the offload timeout)"
        ),
    )
    serve.add_argument(
        "--preserve-host",
        action="store_true",
        help="send the client's Host header to the backend",
    )
    serve.add_argument(
        "--engine",
        choices=_ENGINES,
        default="aiohttp",
        help=(
            "the HTTP client the proxy's connections go through: aiohttp's "
            "(faster, holds more) or httpx's own pool (default: aiohttp; "
            "httpx when aiohttp is not installed)"
        ),
    )
    serve.add_argument(
        "--workers",
        type=_positive(int),
        default=1,
        metavar="N",
        help="worker processes, to use more cores (default: 1)",
    )
    serve.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default="info",
        type=str.lower,
        help="log level (default: info)",
    )
    serve.add_argument(
        "--metrics-listen",
        type=_listen,
        default=None,
        metavar="HOST:PORT",
        help=(
            "serve Prometheus metrics there (needs the metrics extra: "
            "pip install 'offloader[metrics]')"
        ),
    )
    serve.set_defaults(func=_serve)

    demo = commands.add_parser(
        "demo",
        help="show offloading at work, on loopback, in under a minute",
        description=(
            "Start a backend with four worker slots, a slow service and "
            "the proxy on loopback, load them, and print the difference."
        ),
    )
    demo.add_argument(
        "--blocking",
        type=_positive(int),
        default=40,
        metavar="N",
        help="requests sent to the blocking endpoint (default: 40)",
    )
    demo.add_argument(
        "--offloaded",
        type=_positive(int),
        default=400,
        metavar="N",
        help="requests sent through the proxy (default: 400)",
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``offloader`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


# -- serve ---------------------------------------------------------------


def _raise_fd_limit() -> int | None:
    """Let this process use as many descriptors as it is allowed to.

    Returns the new soft limit, or `None` where there is none to read.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # pragma: no cover
            logging.getLogger("offloader").warning(
                "could not raise the file descriptor limit from %d", soft
            )
    return None if soft == resource.RLIM_INFINITY else soft


def _connection_cap(max_requests: int, fd_limit: int | None) -> int:
    """How many client connections uvicorn may hold before it answers 503.

    The proxy's own *max_requests* admits requests one by one, and sets
    descriptors aside for the backend pool; this cap is the backstop
    that keeps accepted connections within the descriptors left once
    every admitted request holds an upstream one. uvicorn counts open
    connections, and also request tasks, which end a moment after their
    response (hundreds at once when the proxy is busy); a request past
    the cap gets 503, so the cap stays as high as the descriptors allow.
    """
    if fd_limit is None:
        return max_requests + 64
    return max(max_requests + 16, fd_limit - max_requests - 128)


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        sys.stderr.write(_INSTALL_HINT)
        return 2
    from .hooks.asgi import default_max_requests

    metrics: contextlib.AbstractContextManager[object] = (
        contextlib.nullcontext()
    )
    if args.metrics_listen is not None:
        try:
            from .metrics import serving_metrics
        except ImportError:
            sys.stderr.write(_METRICS_HINT)
            return 2
        metrics = serving_metrics(*args.metrics_listen, workers=args.workers)
    _configure_logging(args.log_level)
    engine = _available_engine(args.engine)
    fd_limit = _raise_fd_limit()
    max_requests = args.max_requests or default_max_requests()
    connection_cap = _connection_cap(max_requests, fd_limit)
    config = {
        "backend": args.backend,
        "allow_hosts": args.allow_host,
        "allow_any_host": args.allow_any_host,
        "offload_timeout": args.offload_timeout,
        "max_offloads": args.max_offloads,
        "max_requests": max_requests,
        "preserve_host": args.preserve_host,
        "engine": engine,
        "log_level": args.log_level,
        "metrics": args.metrics_listen is not None,
    }
    os.environ[CONFIG_ENV] = json.dumps(config)
    grace = args.grace_period or args.offload_timeout
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal
    # again to end the process the default way. A graceful stop is a
    # success: this handler turns that second signal into exit status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with metrics:
        _run_uvicorn(uvicorn, args, connection_cap, grace)
    return 0


def _run_uvicorn(
    uvicorn: Any, args: argparse.Namespace, connection_cap: int, grace: float
) -> None:
    host, port = args.listen
    uvicorn.run(
        "offloader._cli:create_app",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        loop="auto",
        http="auto",
        lifespan="on",
        log_level=args.log_level,
        # The proxy is the edge: it sets X-Forwarded-* itself and must
        # not believe a client's.
        proxy_headers=False,
        # Relayed responses carry their origin's Date and Server.
        server_header=False,
        date_header=False,
        # Limitation: past the descriptor limit itself, the event loop
        # cannot accept: uvloop (libuv) accepts and closes such a
        # connection at once, asyncio leaves it waiting in the backlog.
        limit_concurrency=connection_cap,
        timeout_graceful_shutdown=max(1, round(grace)),
    )


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _available_engine(engine: str) -> str:
    """Return *engine*, or ``"httpx"`` if it is aiohttp and that is not
    installed (with one warning)."""
    if engine != "aiohttp":
        return engine
    try:
        import aiohttp  # noqa: F401 - only checks that it is installed
    except ImportError:
        logging.getLogger("offloader").warning(
            "aiohttp is not installed: the proxy runs on httpx's own pool "
            "(pip install 'offloader[server]' for the faster engine)"
        )
        return "httpx"
    return engine


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("offloader")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(levelname)s:     [offloader] %(message)s")
        )
        logger.addHandler(handler)


def create_app() -> Any:
    """Build the proxy ``offloader serve`` runs, from its settings.

    This is uvicorn's app factory: each worker process calls it.
    """
    config = json.loads(os.environ[CONFIG_ENV])
    _configure_logging(config["log_level"])
    # Each worker process is the command's own, so its collector may be
    # tuned for the proxy.
    gc.set_threshold(*GC_THRESHOLDS)
    backend = httpx.URL(config["backend"])
    hosts = (
        None
        if config["allow_any_host"]
        else (backend.host, *config["allow_hosts"])
    )
    return build_proxy(
        backend,
        engine=config.get("engine", "aiohttp"),
        hosts=hosts,
        offload_timeout=config["offload_timeout"],
        max_offloads=config["max_offloads"],
        max_requests=config["max_requests"],
        preserve_host=config["preserve_host"],
        metrics=config["metrics"],
    )


def build_proxy(
    backend: httpx.URL,
    *,
    engine: str = "aiohttp",
    hosts: Sequence[str] | None = None,
    offload_timeout: float = DEFAULT_OFFLOAD_TIMEOUT,
    max_offloads: int | None = None,
    max_requests: int | None = None,
    preserve_host: bool = False,
    metrics: bool = False,
) -> OffloadProxy:
    """Build the `OffloadProxy` of ``offloader serve`` (and of the demo).

    *engine* is ``"aiohttp"`` (falling back to ``"httpx"`` when aiohttp
    is not installed) or ``"httpx"``; *hosts* are the hosts offloads may
    go to, `None` for any.
    """
    from .hooks.asgi import (
        DEFAULT_BACKEND_LIMITS,
        DEFAULT_OFFLOAD_LIMITS,
        OffloadProxy,
    )

    policy = DestinationPolicy(hosts=hosts)
    engine = _available_engine(engine)
    # The offloader checks each offload's scheme, host and port with the
    # policy before it hands the request to any transport; the aiohttp
    # transport checks the resolved addresses, should the policy have
    # address rules, as httpx's guarded pool does.
    transports: tuple[httpx.AsyncBaseTransport, ...] = ()
    if engine == "aiohttp":
        from ._aiohttp_transport import AiohttpTransport

        transports = (
            AiohttpTransport(limits=DEFAULT_BACKEND_LIMITS),
            AiohttpTransport(limits=DEFAULT_OFFLOAD_LIMITS, policy=policy),
        )
    offloader = Offloader(
        async_transport=transports[1] if transports else None,
        timeout=httpx.Timeout(
            offload_timeout, connect=min(offload_timeout, 5.0)
        ),
        deadline=offload_timeout,
        limits=DEFAULT_OFFLOAD_LIMITS,
        max_offloads=max_offloads,
        policy=policy,
    )
    if metrics:
        from .metrics import instrument

        instrument(offloader)

    class ServedProxy(OffloadProxy):
        async def aclose(self) -> None:
            # An offloader closes only the transports it made itself.
            try:
                await super().aclose()
            finally:
                for transport in transports[1:]:
                    await transport.aclose()

    logging.getLogger("offloader").info(
        "proxying to %s on the %s engine", backend, engine
    )
    return ServedProxy(
        backend,
        offloader=offloader,
        backend_transport=transports[0] if transports else None,
        preserve_host=preserve_host,
        max_requests=max_requests,
    )


# -- demo ----------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401 - only checks that it is installed
    except ImportError:
        sys.stderr.write(_INSTALL_HINT)
        return 2
    from ._demo import run_demo

    return run_demo(blocking=args.blocking, offloaded=args.offloaded)
