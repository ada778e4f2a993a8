"""The service as replicas (PostgreSQL store + Redis bus) vs one process and the bare stack.

Runs bench.py's workloads (W1 blocking runs/s at c=32, W2 streamed text.delta/s of a
5,000-word echo, W3 time to first delta of a short run; see bench/README.md) in one run on:

  bare  bench/baseline.py, the bare PydanticAI + FastAPI + sse-starlette stack
  (a)   one `llm-do serve`, SQLite store, in-process bus (the defaults)
  (b)   one replica on PostgreSQL + Redis
  (c)   three replicas on PostgreSQL + Redis; requests round robin over their ports
  (d)   W2/W3 only: the run POSTed (background) to replica r0 of (c), its events followed on
        r1 with GET /runs/{id}/events, i.e. through r0's Redis stream; timed from the POST

Every measurement also records where the CPU went: each server process (/proc/PID/stat),
Redis (INFO cpu), the PostgreSQL backends of the replicas (found by application_name in
pg_stat_activity, CPU from /proc) and PostgreSQL's own background processes, plus the Redis
commands issued (INFO commandstats). The machine's PostgreSQL and Redis are used: (b) and (c)
each get a fresh schema and key prefix, dropped and deleted at the end. Everything
(client, six servers, PostgreSQL, Redis) shares the machine's cores: read wall-clock rates
with that in mind, and the CPU columns for attribution.

    .venv/bin/python bench/replicas.py            # full run, about 3-4 minutes
    .venv/bin/python bench/replicas.py --quick    # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis

import bench as B  # bench/bench.py: this script's folder is first on sys.path

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
PROBE_APP = "llm-do-bench-probe"
SETTLE_S = 0.2

BARE, A, B1, C3, D = "bare", "a", "b", "c", "d"
LABELS = {
    BARE: "bare baseline",
    A: "(a) 1 process, SQLite, local bus",
    B1: "(b) 1 replica, PostgreSQL + Redis",
    C3: "(c) 3 replicas, round robin",
    D: "(d) POST on r0, follow on r1",
}


@dataclass
class Config:
    n: int = 2000  # W1 runs per setup, over `rounds`
    concurrency: int = 32
    rounds: int = 4
    words: int = 5000
    stream_repeats: int = 5
    ttfd_runs: int = 50
    warmup_runs: int = 100
    quick: bool = False


@dataclass
class Group:
    """Replicas used as one setup: requests spread round robin over `urls`; CPU summed."""

    name: str
    servers: list[B.Server]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def run_url(self) -> str:
        return self.servers[0].run_url

    def cpu_s(self) -> float:
        return sum(s.cpu_s() for s in self.servers)


# ---- deployment ---------------------------------------------------------------------


@dataclass
class Deployment:
    tag: str
    data_dir: Path
    pg_url: str
    redis_url: str
    name: str = field(default_factory=lambda: f"llmdo_bench_{secrets.token_hex(3)}")
    servers: list[B.Server] = field(default_factory=list)
    targets: dict[str, Any] = field(default_factory=dict)  # BARE, A, B1, C3 (and D -> C3)

    def namespaces(self) -> list[str]:
        """One PostgreSQL schema (same name as the Redis key prefix) per shared setup."""
        return [f"{self.name}_b", f"{self.name}_c"]

    def build(self) -> None:
        ports = B.free_ports(6)
        bare = B.baseline_server(ports[0], self.tag)
        single = B.service_server("a", ports[1], B.service_env(self.data_dir / "a"), self.tag)
        shared: dict[str, list[B.Server]] = {}
        port_iter = iter(ports[2:])
        for ns, count in zip(self.namespaces(), (1, 3), strict=True):
            setup = ns.rsplit("_", 1)[1]
            shared[setup] = []
            for i in range(count):
                rid = f"r{i}"
                env = {
                    **B.service_env(self.data_dir / f"{setup}-{rid}"),
                    "LLM_DO_STORE_URL": f"{self.pg_url}?schema={ns}&application_name={ns}-{rid}",
                    "LLM_DO_BUS_URL": f"{self.redis_url}?prefix={ns}",
                    "LLM_DO_REPLICA_ID": rid,
                }
                name = f"{setup}-{rid}"
                shared[setup].append(B.service_server(name, next(port_iter), env, self.tag))
        self.servers = [bare, single, *shared["b"], *shared["c"]]
        self.targets = {
            BARE: bare,
            A: single,
            B1: shared["b"][0],
            C3: Group(C3, shared["c"]),
        }

    @property
    def c(self) -> list[B.Server]:
        return self.targets[C3].servers

    async def create_namespaces(self) -> None:
        conn = await asyncpg.connect(self.pg_url)
        try:
            for ns in self.namespaces():
                await conn.execute(f'CREATE SCHEMA "{ns}"')  # fails if it exists: fresh only
        finally:
            await conn.close()

    async def drop_namespaces(self) -> None:
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(self.pg_url, timeout=5)
            try:
                for ns in self.namespaces():
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{ns}" CASCADE')
            finally:
                await conn.close()
        with contextlib.suppress(Exception):
            client = aioredis.from_url(self.redis_url, socket_timeout=5)
            try:
                for ns in self.namespaces():
                    keys = [k async for k in client.scan_iter(match=f"{ns}:*", count=1000)]
                    for i in range(0, len(keys), 500):
                        await client.unlink(*keys[i : i + 500])
            finally:
                await client.aclose()
        B.log(f"dropped schemas and Redis keys {', '.join(self.namespaces())}")


# ---- where the time goes ------------------------------------------------------------


class Probes:
    """CPU seconds so far of every process of interest, and Redis command counts.

    The server processes and the client are read when bench.py's clock starts and stops
    (opening the client's connections is not counted); Redis, the PostgreSQL backends and
    the command counts around the whole measurement (they have nothing to do meanwhile)."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.redis = aioredis.from_url(dep.redis_url)
        self.pg: asyncpg.Connection | None = None
        self.marks: dict[str, dict[str, Any]] = {}

    async def open(self) -> None:
        self.pg = await asyncpg.connect(
            self.dep.pg_url, server_settings={"application_name": PROBE_APP}
        )

    async def close(self) -> None:
        await self.redis.aclose()
        if self.pg is not None:
            await self.pg.close()

    def clock(self, mark: str) -> None:
        """bench.py's `clock`: told "start" and "stop" around the timed part."""
        self.marks[mark] = {
            "t": time.perf_counter(),
            "client": time.process_time(),
            "procs": {s.name: s.cpu_s() for s in self.dep.servers},
        }

    async def measure(self, make: Callable[[B.Clock], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """`make(clock)`'s result, with its "cost" (see `delta`)."""
        self.marks = {}
        await asyncio.sleep(SETTLE_S)  # the last measurement's runs finish publishing
        before = await self.snapshot()
        result = await make(self.clock)
        after = await self.snapshot()
        start, stop = {**before, **self.marks["start"]}, {**after, **self.marks["stop"]}
        result["cost"] = self.delta(start, stop)
        return result

    async def snapshot(self) -> dict[str, Any]:
        assert self.pg is not None
        cpu = await self.redis.info("cpu")
        stats = await self.redis.info("commandstats")
        rows = await self.pg.fetch(
            "SELECT pid, application_name, backend_type FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid()"
        )
        ours, aux = {}, {}
        prefix = self.dep.name
        for pid, app, kind in rows:
            with contextlib.suppress(OSError):
                if app and app.startswith(prefix):
                    ours[pid] = B.pid_cpu_s(pid)
                elif kind != "client backend":  # walwriter, checkpointer, autovacuum, ...
                    aux[pid] = B.pid_cpu_s(pid)
        return {
            "redis": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            "redis_cmds": {
                k.removeprefix("cmdstat_"): v["calls"]
                for k, v in stats.items()
                if k.startswith("cmdstat_") and k != "cmdstat_info"
            },
            "pg_ours": ours,
            "pg_aux": aux,
        }

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        def pids(key: str) -> float:  # a backend that started meanwhile counts from zero
            return sum(v - a[key].get(pid, 0.0) for pid, v in b[key].items())

        cmds = {k: v - a["redis_cmds"].get(k, 0) for k, v in b["redis_cmds"].items()}
        return {
            "wall_s": b["t"] - a["t"],
            "client_s": b["client"] - a["client"],
            "procs": {k: b["procs"][k] - a["procs"][k] for k in b["procs"]},
            "redis_s": b["redis"] - a["redis"],
            "redis_cmds": {k: v for k, v in sorted(cmds.items(), key=lambda kv: -kv[1]) if v},
            "pg_ours_s": pids("pg_ours"),
            "pg_aux_s": pids("pg_aux"),
        }


# ---- the cross-replica follower -----------------------------------------------------


async def follow_run(
    client: httpx.AsyncClient,
    url: str,
    text: str,
    *,
    follow: str,
    collect: bool = False,
    marks: list[dict[str, float]] | None = None,
) -> B.StreamStats:
    """POST a background run to `url`, follow its events at `follow` (another replica);
    times from sending the POST."""
    t0 = time.perf_counter()
    resp = await client.post(url, json={"input": text, "background": True})
    if resp.status_code != 202:
        raise B.BenchError(f"POST {url} (background) -> {resp.status_code}: {resp.text[:300]}")
    run_id = resp.json()["run_id"]
    t_get, wall_get = time.perf_counter(), time.time()
    events = f"{follow}/runs/{run_id}/events"
    async with client.stream("GET", events, headers={"Accept": "text/event-stream"}) as r:
        stats = await B.read_stream(r, f"GET {events}", t0, collect=collect)
    if marks is not None:
        marks.append({"run_id": run_id, "post_ms": (t_get - t0) * 1e3, "get_wall": wall_get})
    return stats


async def raced(dep: Deployment, marks: list[dict[str, float]]) -> int:
    """How many followed runs had ended (finished_at) before their GET was sent: those were
    replayed from PostgreSQL, not tailed from the Redis stream."""
    conn = await asyncpg.connect(dep.pg_url, server_settings={"search_path": dep.namespaces()[1]})
    try:
        rows = await conn.fetch(
            "SELECT run_id, finished_at FROM runs WHERE run_id = ANY($1)",
            [m["run_id"] for m in marks],
        )
    finally:
        await conn.close()
    finished = {r["run_id"]: r["finished_at"] for r in rows}
    return sum(1 for m in marks if (finished.get(m["run_id"]) or 1e18) < m["get_wall"])


# ---- the benchmark ------------------------------------------------------------------


async def warm_up(dep: Deployment, cfg: Config, long_text: str) -> None:
    bcfg = B.Config(concurrency=cfg.concurrency, words=cfg.words, warmup_runs=cfg.warmup_runs)
    for server in dep.servers:
        await B.warm_up(server, bcfg, long_text)
    c0, c1 = dep.c[0], dep.c[1]
    async with httpx.AsyncClient(timeout=httpx.Timeout(120)) as client:
        for _ in range(10):
            await follow_run(client, c0.run_url, B.SHORT, follow=c1.url)
        stats = await follow_run(client, c0.run_url, long_text, follow=c1.url, collect=True)
    if stats.text != long_text or stats.deltas != cfg.words:
        raise B.BenchError(
            f"(d): the followed echo does not match its input ({stats.deltas} deltas, "
            f"{len(stats.text or '')} of {len(long_text)} characters)"
        )
    B.log("(d) POST r0 / follow r1: warmed up, echo checked")


async def run_bench(cfg: Config, dep: Deployment, probes: Probes, out: B.Collected) -> None:
    t = dep.targets
    long_text = B.words(cfg.words)
    await warm_up(dep, cfg, long_text)

    per_round = max(1, cfg.n // cfg.rounds)
    w1 = [BARE, A, B1, C3]
    B.log(f"W1: {cfg.rounds} rounds x {per_round} blocking runs, c={cfg.concurrency}, per setup")
    for i in range(cfg.rounds):
        for key in B.turns(i, w1):
            one = partial(B.blocking_round, t[key], per_round, cfg.concurrency, B.SHORT)
            r = await probes.measure(lambda clock, one=one: one(clock=clock))
            out.add("W1", key, r)
            B.log(f"W1 round {i + 1}/{cfg.rounds} {key:4}: {r['runs_per_s']:7.1f} runs/s")

    c0, c1 = dep.c[0], dep.c[1]
    streamers = [BARE, A, B1, C3, D]
    B.log(f"W2: {cfg.stream_repeats} streamed {cfg.words}-word runs per setup")
    for i in range(cfg.stream_repeats):
        for key in B.turns(i, streamers):
            if key == D:  # POST on r0, follow on r1
                run = partial(follow_run, follow=c1.url)
                one = partial(
                    B.stream_measure, t[C3], long_text, cfg.words, url=c0.run_url, run=run
                )
            elif key == C3:  # the replicas take turns
                url = dep.c[i % len(dep.c)].run_url
                one = partial(B.stream_measure, t[C3], long_text, cfg.words, url=url)
            else:
                one = partial(B.stream_measure, t[key], long_text, cfg.words)
            r = await probes.measure(lambda clock, one=one: one(clock=clock))
            out.add("W2", key, r)
            B.log(f"W2 run {i + 1}/{cfg.stream_repeats} {key:4}: {r['deltas_per_s']:7.0f} deltas/s")

    B.log(f"W3: {cfg.ttfd_runs} short streamed runs per setup, time to first delta")
    marks: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for key in streamers:  # kept-alive connections, to every replica of (c)
            target = t[C3] if key == D else t[key]
            client = httpx.AsyncClient(timeout=httpx.Timeout(60), limits=B._limits(3))
            clients[key] = await stack.enter_async_context(client)
            await B._open_connections(client, target, 1)

        async def w3(clock: B.Clock) -> dict[str, Any]:
            clock("start")
            for i in range(cfg.ttfd_runs):
                for key in B.turns(i, streamers):
                    if key == D:
                        stats = await follow_run(
                            clients[D], c0.run_url, B.SHORT, follow=c1.url, marks=marks
                        )
                    else:
                        url = dep.c[i % len(dep.c)].run_url if key == C3 else t[key].run_url
                        stats = await B.stream_run(clients[key], url, B.SHORT)
                    assert stats.t_first is not None
                    ms = {"first_delta_ms": stats.t_first * 1e3, "end_ms": stats.t_end * 1e3}
                    out.add("W3", key, ms)
            clock("stop")
            return {}

        cost = (await probes.measure(w3))["cost"]
    out.add("W3-d", D, {"marks": marks, "raced": await raced(dep, marks), "cost": cost})
    for key in streamers:
        ms = [r["first_delta_ms"] for r in out.raw["W3"][key]]
        B.log(f"W3 {key:4}: median {statistics.median(ms):.2f} ms")


# ---- the tables ---------------------------------------------------------------------


def summarize(cfg: Config, dep: Deployment, out: B.Collected) -> dict[str, Any]:
    med = statistics.median
    raw = out.raw
    s: dict[str, Any] = {"W1": {}, "W2": {}, "W3": {}, "W1cost": {}, "W2cost": {}}
    for key, rs in raw.get("W1", {}).items():
        n = sum(r["n"] for r in rs)
        s["W1"][key] = n / sum(r["elapsed_s"] for r in rs)
        s["W1cost"][key] = costs([r["cost"] for r in rs], n)
    for key, rs in raw.get("W2", {}).items():
        s["W2"][key] = med(r["deltas_per_s"] for r in rs)
        s["W2cost"][key] = costs([r["cost"] for r in rs], sum(r["deltas"] for r in rs))
        s.setdefault("W2first", {})[key] = med(r["first_delta_ms"] for r in rs)
    for key, rs in raw.get("W3", {}).items():
        ms = [r["first_delta_ms"] for r in rs]
        s["W3"][key] = (med(ms), B._pct(ms, 0.9))
    # Nothing of ours streams through Redis while bare or (a) is measured: stream commands
    # seen then are other clients of a shared Redis (its CPU and counts include them).
    quiet = [r["cost"] for w in ("W1", "W2") for k in (BARE, A) for r in raw.get(w, {}).get(k, [])]
    if quiet:
        calls = sum(
            c["redis_cmds"].get(cmd, 0) for c in quiet for cmd in ("xadd", "xread", "publish")
        )
        s["foreign_per_s"] = calls / max(1e-9, sum(c["wall_s"] for c in quiet))
    if "W3-d" in raw:
        d = raw["W3-d"][D][0]
        s["W3d"] = {
            "raced": d["raced"],
            "runs": len(d["marks"]),
            "post_ms": med(m["post_ms"] for m in d["marks"]) if d["marks"] else 0.0,
            "xread_per_run": d["cost"]["redis_cmds"].get("xread", 0) / max(1, len(d["marks"])),
        }
    return s


def costs(items: list[dict[str, Any]], units: int) -> dict[str, Any]:
    """CPU seconds per 1000 units (runs or deltas), summed over the measurements."""
    k = 1000 / max(1, units)
    procs: dict[str, float] = {}
    cmds: dict[str, float] = {}
    for c in items:
        for name, v in c["procs"].items():
            procs[name] = procs.get(name, 0.0) + v * k
        for name, v in c["redis_cmds"].items():
            cmds[name] = cmds.get(name, 0.0) + v * k
    return {
        "procs": procs,
        "redis": sum(c["redis_s"] for c in items) * k,
        "pg_ours": sum(c["pg_ours_s"] for c in items) * k,
        "pg_aux": sum(c["pg_aux_s"] for c in items) * k,
        "client": sum(c["client_s"] for c in items) * k,
        "wall": sum(c["wall_s"] for c in items) * k,
        "redis_cmds": dict(sorted(cmds.items(), key=lambda kv: -kv[1])),
    }


def owners(key: str) -> list[str]:
    """The server processes a setup's CPU is counted over."""
    return {BARE: ["baseline"], A: ["a"], B1: ["b-r0"], C3: ["c-r0", "c-r1", "c-r2"]}[
        C3 if key == D else key
    ]


def render(cfg: Config, s: dict[str, Any], info: dict[str, Any]) -> str:
    lines = []
    add = lines.append
    keys = [BARE, A, B1, C3, D]

    def ratio(val: float | None, ref: float | None, higher: bool) -> str:
        if not val or not ref:
            return "     -"
        return f"{(val / ref if higher else ref / val):6.2f}"

    add(
        f"{'setup':<35} {'W1 runs/s':>9} {'/(a)':>6} {'/bare':>6} | {'W2 dl/s':>8} {'/(a)':>6}"
        f" {'/bare':>6} | {'W3 ms':>6} {'p90':>6} {'/(a)':>6} {'/bare':>6}"
    )
    add("-" * len(lines[0]))
    for key in keys:
        w1, w2, w3 = s["W1"].get(key), s["W2"].get(key), s["W3"].get(key)
        w3m = w3[0] if w3 else None
        cells = [f"{LABELS[key]:<35}"]
        cells.append(
            f"{w1:9.1f} {ratio(w1, s['W1'].get(A), True)} {ratio(w1, s['W1'].get(BARE), True)}"
            if w1
            else f"{'-':>9} {'-':>6} {'-':>6}"
        )
        cells.append(
            f"| {w2:8.0f} {ratio(w2, s['W2'].get(A), True)} {ratio(w2, s['W2'].get(BARE), True)}"
            if w2
            else f"| {'-':>8} {'-':>6} {'-':>6}"
        )
        ref_a, ref_b = s["W3"].get(A, (None,))[0], s["W3"].get(BARE, (None,))[0]
        cells.append(
            f"| {w3m:6.2f} {w3[1]:6.2f} {ratio(w3m, ref_a, False)} {ratio(w3m, ref_b, False)}"
            if w3
            else "|"
        )
        add(" ".join(cells))
    add(
        f"W1: {cfg.n} blocking `greeter` runs per setup, c={cfg.concurrency}; W2: median of "
        f"{cfg.stream_repeats} runs echoing {cfg.words} words; W3: {cfg.ttfd_runs} short runs."
    )
    add(
        "Ratios: setup/(a) and setup/bare for throughput, (a)/setup and bare/setup for "
        "latency (>= 1: the setup is at least as good)."
    )
    if "W3d" in s:
        d = s["W3d"]
        add(
            f"(d) W3: from sending the POST to r0; the 202 itself takes {d['post_ms']:.1f} ms "
            f"(median); {d['raced']} of {d['runs']} runs had ended before the GET was sent "
            f"(replayed from PostgreSQL, the rest tailed from Redis; {d['xread_per_run']:.2f} "
            "XREAD per run)."
        )
    if "W2first" in s:
        first = ", ".join(f"{k} {v:.1f}" for k, v in s["W2first"].items())
        add(f"W2 time to first delta (ms, median): {first}")
    if s.get("foreign_per_s", 0) > 5:
        add(
            f"NOTE: other clients used the shared Redis meanwhile (~{s['foreign_per_s']:.0f} "
            "XADD/XREAD/PUBLISH per s while only bare or (a) ran): the Redis CPU and call "
            "columns below include them; --private-redis gives clean ones."
        )

    add("")
    add("Where the time goes: CPU seconds per 1000 units, summed over the setup's processes")
    head = (
        f"{'':<35} {'servers':>8} {'(per replica)':<20} {'Redis':>6} {'PG bk':>6} {'PG aux':>6}"
        f" {'client':>6} {'total':>6}  Redis calls per unit"
    )
    for wl, unit in (("W1cost", "W1, per 1000 blocking runs"), ("W2cost", "W2, per 1000 deltas")):
        if not s[wl]:
            continue
        add(head.replace(" " * 35, f"{unit:<35}", 1))
        for key in keys:
            c = s[wl].get(key)
            if c is None:
                continue
            names = owners(key)
            srv = sum(c["procs"][n] for n in names)
            per = " + ".join(f"{c['procs'][n]:.2f}" for n in names) if len(names) > 1 else ""
            total = srv + c["redis"] + c["pg_ours"] + c["pg_aux"] + c["client"]
            calls = ", ".join(f"{k} {v / 1000:.2f}" for k, v in list(c["redis_cmds"].items())[:4])
            add(
                f"{LABELS[key]:<35} {srv:8.2f} {per:<20} {c['redis']:6.2f} {c['pg_ours']:6.2f}"
                f" {c['pg_aux']:6.2f} {c['client']:6.2f} {total:6.2f}  {calls}"
            )
    add(
        "servers: llm-do / baseline processes (all threads, incl. SQLite writer); Redis: INFO "
        "used_cpu_sys+user (whole server); PG bk: the replicas' PostgreSQL backends; PG aux: "
        "PostgreSQL's walwriter, checkpointer, autovacuum...; client: this load generator. "
        "1000 runs x s/1000 = ms per run; per 1000 deltas: ms per delta."
    )
    add(
        f"Machine: {info['cpus']} cores shared by the client, {info['servers']} server "
        f"processes, PostgreSQL {info['pg']} and Redis {info['redis']} (load average "
        f"{' '.join(info['load_before'])} before, {' '.join(info['load_after'])} after): "
        "they compete for the cores, so a setup with more processes pays for the others' "
        "CPU in wall-clock rates."
    )
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run with small numbers")
    p.add_argument("-n", "--n", type=int, help="W1: blocking runs per setup (default 2000)")
    p.add_argument("--stream-repeats", type=int, help="W2: runs per setup (default 5)")
    p.add_argument("--ttfd-runs", type=int, help="W3: runs per setup (default 50)")
    p.add_argument("--pg", default=PG_URL, help=f"PostgreSQL URL (default {PG_URL})")
    p.add_argument("--redis", default=REDIS_URL, help=f"Redis URL (default {REDIS_URL})")
    p.add_argument(
        "--private-redis",
        action="store_true",
        help="start a redis-server of our own instead of using --redis, so that the Redis "
        "CPU and command counts are ours alone",
    )
    p.add_argument("--out", type=Path, help="result JSON path (default bench/results/...)")
    args = p.parse_args(argv)
    cfg = Config()
    if args.quick:
        cfg = Config(
            n=128, rounds=2, words=1000, stream_repeats=1, ttfd_runs=8, warmup_runs=32, quick=True
        )
    for name in ("n", "stream_repeats", "ttfd_runs"):
        if (value := getattr(args, name)) is not None:
            if value < 1:
                p.error(f"--{name.replace('_', '-')} must be at least 1")
            setattr(cfg, name, value)
    return cfg, args


async def versions(pg_url: str, redis_url: str) -> tuple[str, str]:
    conn = await asyncpg.connect(pg_url, timeout=5)
    try:
        pg = (await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()
    client = aioredis.from_url(redis_url, socket_timeout=5)
    try:
        rd = (await client.info("server"))["redis_version"]
    finally:
        await client.aclose()
    return pg, str(rd)


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    B.RESULTS.mkdir(parents=True, exist_ok=True)
    tag = time.strftime("replicas-%Y%m%d-%H%M%S") + ("-quick" if cfg.quick else "")
    out_path = args.out or B.RESULTS / f"{tag}.json"
    signal.signal(signal.SIGTERM, B._interrupt)
    collected = B.Collected()
    started = time.time()
    before = B.machine()
    try:
        pg_version, redis_version = asyncio.run(versions(args.pg, args.redis))
    except Exception as exc:
        B.log(f"FAILED: PostgreSQL at {args.pg} or Redis at {args.redis} not reachable: {exc}")
        return 1
    if args.private_redis:
        redis_version += " (private)"
    with tempfile.TemporaryDirectory(prefix="llm-do-replicas-") as data_dir:
        private = B.PrivateRedis(Path(data_dir)) if args.private_redis else None
        if private is not None:
            private.start()
            args.redis = private.url
            asyncio.run(private.ready())
            B.log(f"private redis-server on port {private.port}")
        dep = Deployment(tag, Path(data_dir), args.pg, args.redis)
        dep.build()
        keep_logs = False
        try:
            asyncio.run(dep.create_namespaces())
            B.log(f"schemas / Redis prefixes: {', '.join(dep.namespaces())}")
            # The first replica of each shared setup creates its schema's tables; the others
            # start once it is up (two replicas running CREATE TABLE IF NOT EXISTS at the
            # same moment can collide on pg_type and one of them exits).
            first = [s for s in dep.servers if s not in dep.c[1:]]
            for server in first:
                server.start()

            async def go() -> None:
                await asyncio.gather(*(server.wait_ready(90) for server in first))
                for server in dep.c[1:]:
                    server.start()
                await asyncio.gather(*(server.wait_ready(90) for server in dep.c[1:]))
                B.log("servers ready")
                probes = Probes(dep)
                await probes.open()
                try:
                    await run_bench(cfg, dep, probes, collected)
                finally:
                    await probes.close()

            asyncio.run(go())
        except B.BenchError as exc:
            keep_logs = True
            B.log(f"FAILED: {exc}")
            B.log("server logs: " + " ".join(str(s.log_path) for s in dep.servers))
            return 1
        except KeyboardInterrupt:
            B.log("interrupted")
            return 130
        finally:
            for server in reversed(dep.servers):
                server.stop()
                if not keep_logs:
                    server.log_path.unlink(missing_ok=True)
            asyncio.run(dep.drop_namespaces())
            if private is not None:
                private.stop()
    summary = summarize(cfg, dep, collected)
    info = {
        "cpus": os.cpu_count(),
        "servers": len(dep.servers),
        "pg": pg_version,
        "redis": redis_version,
        "load_before": before["loadavg"],
        "load_after": B.machine()["loadavg"],
    }
    table = render(cfg, summary, info)
    result = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "config": dict(vars(cfg)),
        "machine": {**before, **info},
        "summary": summary,
        "raw": collected.raw,
        "table": table,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    B.log(f"done in {result['duration_s']} s; results in {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
