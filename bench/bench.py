"""Side-by-side benchmark: the llm-do service against the bare FastAPI + sse-starlette stack.

Starts `llm-do serve`, bench/baseline.py and (informational) `llm-do serve` on the in-memory
run store, on free 127.0.0.1 ports; warms them up, checks that each answers correctly, then
runs the same workloads on each, taking turns (A B B A ...) so that drift on a shared
machine hits all alike:

  W1  blocking runs/s: `greeter` with a short sentence, N requests, 32 in flight
  W2  streamed text.delta events/s for one run echoing 5,000 words (median of a few runs)
  W3  time from sending the request to receiving the first text.delta (median of many runs)

It also reads each server's CPU time from /proc around every measurement (CPU per run and
per delta is less noisy than wall clock on a busy machine). Progress goes to stderr, the
table to stdout, everything to bench/results/bench-*.json. See bench/README.md.

    .venv/bin/python bench/bench.py            # full run, 2-3 minutes
    .venv/bin/python bench/bench.py --quick    # smoke run, well under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"

WORKER = "greeter"
SHORT = "Hello there, how is your day going so far?"
TARGET = 0.8
TERMINAL = frozenset({b"run.completed", b"run.failed", b"run.cancelled", b"done"})
TEXT_DELTA = b"text.delta"
SERVICE, BASELINE = "service", "baseline"
STREAMED_BASELINE = "baseline-streamed"  # W1 only: the baseline's blocking runs stream the model
STORE_OFF = "service-store-off"  # the service on the in-memory run store (no SQLite)
MEMORY_STORE = {"LLM_DO_STORE_URL": "memory://"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def words(n: int) -> str:
    """n distinct words separated by single spaces: the echo model streams one delta each."""
    return " ".join(f"w{i:05d}" for i in range(n))


def pid_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far, all threads (OSError once it is gone)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


# ---- servers ----------------------------------------------------------------------


@dataclass
class Server:
    name: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def run_url(self) -> str:
        return f"{self.url}/workers/{WORKER}/run"

    @property
    def urls(self) -> list[str]:
        """The base URLs requests are spread over (one; replicas.py has groups of several)."""
        return [self.url]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we stop it by its PID
            )
        log(f"{self.name}: started pid {self.proc.pid} on port {self.port}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(self, within_s: float = 60) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + within_s
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                if self.proc.poll() is not None:
                    raise BenchError(
                        f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    resp = await client.get(f"{self.url}/healthz")
                    if resp.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name} not ready after {within_s}s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far (10 ms resolution)."""
        assert self.proc is not None
        return pid_cpu_s(self.proc.pid)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log(f"{self.name}: stopped pid {proc.pid} (exit {proc.returncode})")


def base_env() -> dict[str, str]:
    """Our environment without any LLM_DO_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_DO_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def service_env(data_dir: Path) -> dict[str, str]:
    return {
        **base_env(),
        "LLM_DO_LOG_LEVEL": "warning",
        "LLM_DO_DATA_DIR": str(data_dir),  # a fresh store each time, deleted afterwards
    }


def free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def service_server(name: str, port: int, env: dict[str, str], run_tag: str) -> Server:
    """`llm-do serve` on `port` with ./workers."""
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    cmd += ["--workers", str(REPO / "workers")]
    return Server(name, cmd, env, port, RESULTS / f"{run_tag}-{name}.log")


def baseline_server(port: int, run_tag: str) -> Server:
    cmd = [sys.executable, str(BENCH / "baseline.py"), "--port", str(port)]
    return Server(BASELINE, cmd, base_env(), port, RESULTS / f"{run_tag}-{BASELINE}.log")


def make_servers(data_dir: Path, run_tag: str, *, store_off: bool) -> list[Server]:
    """service, baseline and, with `store_off`, the service on the in-memory run store."""
    env = service_env(data_dir)
    ports = free_ports(3)
    servers = [service_server(SERVICE, ports[0], env, run_tag), baseline_server(ports[1], run_tag)]
    if store_off:
        servers.append(service_server(STORE_OFF, ports[2], {**env, **MEMORY_STORE}, run_tag))
    return servers


class PrivateRedis:
    """A throwaway `redis-server` on a free port, no persistence, stopped by its PID: its CPU
    and command counts are the benchmark's alone, and it may be restarted (bus_choice.py,
    `replicas.py --private-redis`)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    async def ready(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.url)
        try:
            for _ in range(100):
                with contextlib.suppress(Exception):
                    await client.ping()
                    return
                await asyncio.sleep(0.05)
            raise BenchError("the private redis-server did not start")
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- client -----------------------------------------------------------------------


class SSEParser:
    """Incremental SSE parser over raw bytes: yields (event name, data) per event.

    Kept minimal (a few byte comparisons per line) because the client shares the machine's
    two cores with the server under test. Accepts both `\\n` and `\\r\\n` line ends."""

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        lines = (self._buf + chunk).split(b"\n")
        self._buf = lines.pop()
        out = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._event or self._data:
                    out.append((self._event or b"message", b"\n".join(self._data)))
                    self._event = b""
                    self._data = []
            elif line.startswith(b"event:"):
                self._event = line[6:].strip()
            elif line.startswith(b"data:"):
                self._data.append(line[5:].lstrip(b" "))
        return out


@dataclass
class StreamStats:
    deltas: int
    terminal: str
    t_first: float | None  # seconds from sending the request to the first text.delta
    t_end: float  # seconds from sending the request to the terminal event
    text: str | None = None


async def stream_run(
    client: httpx.AsyncClient, url: str, text: str, *, collect: bool = False
) -> StreamStats:
    t0 = time.perf_counter()
    headers = {"Accept": "text/event-stream"}
    async with client.stream("POST", url, json={"input": text}, headers=headers) as resp:
        return await read_stream(resp, f"POST {url}", t0, collect=collect)


async def read_stream(
    resp: httpx.Response, what: str, t0: float, *, collect: bool = False
) -> StreamStats:
    """Read an SSE response to its end; times are seconds since `t0` (perf_counter)."""
    pieces: list[str] | None = [] if collect else None
    deltas = 0
    t_first = t_end = None
    terminal = b""
    parser = SSEParser()
    if resp.status_code != 200:
        await resp.aread()
        raise BenchError(f"{what} -> {resp.status_code}: {resp.text[:300]}")
    async for chunk in resp.aiter_raw():
        for name, data in parser.feed(chunk):
            if name == TEXT_DELTA:
                deltas += 1
                if t_first is None:
                    t_first = time.perf_counter() - t0
                if pieces is not None:
                    pieces.append(json.loads(data)["delta"])
            elif name in TERMINAL and t_end is None:
                t_end = time.perf_counter() - t0
                terminal = name
    if t_end is None:
        raise BenchError(f"{what}: the stream ended without a terminal event")
    if terminal in (b"run.failed", b"run.cancelled"):
        raise BenchError(f"{what}: the run ended with {terminal.decode()}")
    return StreamStats(
        deltas, terminal.decode(), t_first, t_end, "".join(pieces) if pieces is not None else None
    )


def _limits(n: int) -> httpx.Limits:
    return httpx.Limits(max_connections=n, max_keepalive_connections=n)


async def _open_connections(client: httpx.AsyncClient, server: Server, n: int) -> None:
    """n concurrent requests per URL make the pool open n connections to each before the
    clock starts."""
    await asyncio.gather(*(client.get(f"{url}/healthz") for url in server.urls for _ in range(n)))


Clock = Callable[[str], None]  # told "start" and "stop" around the timed part (replicas.py)


def _no_clock(mark: str) -> None:
    return None


async def blocking_round(
    server: Server,
    n: int,
    concurrency: int,
    text: str,
    *,
    url: str | None = None,
    clock: Clock = _no_clock,
) -> dict[str, Any]:
    """n blocking runs, `concurrency` in flight; without `url`, round robin over the run URLs
    of `server.urls` (one for a Server), each URL with a connection pool of its own."""
    base_urls = [url.split("/workers/", 1)[0]] if url else server.urls
    run_urls = [url] if url else [f"{u}/workers/{WORKER}/run" for u in server.urls]
    timeout = httpx.Timeout(120)
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for base in base_urls:
            client = httpx.AsyncClient(limits=_limits(concurrency), timeout=timeout)
            clients.append(await stack.enter_async_context(client))
            await asyncio.gather(*(client.get(f"{base}/healthz") for _ in range(concurrency)))
        targets = itertools.cycle(list(zip(clients, run_urls, strict=True)))
        remaining = n
        errors: list[str] = []

        async def one_task() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                client, run_url = next(targets)
                resp = await client.post(run_url, json={"input": text})
                if resp.status_code != 200:
                    errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
                elif resp.json().get("output") != text:
                    errors.append(f"unexpected body: {resp.text[:200]}")

        clock("start")
        cpu0, client0, t0 = server.cpu_s(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(one_task() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        cpu, client_cpu = server.cpu_s() - cpu0, time.process_time() - client0
        clock("stop")
    if errors:
        raise BenchError(f"{server.name}: {len(errors)} of {n} blocking runs failed: {errors[0]}")
    return {
        "n": n,
        "elapsed_s": elapsed,
        "runs_per_s": n / elapsed,
        "server_cpu_s": cpu,
        "client_cpu_s": client_cpu,
    }


async def stream_measure(
    server: Server,
    text: str,
    expect: int,
    *,
    url: str | None = None,
    run: Callable[[httpx.AsyncClient, str, str], Awaitable[StreamStats]] = stream_run,
    clock: Clock = _no_clock,
) -> dict[str, Any]:
    """One streamed run of `text` by `run` (default: POST `url`, default `server.run_url`)."""
    limits = _limits(len(server.urls))
    async with httpx.AsyncClient(timeout=httpx.Timeout(120), limits=limits) as client:
        await _open_connections(client, server, 1)
        clock("start")
        cpu0, client0 = server.cpu_s(), time.process_time()
        stats = await run(client, url or server.run_url, text)
        cpu, client_cpu = server.cpu_s() - cpu0, time.process_time() - client0
        clock("stop")
    if stats.deltas != expect:
        raise BenchError(f"{server.name}: {stats.deltas} text.delta events, expected {expect}")
    return {
        "deltas": stats.deltas,
        "elapsed_s": stats.t_end,
        "deltas_per_s": stats.deltas / stats.t_end,
        "first_delta_ms": (stats.t_first or 0) * 1000,
        "server_cpu_s": cpu,
        "server_cpu_us_per_delta": cpu / stats.deltas * 1e6,
        "client_cpu_s": client_cpu,
    }


# ---- the benchmark ----------------------------------------------------------------


@dataclass
class Config:
    n: int = 2000
    concurrency: int = 32
    rounds: int = 4
    words: int = 5000
    stream_repeats: int = 5
    ttfd_runs: int = 50
    warmup_runs: int = 200
    streamed_baseline: bool = True
    store_off: bool = True
    workloads: tuple[str, ...] = ("W1", "W2", "W3")
    quick: bool = False


@dataclass
class Collected:
    raw: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)

    def add(self, workload: str, server: str, item: dict[str, Any]) -> None:
        self.raw.setdefault(workload, {}).setdefault(server, []).append(item)


def turns(i: int, items: list[Any]) -> list[Any]:
    """Round i's order: forwards, backwards, forwards, ... (A B, B A, ...), so every contestant
    is as often early as late and a steady drift in the machine's load hits all alike."""
    return items if i % 2 == 0 else items[::-1]


async def warm_up(server: Server, cfg: Config, long_text: str) -> None:
    """Load code paths and caches, open nothing that stays open, and check the answers."""
    n = max(cfg.warmup_runs, cfg.concurrency)
    await blocking_round(server, n, cfg.concurrency, SHORT)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120)) as client:
        for _ in range(10):
            await stream_run(client, server.run_url, SHORT)
        stats = await stream_run(client, server.run_url, long_text, collect=True)
    if stats.text != long_text or stats.deltas != cfg.words:
        raise BenchError(
            f"{server.name}: the streamed echo does not match its input "
            f"({stats.deltas} deltas, {len(stats.text or '')} of {len(long_text)} characters)"
        )
    log(f"{server.name}: warmed up ({n} blocking, 11 streamed runs, echo checked)")


async def bench(cfg: Config, servers: list[Server], out: Collected) -> None:
    """Each workload takes turns over its contestants; informational ones get half the W1 runs
    (to save time) and are left out of the target rows."""
    by_name = {s.name: s for s in servers}
    service, baseline = by_name[SERVICE], by_name[BASELINE]
    store_off = by_name.get(STORE_OFF)
    long_text = words(cfg.words)
    for server in servers:
        await warm_up(server, cfg, long_text)

    if "W1" in cfg.workloads:
        per_round = max(1, cfg.n // cfg.rounds)
        half = max(1, per_round // 2)
        w1 = [
            (SERVICE, service, service.run_url, per_round),
            (BASELINE, baseline, baseline.run_url, per_round),
        ]
        if cfg.streamed_baseline:
            w1.append((STREAMED_BASELINE, baseline, baseline.run_url + "?model_stream=1", half))
        if store_off is not None:
            w1.append((STORE_OFF, store_off, store_off.run_url, half))
        log(
            f"W1: {cfg.rounds} rounds of blocking runs, c={cfg.concurrency}: "
            + ", ".join(f"{c[0]} {c[3]}" for c in w1)
        )
        for i in range(cfg.rounds):
            for name, server, url, n in turns(i, w1):
                r = await blocking_round(server, n, cfg.concurrency, SHORT, url=url)
                out.add("W1", name, r)
                log(
                    f"W1 round {i + 1}/{cfg.rounds} {name:17}: {r['runs_per_s']:7.1f} runs/s"
                    f"  server CPU {r['server_cpu_s'] / r['n'] * 1e3:5.2f} ms/run"
                )

    if "W2" in cfg.workloads:
        log(f"W2: {cfg.stream_repeats} streamed {cfg.words}-word runs per server")
        for i in range(cfg.stream_repeats):
            for server in turns(i, servers):
                r = await stream_measure(server, long_text, cfg.words)
                out.add("W2", server.name, r)
                log(
                    f"W2 run {i + 1}/{cfg.stream_repeats} {server.name:17}: "
                    f"{r['deltas_per_s']:7.0f} deltas/s"
                    f"  server CPU {r['server_cpu_us_per_delta']:5.0f} us/delta"
                )

    if "W3" in cfg.workloads:
        log(f"W3: {cfg.ttfd_runs} short streamed runs per server, time to first delta")
        timeout = httpx.Timeout(60)
        async with contextlib.AsyncExitStack() as stack:
            clients = {}
            for server in servers:  # one kept-alive connection per server
                client = httpx.AsyncClient(timeout=timeout, limits=_limits(1))
                clients[server.name] = await stack.enter_async_context(client)
                await _open_connections(client, server, 1)
            for i in range(cfg.ttfd_runs):
                for server in turns(i, servers):
                    stats = await stream_run(clients[server.name], server.run_url, SHORT)
                    assert stats.t_first is not None
                    out.add(
                        "W3",
                        server.name,
                        {"first_delta_ms": stats.t_first * 1e3, "end_ms": stats.t_end * 1e3},
                    )
        for server in servers:
            ms = [r["first_delta_ms"] for r in out.raw["W3"][server.name]]
            log(f"W3 {server.name:17}: median {statistics.median(ms):.2f} ms")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summarize(cfg: Config, out: Collected) -> list[dict[str, Any]]:
    """One row per metric and pair. `ratio` >= 1 means the service side is at least as good as
    the baseline side: service/baseline where higher is better, baseline/service where lower
    is better. The informational pairs change one side: the service with the store off, or
    the baseline streaming the model in blocking runs (W1)."""
    rows: list[dict[str, Any]] = []
    med = statistics.median

    def row(metric: str, unit: str, svc: float, base: float, *, higher: bool, target: bool) -> None:
        ratio = svc / base if higher else base / svc
        rows.append(
            {
                "metric": metric,
                "unit": unit,
                "service": svc,
                "baseline": base,
                "ratio": ratio,
                "target": TARGET if target else None,
                "pass": (ratio >= TARGET) if target else None,
            }
        )

    def w1(rs: list[dict[str, Any]]) -> tuple[float, float]:  # runs/s, CPU ms per run
        n = sum(r["n"] for r in rs)
        return n / sum(r["elapsed_s"] for r in rs), sum(r["server_cpu_s"] for r in rs) / n * 1e3

    def w2(rs: list[dict[str, Any]]) -> tuple[float, float]:  # deltas/s, CPU us per delta
        return med(r["deltas_per_s"] for r in rs), med(r["server_cpu_us_per_delta"] for r in rs)

    def w3(rs: list[dict[str, Any]]) -> tuple[float, float]:  # median and p90 ms
        ms = [r["first_delta_ms"] for r in rs]
        return med(ms), _pct(ms, 0.9)

    workloads = {
        "W1": (w1, f"W1 blocking runs/s, c={cfg.concurrency}", "runs/s", True,
               "server CPU per blocking run", "ms", False),
        "W2": (w2, f"W2 streamed deltas/s, {cfg.words} words", "deltas/s", True,
               "server CPU per streamed delta", "us", False),
        "W3": (w3, "W3 time to first delta, median", "ms", False,
               "time to first delta, p90", "ms", False),
    }  # fmt: skip
    pairs = [
        (SERVICE, BASELINE, None),
        (STORE_OFF, BASELINE, "service with the store off"),
        (SERVICE, STREAMED_BASELINE, "baseline streaming the model"),
    ]
    for workload, (stats, name1, unit1, higher1, name2, unit2, higher2) in workloads.items():
        raw = out.raw.get(workload)
        if not raw:
            continue
        for svc, base, label in pairs:
            if svc not in raw or base not in raw:
                continue
            (s1, s2), (b1, b2) = stats(raw[svc]), stats(raw[base])
            if label is None:
                row(name1, unit1, s1, b1, higher=higher1, target=True)
                row(f"   {name2}", unit2, s2, b2, higher=higher2, target=False)
            else:
                row(f"   {label}", unit1, s1, b1, higher=higher1, target=False)
                if workload != "W3":
                    row(f"   {label}, CPU", unit2, s2, b2, higher=higher2, target=False)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    head = f"{'metric':<40} {'service':>10} {'baseline':>10} {'unit':<9} {'ratio':>6}  target"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["target"] is None:
            verdict = "(info)"
        else:
            verdict = f">= {r['target']:.1f} " + ("ok" if r["pass"] else "BELOW")
        lines.append(
            f"{r['metric']:<40} {r['service']:>10.2f} {r['baseline']:>10.2f} {r['unit']:<9}"
            f" {r['ratio']:>6.2f}  {verdict}"
        )
    lines.append(
        "ratio: service/baseline for throughput, baseline/service for latency and CPU "
        "(>= 1: the service is at least as good)"
    )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    pkgs = ["pydantic-ai-slim", "pydantic", "fastapi", "starlette", "uvicorn", "sse-starlette"]
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = []
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": load,
        "packages": {p: version(p) for p in pkgs},
    }


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run with small numbers (< 60 s)")
    p.add_argument("-n", "--n", type=int, help="W1: blocking runs per server (default 2000)")
    p.add_argument("--concurrency", type=int, help="W1: requests in flight (default 32)")
    p.add_argument("--rounds", type=int, help="W1: alternating rounds per server (default 4)")
    p.add_argument("--words", type=int, help="W2: words in the streamed echo (default 5000)")
    p.add_argument("--stream-repeats", type=int, help="W2: runs per server (default 5)")
    p.add_argument("--ttfd-runs", type=int, help="W3: runs per server (default 50)")
    p.add_argument("--only", help="comma-separated subset of W1,W2,W3")
    p.add_argument(
        "--no-streamed-baseline",
        dest="streamed_baseline",
        action="store_false",
        help="W1: skip the informational baseline that streams the model",
    )
    p.add_argument(
        "--no-store-off",
        dest="store_off",
        action="store_false",
        help="skip the informational service on the in-memory run store",
    )
    p.add_argument("--out", type=Path, help="result JSON path (default bench/results/...)")
    args = p.parse_args(argv)
    cfg = Config()
    if args.quick:
        cfg = Config(n=256, rounds=2, stream_repeats=2, ttfd_runs=10, warmup_runs=32, quick=True)
    for name in ("n", "concurrency", "rounds", "words", "stream_repeats", "ttfd_runs"):
        if (value := getattr(args, name)) is not None:
            if value < 1:
                p.error(f"--{name.replace('_', '-')} must be at least 1")
            setattr(cfg, name, value)
    cfg.streamed_baseline = args.streamed_baseline
    cfg.store_off = args.store_off
    if args.only:
        chosen = tuple(w.strip().upper() for w in args.only.split(",") if w.strip())
        if not chosen or set(chosen) - {"W1", "W2", "W3"}:
            p.error("--only takes a comma-separated subset of W1,W2,W3")
        cfg.workloads = chosen
    return cfg, args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = time.strftime("bench-%Y%m%d-%H%M%S") + ("-quick" if cfg.quick else "")
    out_path = args.out or RESULTS / f"{tag}.json"
    # A TERM (e.g. from a CI timeout) unwinds like Ctrl-C, so the servers are stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    collected = Collected()
    started = time.time()
    before = machine()
    with tempfile.TemporaryDirectory(prefix="llm-do-bench-") as data_dir:
        servers = make_servers(Path(data_dir), tag, store_off=cfg.store_off)
        keep_logs = False
        try:
            for server in servers:
                server.start()

            async def go() -> None:
                await asyncio.gather(*(server.wait_ready() for server in servers))
                log("servers ready")
                await bench(cfg, servers, collected)

            asyncio.run(go())
        except BenchError as exc:
            keep_logs = True
            log(f"FAILED: {exc}")
            log("server logs: " + " ".join(str(server.log_path) for server in servers))
            return 1
        except KeyboardInterrupt:
            log("interrupted")
            return 130
        finally:
            for server in reversed(servers):
                server.stop()
                if not keep_logs:
                    server.log_path.unlink(missing_ok=True)
    rows = summarize(cfg, collected)
    table = render(rows)
    result = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "config": dict(vars(cfg)),
        "machine": {**before, "loadavg_after": machine()["loadavg"]},
        "summary": rows,
        "raw": collected.raw,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    log(f"done in {result['duration_s']} s; results in {out_path}")
    return 0 if all(r["pass"] is not False for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())
