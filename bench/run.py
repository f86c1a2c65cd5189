"""Run offloader's benchmarks side by side with in-run references.

Needs Linux, ``taskset``, and from Debian ``nginx`` and ``wrk``::

    apt-get install -y nginx wrk
    nox -s bench                  # the full run, about 15 minutes
    nox -s bench -- --quick       # a short run, about 3 minutes

Every system is started fresh for each cell and pinned to core 0; the
load generator (wrk), the four-slot backend and the slow service share
core 1. Cells are interleaved (each repetition visits the systems in a
rotated order) and the table quotes medians. Results go to
``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
PROXY_CORE = "0"
LOAD_CORE = "1"
GIB = 1024**3

INSTALL_HINT = (
    "the bench needs taskset (util-linux), nginx and wrk: on Debian or "
    "Ubuntu run `apt-get update && apt-get install -y nginx wrk`"
)

# A client that backs off for a second after a refusal (503), as a
# client honouring Retry-After would; without it, the refused
# connections would retry in a hot loop and measure that loop instead.
WRK_BACKOFF_LUA = """
local refused = false
response = function(status, headers, body)
  refused = status == 503
end
delay = function()
  if refused then return 1000 end
  return 0
end
"""

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d, "
    .. "\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, "
    .. "\\"status\\": %d, \\"timeout\\": %d, \\"p50_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"max_us\\": %d}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99),
    latency.max))
end
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {connections}; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  upstream slow {{ server 127.0.0.1:{slow}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{port} backlog=8192;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location /_slow/ {{
      internal;
      proxy_pass http://slow/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_buffer_size 256k;
      proxy_buffers 4 256k;
      proxy_busy_buffers_size 512k;
      proxy_read_timeout 120s;
    }}
  }}
}}
"""


# -- processes ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout=20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited: {_stderr_of(proc)}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


_STDERR: dict[int, Any] = {}


def start(
    cmd: list[str], core: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    # stderr goes to an unnamed file, never a pipe: a process that logs
    # more than a pipe holds would block on it, and stall the cell. With
    # BENCH_KEEP_LOGS set to a folder, the file is named there and kept,
    # to read what a system logged during a run.
    keep = os.environ.get("BENCH_KEEP_LOGS")
    log: Any
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by stop()
            dir=keep, prefix=f"{time.strftime('%H%M%S')}-{_name_of(cmd)}-",
            suffix=".log", delete=False,
        )  # fmt: skip
    else:
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(
        ["taskset", "-c", core, *cmd],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    _STDERR[proc.pid] = log
    return proc


def _name_of(cmd: list[str]) -> str:
    """A short name for the process *cmd* starts: its module and first
    word (``offloader-serve``), or its program (``nginx``)."""
    words = [Path(cmd[0]).name]
    if "-m" in cmd:
        at = cmd.index("-m") + 1
        words = [word for word in cmd[at : at + 2] if not word.startswith("-")]
    return "-".join(words).replace(":", "_").replace("/", "_")


def _stderr_of(proc: subprocess.Popen[bytes]) -> str:
    log = _STDERR.get(proc.pid)
    if log is None:
        return ""
    log.seek(0)
    return str(log.read()[-4000:].decode(errors="replace"))


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = _STDERR.pop(proc.pid, None)
    if log is not None:
        log.close()


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def rss(pid: int) -> int:
    total = 0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
        return json.loads(response.read())


# -- the systems ----------------------------------------------------------


@dataclass
class Env:
    backend_port: int
    slow_port: int
    tmp: Path
    max_offloads: int = 20_000

    @property
    def backend(self) -> str:
        return f"http://127.0.0.1:{self.backend_port}"

    def held(self) -> int:
        stats = get_json(f"http://127.0.0.1:{self.slow_port}/stats")
        return int(stats["held"])


@dataclass
class Running:
    proc: subprocess.Popen[bytes] | None
    port: int

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


@dataclass
class System:
    name: str
    path: str  # the endpoint that asks for GET slow/sleep?ms=L
    bytes_path: str | None  # the endpoint that offloads a download
    launch: Callable[[Env, int], subprocess.Popen[bytes] | None]
    proxy: bool = True
    forwards_body: bool = False

    @contextlib.contextmanager
    def running(self, env: Env) -> Iterator[Running]:
        if not self.proxy:
            yield Running(None, env.backend_port)
            return
        port = free_port()
        proc = self.launch(env, port)
        assert proc is not None
        try:
            wait_port(port, proc)
            yield Running(proc, port)
        finally:
            stop(proc)


def _uvicorn(
    module: str, extra_env: dict[str, str], factory: bool = False
) -> Callable[..., Any]:
    def launch(env: Env, port: int) -> subprocess.Popen[bytes]:
        cmd = [
            PY, "-m", "uvicorn", module, "--host", "127.0.0.1",
            *(["--factory"] if factory else []),
            "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
            "--backlog", "8192",
        ]  # fmt: skip
        return start(
            cmd,
            PROXY_CORE,
            {
                "BENCH_BACKEND": env.backend,
                "BENCH_MAX_OFFLOADS": str(env.max_offloads),
                **extra_env,
            },
        )

    return launch


def _nginx(env: Env, port: int) -> subprocess.Popen[bytes]:
    tmp = Path(tempfile.mkdtemp(prefix="nginx-", dir=env.tmp))
    tmp.chmod(0o777)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            tmp=tmp,
            nofile=nofile,
            connections=nofile - 100,
            backend=env.backend_port,
            slow=env.slow_port,
            port=port,
        )
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return start(
        [nginx, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c",
         str(conf)],
        PROXY_CORE,
    )  # fmt: skip


def _offloader_serve(*extra: str) -> Callable[..., Any]:
    def launch(env: Env, port: int) -> subprocess.Popen[bytes]:
        cmd = [
            PY, "-m", "offloader", "serve", "--backend", env.backend,
            "--listen", f"127.0.0.1:{port}", "--allow-any-host",
            "--max-offloads", str(env.max_offloads),
            "--log-level", "warning", *extra,
        ]  # fmt: skip
        return start(cmd, PROXY_CORE)

    return launch


def offloader_serve_available() -> bool:
    result = subprocess.run(
        [PY, "-m", "offloader", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def all_systems() -> dict[str, System]:
    systems = [
        System("backend, no proxy", "/direct", None, lambda e, p: None,
               proxy=False),
        System("nginx X-Accel-Redirect", "/accel", "/accel-bytes", _nginx),
        System("aiohttp reference", "/offload", "/offload-bytes",
               _uvicorn("bench.ref_proxy:app", {})),
        System("offloader serve", "/offload", "/offload-bytes",
               _offloader_serve(), forwards_body=True),
        # The engines `serve` was chosen among (--engines).
        System("offloader serve --engine httpx", "/offload",
               "/offload-bytes", _offloader_serve("--engine", "httpx"),
               forwards_body=True),
        System("OffloadProxy on httpx-aiohttp", "/offload",
               "/offload-bytes",
               _uvicorn("bench.proxy_app:create_app",
                        {"BENCH_ENGINE": "httpx-aiohttp"}, factory=True),
               forwards_body=True),
    ]  # fmt: skip
    return {system.name: system for system in systems}


# -- the load generator ------------------------------------------------------


def wrk(
    url: str,
    connections: int,
    seconds: float,
    *,
    threads: int = 1,
    timeout: float = 10.0,
    tmp: Path,
    backoff: bool = False,
) -> dict[str, Any]:
    script = tmp / ("backoff.lua" if backoff else "report.lua")
    if not script.exists():
        script.write_text((WRK_BACKOFF_LUA if backoff else "") + WRK_LUA)
    cmd = [
        "taskset", "-c", LOAD_CORE, "wrk", "-t", str(threads),
        "-c", str(connections), "-d", f"{round(seconds)}s",
        "--timeout", f"{round(timeout)}s", "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, Any] = json.loads(line[8:])
            result["ok"] = result["requests"] - result["status"]
            result["socket_errors"] = (
                result["connect"] + result["read"] + result["write"]
                + result["timeout"]
            )  # fmt: skip
            return result
    raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")


# -- the figures ----------------------------------------------------------


@dataclass
class Plan:
    reps: int = 3
    rps_seconds: float = 10.0
    rps_connections: int = 64
    eff_connections: int = 1000
    eff_latency: float = 1.0
    eff_seconds: float = 15.0
    hold_connections: int = 5000
    hold_latency: float = 10.0
    max_connections: int = 9000
    limited_offloads: int = 4000
    stream_bytes: int = GIB
    results: dict[str, Any] = field(default_factory=dict)


def cell_rps(system: System, env: Env, plan: Plan) -> dict[str, Any]:
    with system.running(env) as run:
        url = f"http://127.0.0.1:{run.port}{system.path}?ms=0"
        wrk(url, plan.rps_connections, 1, tmp=env.tmp)  # warm the pools
        cpu_before = cpu_seconds(run.pid) if run.pid else 0.0
        result = wrk(url, plan.rps_connections, plan.rps_seconds, tmp=env.tmp)
        cpu = cpu_seconds(run.pid) - cpu_before if run.pid else None
    seconds = result["duration_us"] / 1e6
    return {
        "rps": result["ok"] / seconds,
        "cpu_us_per_request": (
            None if cpu is None else cpu / max(result["ok"], 1) * 1e6
        ),
        "errors": result["socket_errors"] + result["status"],
    }


def cell_efficiency(system: System, env: Env, plan: Plan) -> dict[str, Any]:
    ms = int(plan.eff_latency * 1000)
    with system.running(env) as run:
        url = f"http://127.0.0.1:{run.port}{system.path}?ms={ms}"
        result = wrk(
            url,
            plan.eff_connections,
            plan.eff_seconds,
            threads=2,
            timeout=plan.eff_seconds,
            tmp=env.tmp,
        )
    ideal = plan.eff_connections / plan.eff_latency * plan.eff_seconds
    return {
        "efficiency": result["ok"] / ideal,
        "p99_s": result["p99_us"] / 1e6,
        "completed": result["ok"],
        "errors": result["socket_errors"] + result["status"],
    }


def _hold(
    system: System,
    env: Env,
    plan: Plan,
    connections: int,
    backoff: bool = False,
) -> dict[str, Any]:
    """Hold *connections* offloads of L seconds; measure RSS growth."""
    ms = int(plan.hold_latency * 1000)
    with system.running(env) as run:
        assert run.pid is not None
        warm = f"http://127.0.0.1:{run.port}{system.path}?ms=0"
        wrk(warm, 64, 1, tmp=env.tmp)
        # Start from an idle slow service: nothing of an earlier cell may
        # count as held by this one.
        settle = time.monotonic() + plan.hold_latency + 2
        while env.held() and time.monotonic() < settle:
            time.sleep(0.1)
        time.sleep(0.5)
        base = rss(run.pid)
        url = f"http://127.0.0.1:{run.port}{system.path}?ms={ms}"
        box: dict[str, Any] = {}
        seconds = plan.hold_latency + 3
        thread = threading.Thread(
            target=lambda: box.update(
                wrk(url, connections, seconds, threads=2,
                    timeout=plan.hold_latency + 5, tmp=env.tmp,
                    backoff=backoff)
            )
        )  # fmt: skip
        thread.start()
        peak_held, peak_rss = 0, base
        end = time.monotonic() + plan.hold_latency - 0.5
        while time.monotonic() < end:
            held = env.held()
            if held >= peak_held:
                peak_held, peak_rss = held, rss(run.pid)
            time.sleep(0.25)
        thread.join()
        alive = run.proc is not None and run.proc.poll() is None
    return {
        "held": peak_held,
        "rss_growth": peak_rss - base,
        "bytes_per_held": (peak_rss - base) / max(peak_held, 1),
        "wrk": box,
        "alive_after": alive,
    }


def cell_memory(system: System, env: Env, plan: Plan) -> dict[str, Any]:
    return _hold(system, env, plan, plan.hold_connections)


def _stream(
    url: str, pid: int, tmp: Path, keep: bool = False
) -> tuple[int, float, int, bytes]:
    """Download *url* with curl; return size, seconds, peak RSS growth."""
    base = rss(pid)
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    body = tmp / "stream-body" if keep else Path(os.devnull)
    try:
        out = subprocess.run(
            ["taskset", "-c", LOAD_CORE, "curl", "-s", "--max-time", "600",
             "-o", str(body),
             "-w", "%{size_download} %{time_total} %{http_code}", url],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        done.set()
        sampler.join()
    size, seconds, status = out.stdout.split()
    if status != "200":
        raise RuntimeError(f"{url} answered {status}")
    head = body.read_bytes()[:64] if keep else b""
    return int(size), float(seconds), peak[0] - base, head


def cell_stream(system: System, env: Env, plan: Plan) -> dict[str, Any]:
    assert system.bytes_path is not None
    result: dict[str, Any] = {}
    with system.running(env) as run:
        assert run.pid is not None
        url = f"http://127.0.0.1:{run.port}{system.bytes_path}"
        size, seconds, growth, _ = _stream(
            f"{url}?n={plan.stream_bytes}", run.pid, env.tmp
        )
        result["response"] = {
            "bytes": size,
            "mb_per_s": size / seconds / 1e6,
            "peak_growth": growth,
        }
        if system.forwards_body:
            url = f"http://127.0.0.1:{run.port}/forward"
            size, seconds, growth, head = _stream(
                f"{url}?n={plan.stream_bytes}", run.pid, env.tmp, keep=True
            )
            if int(head or b"-1") != plan.stream_bytes:
                raise RuntimeError(f"the sink received {head!r} bytes")
            result["forwarded"] = {
                "bytes": plan.stream_bytes,
                "mb_per_s": plan.stream_bytes / seconds / 1e6,
                "peak_growth": growth,
            }
    (env.tmp / "stream-body").unlink(missing_ok=True)
    return result


def limits_check(system: System, env: Env, plan: Plan) -> dict[str, Any]:
    """The most held offloads, then clean 503s past --max-offloads."""
    result: dict[str, Any] = {}
    env.max_offloads = plan.max_connections + 500
    result["max_held"] = _hold(system, env, plan, plan.max_connections)
    env.max_offloads = plan.limited_offloads
    limited = _hold(
        system, env, plan, plan.limited_offloads + 1000, backoff=True
    )
    result["over_limit"] = limited
    env.max_offloads = 20_000
    return result


# -- the run ------------------------------------------------------------------


def median_of(cells: list[dict[str, Any]], key: str) -> float | None:
    values = [c[key] for c in cells if c.get(key) is not None]
    return statistics.median(values) if values else None


def run(plan: Plan, names: list[str], figures: list[str]) -> dict[str, Any]:
    systems = [all_systems()[name] for name in names]
    tmp = Path(tempfile.mkdtemp(prefix="offloader-bench-"))
    env = Env(free_port(), free_port(), tmp)
    servers = start(
        [PY, str(HERE / "servers.py"), "--backend-port",
         str(env.backend_port), "--slow-port", str(env.slow_port)],
        LOAD_CORE,
    )  # fmt: skip
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {
        s.name: {} for s in systems
    }
    try:
        wait_port(env.backend_port, servers)
        wait_port(env.slow_port, servers)
        cell_kinds: dict[str, Callable[..., dict[str, Any]]] = {
            "rps": cell_rps,
            "efficiency": cell_efficiency,
            "memory": cell_memory,
        }
        for rep in range(plan.reps):
            for figure in figures:
                if figure not in cell_kinds:
                    continue
                shift = rep % len(systems)
                for system in systems[shift:] + systems[:shift]:
                    if figure == "memory" and not system.proxy:
                        continue
                    print(f"  rep {rep + 1} {figure:10} {system.name} ...",
                          end=" ", flush=True)  # fmt: skip
                    cell = _guarded(cell_kinds[figure], system, env, plan)
                    print(_brief(cell), flush=True)
                    cells[system.name].setdefault(figure, []).append(cell)
        for system in systems:
            if system.name.endswith("httpx-aiohttp"):
                continue  # compared on the per-request figures only
            if "stream" in figures and system.bytes_path:
                print(f"  stream {system.name} ...", end=" ", flush=True)
                cell = _guarded(cell_stream, system, env, plan)
                print(_brief(cell), flush=True)
                cells[system.name]["stream"] = [cell]
            if "limits" in figures and system.forwards_body:
                print(f"  limits {system.name} ...", end=" ", flush=True)
                cell = _guarded(limits_check, system, env, plan)
                print(_brief(cell), flush=True)
                cells[system.name]["limits"] = [cell]
    finally:
        stop(servers)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"cells": cells, "summary": summarize(cells)}


def _guarded(
    measure: Callable[..., dict[str, Any]],
    system: System,
    env: Env,
    plan: Plan,
) -> dict[str, Any]:
    """Run one cell; a failure is recorded, and the run goes on."""
    try:
        return measure(system, env, plan)
    except Exception as exc:  # one cell must not end the run
        return {"error": repr(exc)}


def _brief(cell: dict[str, Any]) -> str:
    def short(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, dict):
            return {k: short(v) for k, v in value.items() if k != "wrk"}
        return value

    return json.dumps(short(cell))


def _spread(cells: list[dict[str, Any]], key: str) -> list[float] | None:
    values = [c[key] for c in cells if c.get(key) is not None]
    return [min(values), max(values)] if values else None


def summarize(cells: dict[str, Any]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name, figures in cells.items():
        row: dict[str, Any] = {}
        rps = figures.get("rps", [])
        row["rps"] = median_of(rps, "rps")
        row["cpu_us_per_request"] = median_of(rps, "cpu_us_per_request")
        # Requests per second of the proxy's own CPU time: unlike req/s,
        # it does not depend on how much of its core others left it.
        row["rps_per_core"] = median_of(
            [
                {"v": 1e6 / cell["cpu_us_per_request"]}
                for cell in rps
                if cell.get("cpu_us_per_request")
            ],
            "v",
        )
        memory = figures.get("memory", [])
        row["bytes_per_held"] = median_of(memory, "bytes_per_held")
        row["held"] = median_of(memory, "held")
        eff = figures.get("efficiency", [])
        row["efficiency"] = median_of(eff, "efficiency")
        row["p99_s"] = median_of(eff, "p99_s")
        # The lowest and highest of the repetitions, to judge the noise.
        row["spread"] = {
            key: _spread(figures.get(figure, []), key)
            for figure, key in (
                ("rps", "rps"),
                ("rps", "cpu_us_per_request"),
                ("memory", "bytes_per_held"),
                ("efficiency", "efficiency"),
                ("efficiency", "p99_s"),
            )
        }
        if figures.get("stream"):
            row["stream"] = figures["stream"][0]
        if figures.get("limits"):
            row["limits"] = figures["limits"][0]
        summary[name] = row
    return summary


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _size(count: float) -> str:
    """A byte count as the tables name it: 1 GiB, 128 MiB."""
    return f"{count / GIB:g} GiB" if count >= GIB else f"{count / 2**20:g} MiB"


def table(summary: dict[str, dict[str, Any]], plan: dict[str, Any]) -> str:
    """The main table; its headings give the run's own plan."""
    lines = [
        f"| system | req/s at L=0 ms, C={plan['rps_connections']} "
        "| CPU per request | req/s per core "
        f"| memory per held offload (C={plan['hold_connections']}, "
        f"L={plan['hold_latency']:g} s) "
        f"| efficiency at C={plan['eff_connections']}, "
        f"L={plan['eff_latency']:g} s | p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        held = row.get("held")
        memory = _fmt(row.get("bytes_per_held"), "{:,.0f}")
        if memory != "n/a":
            memory = f"{row['bytes_per_held'] / 1000:.1f} KB ({held:.0f} held)"
        lines.append(
            f"| {name} | {_fmt(row.get('rps'), '{:,.0f}')} "
            f"| {_fmt(row.get('cpu_us_per_request'), '{:,.0f} µs')} "
            f"| {_fmt(row.get('rps_per_core'), '{:,.0f}')} "
            f"| {memory} "
            f"| {_fmt(row.get('efficiency'), '{:.3f}')} "
            f"| {_fmt(row.get('p99_s'), '{:.3f} s')} |"
        )
    return "\n".join(lines)


def stream_table(
    summary: dict[str, dict[str, Any]], plan: dict[str, Any]
) -> str:
    size = _size(plan["stream_bytes"])
    lines = [
        f"| system | {size} response: MB/s | peak growth "
        f"| {size} forwarded body: MB/s | peak growth |",
        "|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        stream = row.get("stream")
        if not stream:
            continue
        cols = []
        for kind in ("response", "forwarded"):
            part = stream.get(kind)
            if part is None:
                cols += ["n/a", "n/a"]
            else:
                cols += [
                    f"{part['mb_per_s']:,.0f}",
                    f"{part['peak_growth'] / 2**20:.1f} MiB",
                ]
        lines.append(f"| {name} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def ratios(summary: dict[str, dict[str, Any]], ours: str) -> dict[str, Any]:
    """The targets of issue 4, as ratios within this run."""
    mine = summary.get(ours, {})
    nginx = summary.get("nginx X-Accel-Redirect", {})
    ref = summary.get("aiohttp reference", {})

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    out: dict[str, Any] = {
        "efficiency_vs_nginx": ratio(
            mine.get("efficiency"), nginx.get("efficiency")
        ),
        "p99_s": mine.get("p99_s"),
        "rps_vs_aiohttp_reference": ratio(mine.get("rps"), ref.get("rps")),
        "rps_per_core_vs_aiohttp_reference": ratio(
            mine.get("rps_per_core"), ref.get("rps_per_core")
        ),
        "memory_per_held_vs_nginx": ratio(
            mine.get("bytes_per_held"), nginx.get("bytes_per_held")
        ),
    }
    stream = mine.get("stream") or {}
    for kind in ("response", "forwarded"):
        if kind in stream:
            out[f"stream_{kind}_peak_growth_mib"] = (
                stream[kind]["peak_growth"] / 2**20
            )
    limits = mine.get("limits")
    if limits:
        most = limits["max_held"]
        over = limits["over_limit"]
        out["max_held"] = most["held"]
        out["max_held_errors"] = most["wrk"].get("socket_errors", 0) + most[
            "wrk"
        ].get("status", 0)
        out["over_limit_held"] = over["held"]
        out["over_limit_503s"] = over["wrk"].get("status", 0)
        out["over_limit_socket_errors"] = over["wrk"].get("socket_errors", 0)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short cells, one repetition, 128 MiB streams",
    )
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument(
        "--systems",
        nargs="*",
        default=None,
        help="names of systems (default: the four)",
    )
    parser.add_argument(
        "--engines",
        action="store_true",
        help="also run serve --engine httpx and OffloadProxy on httpx-aiohttp",
    )
    parser.add_argument(
        "--figures",
        nargs="*",
        default=["rps", "efficiency", "memory", "stream", "limits", "micro"],
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results" / "latest.json"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="summarize a saved run again, measure nothing",
    )
    args = parser.parse_args(argv)  # fmt: skip
    # Stopped from outside, still stop what was started (the finally
    # blocks run on SystemExit, not on a bare SIGTERM).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.from_json is not None:
        report(json.loads(args.from_json.read_text()), args.out)
        return

    for tool in ("taskset", "wrk", "nginx", "curl"):
        if (
            shutil.which(tool) is None
            and not Path(f"/usr/sbin/{tool}").exists()
        ):
            sys.exit(f"{tool} not found: {INSTALL_HINT}")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("the bench needs at least 2 cores")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    plan = Plan()
    if args.quick:
        plan = Plan(
            reps=1, rps_seconds=3, eff_seconds=5, hold_connections=1000,
            hold_latency=4, max_connections=2000, limited_offloads=500,
            stream_bytes=128 * 2**20,
        )  # fmt: skip
    if args.reps:
        plan.reps = args.reps

    names = args.systems or [
        "backend, no proxy",
        "nginx X-Accel-Redirect",
        "aiohttp reference",
        "offloader serve",
    ]
    if "offloader serve" in names and not offloader_serve_available():
        print("`offloader serve` is not available; skipping it")
        names.remove("offloader serve")
    if args.engines:
        # aiohttp is what `offloader serve` runs on by default.
        names += [
            "offloader serve --engine httpx",
            "OffloadProxy on httpx-aiohttp",
        ]

    started = time.time()
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nofile": hard,
        },
        "plan": {k: v for k, v in vars(plan).items() if k != "results"},
    }
    if "micro" in args.figures:
        from bench import micro

        results["micro"] = micro.run(quick=args.quick)
    results.update(run(plan, names, args.figures))
    results["seconds"] = time.time() - started
    report(results, args.out)


def report(results: dict[str, Any], out: Path) -> None:
    """Summarize the cells, print the tables and ratios, write JSON."""
    results["summary"] = summarize(results["cells"])
    results["ratios"] = {
        name: ratios(results["summary"], name)
        for name in results["cells"]
        if name in all_systems() and all_systems()[name].forwards_body
    }
    print()
    # Runs saved before the plan was recorded were full runs.
    plan = {**vars(Plan()), **results.get("plan", {})}
    print(table(results["summary"], plan))
    print()
    print(stream_table(results["summary"], plan))
    print()
    print(json.dumps(results["ratios"], indent=2))
    if "micro" in results:
        print(json.dumps(results["micro"], indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
