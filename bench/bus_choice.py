"""Why the bus carries a run's frames as one Redis Stream per run, not pub/sub plus the store.

An owner publishes 5,000 frames of about 200 bytes the way app/runs/redis_bus.py does:
frames gather while the previous send is out, and each send carries every frame gathered
since (one batch). The transports compared:

  stream+expire  a pipeline of XADD (id `{last seq}-0`, MAXLEN ~10000) + EXPIRE per batch:
                 what the app sends
  stream         XADD alone per batch (what the EXPIRE costs)
  pubsub         one PUBLISH per batch

  (i)   publish throughput (frames/s, the owner producing as fast as it can) and CPU per
        frame of the owner process and of Redis;
  (ii)  delivery latency, frame made -> frame read by a follower in another process on its
        own connection (stream: XREAD BLOCK from its last id; pub/sub: subscribed), p50/p99,
        with 1 and 10 followers, at full speed and paced at 2,000 frames/s;
  (iii) a follower joining mid-run with a Last-Event-ID: stream = one XREAD from that id;
        pub/sub = SUBSCRIBE, then SELECT the missed part from a PostgreSQL table shaped like
        app/runs/postgres.py's event_chunks, written with the store's 50 ms group commit:
        how long the catch-up takes and how many frames are in neither (the gap);
  (iv)  a follower across a Redis restart: frames it has to take from the store.

Redis is a private `redis-server` this script starts on a free port (same binary as the
machine's; its CPU is then ours alone, and (iv) can restart it); PostgreSQL is the machine's,
in a fresh schema dropped at the end. Everything shares the machine's cores.

    .venv/bin/python bench/bus_choice.py           # about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

import bench as B  # bench/bench.py: this script's folder is first on sys.path

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
FRAMES = 5000
FRAME_BYTES = 200
PACED_PER_S = 2000
TICK_S = 0.005  # paced: PACED_PER_S * TICK_S frames every tick
LINGER_S = 0.05  # the PostgreSQL store's group commit (app/runs/postgres.py)
STREAM_MAXLEN = 10_000
TTL_S = 24 * 3600
TRANSPORTS = ("stream+expire", "stream", "pubsub")
_ERRORS = (RedisError, OSError)


def frame(seq: int) -> bytes:
    """An SSE frame of FRAME_BYTES carrying the time it was made (perf_counter: one
    monotonic clock for every process on the machine)."""
    head = b'id: %d\nevent: text.delta\ndata: {"seq":%d,"t":%.7f,"delta":"' % (
        seq,
        seq,
        time.perf_counter(),
    )
    return head + b"x" * max(1, FRAME_BYTES - len(head) - 4) + b'"}\n\n'


def parse(frames: bytes) -> list[tuple[int, float]]:
    """(seq, made at) of each frame."""
    out = []
    for part in frames.split(b"\n\n"):
        if part:
            i = part.index(b'"t":') + 4
            out.append((int(part[4 : part.index(b"\n")]), float(part[i : part.index(b",", i)])))
    return out


def pct(values: list[float], q: float) -> float:
    return B._pct(values, q) if values else float("nan")


def client(url: str) -> aioredis.Redis:
    """No retries, short timeouts: a failure shows at once (the restart experiment)."""
    return aioredis.from_url(
        url, socket_connect_timeout=0.5, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )


async def redis_cpu(r: aioredis.Redis) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


# ---- the owner ----------------------------------------------------------------------


def sender(transport: str, r: aioredis.Redis, key: str) -> Callable[..., Awaitable[None]]:
    """One batch out, as the app sends it."""

    async def send(first: int, last: int, data: bytes, end: bool) -> None:
        if transport == "pubsub":
            await r.publish(key, data)
            return
        if transport == "none":
            return
        fields: dict[str, Any] = {"first": first, "frames": data}
        if end:
            fields["end"] = 1
        async with r.pipeline(transaction=False) as pipe:
            pipe.xadd(key, fields, id=f"{last}-0", maxlen=STREAM_MAXLEN, approximate=True)
            if transport == "stream+expire":
                pipe.expire(key, TTL_S)
            await pipe.execute()

    return send


@dataclass
class Owner:
    """Makes FRAMES frames (full speed: yielding to the loop after each one, as the echo
    model does; or paced) and sends them in batches of whatever gathered meanwhile."""

    sends: list[Callable[..., Awaitable[None]]]
    paced: bool
    store: Store | None = None
    frames: list[bytes] = field(default_factory=list)
    batches: int = 0
    failed: int = 0
    sent_at: float = 0.0

    async def run(self) -> None:
        wake = asyncio.Event()

        async def produce() -> None:
            per_tick = int(PACED_PER_S * TICK_S)
            t0 = time.perf_counter()
            for seq in range(1, FRAMES + 1):
                data = frame(seq)
                self.frames.append(data)
                if self.store is not None:
                    self.store.append(seq, data)
                wake.set()
                if not self.paced:
                    await asyncio.sleep(0)
                elif seq % per_tick == 0:  # on a fixed schedule: PACED_PER_S on average
                    await asyncio.sleep(max(0.0, t0 + seq / PACED_PER_S - time.perf_counter()))

        async def publish() -> None:
            sent = 0
            while sent < FRAMES:
                await wake.wait()
                wake.clear()
                end = len(self.frames)
                if end == sent:
                    continue
                data = b"".join(self.frames[sent:end])
                for send in self.sends:
                    try:
                        await send(sent + 1, end, data, end == FRAMES)
                    except _ERRORS:
                        self.failed += 1  # Redis is down: the frames are in the store
                self.batches += 1
                sent = end
            self.sent_at = time.perf_counter()

        await asyncio.gather(produce(), publish())


class Store:
    """app/runs/postgres.py's write path in miniature: frames buffered, one transaction
    per LINGER_S with one event_chunks row per batch."""

    def __init__(self, pool: asyncpg.Pool, run_id: str) -> None:
        self.pool, self.run_id = pool, run_id
        self.pending: list[tuple[int, bytes]] = []
        self.wake = asyncio.Event()
        self.last = 0
        self.task = asyncio.create_task(self._loop())

    def append(self, seq: int, data: bytes) -> None:
        self.pending.append((seq, data))
        self.wake.set()

    async def _loop(self) -> None:
        while True:
            await self.wake.wait()
            await asyncio.sleep(LINGER_S)
            self.wake.clear()
            rows, self.pending = self.pending, []
            if not rows:
                continue
            body = b"".join(d for _, d in rows)
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO event_chunks VALUES ($1, $2, $3, $4, $5)",
                    self.run_id,
                    rows[0][0],
                    rows[-1][0],
                    "text.delta",
                    body,
                )
            self.last = rows[-1][0]

    async def read(self, after: int) -> list[tuple[int, float]]:
        rows = await self.pool.fetch(
            "SELECT body FROM event_chunks WHERE run_id = $1 AND last_seq > $2 ORDER BY first_seq",
            self.run_id,
            after,
        )
        return [f for r in rows for f in parse(r["body"]) if f[0] > after]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


# ---- followers (another process) ----------------------------------------------------


async def follower_main(args: argparse.Namespace) -> None:
    """`--follow`: args.followers connections, each reading every frame; prints "ready",
    then one JSON line: latencies (ms) and this process's CPU."""
    conns = [client(args.url) for _ in range(args.followers)]
    lat: list[float] = []
    seen = [0] * args.followers
    subs = []
    if args.transport == "pubsub":
        for c in conns:
            ps = c.pubsub(ignore_subscribe_messages=True)
            await ps.subscribe(args.key)
            await ps.get_message(timeout=5)  # the confirmation (returns None)
            subs.append(ps)
    else:
        for c in conns:
            await c.ping()
    print("ready", flush=True)
    cpu0 = time.process_time()

    async def stream_one(i: int) -> None:
        cursor = "0-0"
        while seen[i] < FRAMES:
            reply = await conns[i].xread({args.key: cursor}, count=1000, block=10_000)
            if not reply:
                raise B.BenchError(f"follower {i}: nothing for 10 s at {cursor}")
            now = time.perf_counter()
            for entry_id, fields in reply[0][1]:
                cursor = entry_id
                for seq, made in parse(fields[b"frames"]):
                    lat.append((now - made) * 1e3)
                    seen[i] = seq

    async def pubsub_one(i: int) -> None:
        while seen[i] < FRAMES:
            msg = await subs[i].get_message(timeout=10)
            if msg is None:
                continue
            now = time.perf_counter()
            for seq, made in parse(msg["data"]):
                lat.append((now - made) * 1e3)
                seen[i] = seq

    one = pubsub_one if args.transport == "pubsub" else stream_one
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(args.followers))), 60)
    cpu = time.process_time() - cpu0
    for ps in subs:
        await ps.aclose()
    for c in conns:
        await c.aclose()
    print(json.dumps({"lat": lat, "cpu_s": cpu, "frames": len(lat)}), flush=True)


async def spawn_followers(transport: str, url: str, key: str, n: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--follow",
        transport,
        "--url",
        url,
        "--key",
        key,
        "--followers",
        str(n),
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 26,  # the result line holds every latency
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if line.strip() != b"ready":
        raise B.BenchError(f"followers did not start: {line!r}")
    return proc


# ---- (i) + (ii) ---------------------------------------------------------------------


async def one_publish(
    r: aioredis.Redis, redis_url: str, transport: str, followers: int, paced: bool
) -> dict[str, Any]:
    key = f"bus-choice:{secrets.token_hex(4)}"
    procs = None
    if followers:
        procs = await spawn_followers(transport, redis_url, key, followers)
        if transport == "pubsub":
            subs = dict(await r.pubsub_numsub(key))
            if subs.get(key.encode(), 0) != followers:
                raise B.BenchError(f"{subs} subscribers, expected {followers}")
    owner = Owner([sender(transport, r, key)], paced)
    rcpu0, cpu0, t0 = await redis_cpu(r), time.process_time(), time.perf_counter()
    await owner.run()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    row: dict[str, Any] = {
        "transport": transport,
        "paced": paced,
        "followers": followers,
        "frames_per_s": FRAMES / elapsed,
        "batches": owner.batches,
        "owner_cpu_s": cpu,
    }
    if procs is not None:
        assert procs.stdout is not None
        line = await asyncio.wait_for(procs.stdout.readline(), 60)
        await procs.wait()
        got = json.loads(line)
        if got["frames"] != FRAMES * followers:
            raise B.BenchError(f"{transport}: {got['frames']} frames delivered")
        row |= {
            "p50_ms": statistics.median(got["lat"]),
            "p99_ms": pct(got["lat"], 0.99),
            "follower_cpu_s": got["cpu_s"],
        }
    row["redis_cpu_s"] = await redis_cpu(r) - rcpu0
    await r.delete(key)
    lat = f", p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms" if procs else ""
    B.log(
        f"{'paced' if paced else 'full speed':10} {transport:13} x{followers:<2}"
        f" {row['frames_per_s']:8.0f} frames/s, {owner.batches} batches{lat}"
    )
    return row


async def batch_cost(r: aioredis.Redis, transport: str, batches: int = 2000) -> dict[str, Any]:
    """Owner and Redis CPU of sending `batches` batches of 20 frames one after another
    (nothing else running in the owner, nobody following)."""
    key = f"bus-choice:{secrets.token_hex(4)}"
    send = sender(transport, r, key)
    data = b"".join(frame(i) for i in range(1, 21))
    rcpu0, cpu0, t0 = await redis_cpu(r), time.process_time(), time.perf_counter()
    for i in range(batches):
        await send(i * 20 + 1, i * 20 + 20, data, False)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    redis_s = await redis_cpu(r) - rcpu0
    await r.delete(key)
    return {
        "transport": transport,
        "owner_us_per_batch": cpu / batches * 1e6,
        "redis_us_per_batch": redis_s / batches * 1e6,
        "round_trip_us": elapsed / batches * 1e6,
    }


async def throughput(redis_url: str, repeats: int) -> list[dict[str, Any]]:
    """Full speed `repeats` times (configurations taking turns), then paced once."""
    r = client(redis_url)
    configs = [("none", 0)] + [(t, n) for t in TRANSPORTS for n in (1, 10)]
    rows: list[dict[str, Any]] = []
    try:
        for i in range(repeats):
            for transport, followers in B.turns(i, configs):
                rows.append(await one_publish(r, redis_url, transport, followers, False))
        for transport, followers in configs:
            rows.append(await one_publish(r, redis_url, transport, followers, True))
        for i in range(repeats):
            for transport in B.turns(i, list(TRANSPORTS)):
                rows.append({**await batch_cost(r, transport), "kind": "batch"})
    finally:
        await r.aclose()
    return rows


# ---- (iii) joining mid-run ----------------------------------------------------------


async def joins(redis_url: str, pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """A paced run published to both a stream and a channel and written to the store;
    four followers join at 0.5 s intervals with Last-Event-ID = half the frames so far."""
    r = client(redis_url)
    key = f"bus-choice:{secrets.token_hex(4)}"
    store = Store(pool, key)
    owner = Owner([sender("stream+expire", r, key), sender("pubsub", r, key + ":ch")], True, store)
    results: list[dict[str, Any]] = []

    async def join() -> None:
        last_id = len(owner.frames) // 2
        # stream: one XREAD from the id (the entry holding last_id+1 may start earlier)
        t0 = time.perf_counter()
        reply = await r.xread({key: f"{last_id}-0"}, count=100_000)
        got = [f for _, fields in reply[0][1] for f in parse(fields[b"frames"]) if f[0] > last_id]
        stream_ms = (time.perf_counter() - t0) * 1e3
        contiguous = [s for s, _ in got] == list(range(last_id + 1, last_id + 1 + len(got)))
        # pub/sub: subscribe, then read what was missed from the store
        sub = client(redis_url)
        ps = sub.pubsub(ignore_subscribe_messages=True)
        t0 = time.perf_counter()
        await ps.subscribe(key + ":ch")
        await ps.get_message(timeout=1, ignore_subscribe_messages=False)  # the confirmation
        stored = await store.read(last_id)
        pubsub_ms = (time.perf_counter() - t0) * 1e3
        have = stored[-1][0] if stored else last_id
        msg = None
        while msg is None:
            msg = await ps.get_message(timeout=1)
        first_live = parse(msg["data"])[0][0]
        # the gap: frames in neither; wait until the store has them
        gap = max(0, first_live - 1 - have)
        t_gap = time.perf_counter()
        while gap and have < first_live - 1:  # poll the store, as such a joiner would
            await asyncio.sleep(0.005)
            more = await store.read(have)
            have = more[-1][0] if more else have
        wait_ms = (time.perf_counter() - t_gap) * 1e3 if gap else 0.0
        await ps.aclose()
        await sub.aclose()
        results.append(
            {
                "last_event_id": last_id,
                "published": len(owner.frames),
                "stream_ms": stream_ms,
                "stream_frames": len(got),
                "stream_contiguous": contiguous,
                "pubsub_ms": pubsub_ms,
                "store_frames": len(stored),
                "gap_frames": gap,
                "gap_wait_ms": wait_ms,
            }
        )

    async def joiners() -> None:
        for _ in range(4):
            await asyncio.sleep(0.5)
            await join()

    try:
        await asyncio.gather(owner.run(), joiners())
    finally:
        await store.close()
        await r.delete(key)
        await r.aclose()
    return results


# ---- (iv) across a Redis restart ----------------------------------------------------


async def restart(redis: B.PrivateRedis, pool: asyncpg.Pool) -> dict[str, Any]:
    """A paced run (stream + channel + store) with one follower of each kind, both
    reconnecting every 50 ms while Redis is away; Redis is stopped at 1.0 s and started
    again 0.5 s later. Counts the frames each follower got from Redis and the ones it has
    to take from the store."""
    r = client(redis.url)
    key = f"bus-choice:{secrets.token_hex(4)}"
    store = Store(pool, key)
    owner = Owner([sender("stream+expire", r, key), sender("pubsub", r, key + ":ch")], True, store)
    got: dict[str, set[int]] = {"stream": set(), "pubsub": set()}
    arrivals: dict[str, list[tuple[float, int]]] = {"stream": [], "pubsub": []}
    resumed: dict[str, float] = {}
    down_at = [0.0]

    async def stream_follower() -> None:
        c = client(redis.url)
        cursor = 0
        while cursor < FRAMES:
            try:
                reply = await c.xread({key: f"{cursor}-0"}, count=1000, block=200)
            except _ERRORS:
                await asyncio.sleep(0.05)
                continue
            for _id, fields in reply[0][1] if reply else []:
                frames = parse(fields[b"frames"])
                arrivals["stream"].append((time.perf_counter(), frames[0][0]))
                got["stream"].update(s for s, _ in frames)
                cursor = frames[-1][0]
        await c.aclose()

    async def pubsub_follower() -> None:
        while True:
            c = client(redis.url)
            ps = c.pubsub(ignore_subscribe_messages=True)
            try:
                await ps.subscribe(key + ":ch")
                while True:
                    msg = await ps.get_message(timeout=0.2)
                    if msg is None:
                        if owner.sent_at:
                            return
                        continue
                    frames = parse(msg["data"])
                    arrivals["pubsub"].append((time.perf_counter(), frames[0][0]))
                    got["pubsub"].update(s for s, _ in frames)
            except _ERRORS:
                await asyncio.sleep(0.05)
            finally:
                with contextlib.suppress(*_ERRORS):
                    await ps.aclose()
                with contextlib.suppress(*_ERRORS):
                    await c.aclose()

    async def chaos() -> None:
        await asyncio.sleep(1.0)
        down_at[0] = time.perf_counter()
        seq_down = len(owner.frames)
        await asyncio.to_thread(redis.stop)
        await asyncio.sleep(0.5)
        redis.start()
        await redis.ready()
        resumed["redis"] = time.perf_counter()
        resumed["seq_down"] = seq_down
        resumed["seq_up"] = len(owner.frames)

    try:
        everyone = asyncio.gather(owner.run(), stream_follower(), pubsub_follower(), chaos())
        await asyncio.wait_for(everyone, 60)
        await asyncio.sleep(LINGER_S * 3)  # the store's last commit
        stored = {s for s, _ in await store.read(0)}
    finally:
        await store.close()
        with contextlib.suppress(*_ERRORS):
            await r.delete(key)
        await r.aclose()
    everything = set(range(1, FRAMES + 1))
    out: dict[str, Any] = {
        "down_frames": resumed["seq_up"] - resumed["seq_down"],
        "redis_down_ms": (resumed["redis"] - down_at[0]) * 1e3,
        "failed_sends": owner.failed,
        "store_complete": stored == everything,
    }
    for kind in ("stream", "pubsub"):
        missing = sorted(everything - got[kind])
        out[kind] = {
            "from_redis": len(got[kind]),
            "missing": len(missing),
            "missing_range": [missing[0], missing[-1]] if missing else None,
            "in_store": set(missing) <= stored,
            # the first frames it got that were made after Redis was back
            "resumed_after_up_ms": next(
                ((t - resumed["redis"]) * 1e3 for t, s in arrivals[kind] if s > resumed["seq_up"]),
                float("nan"),
            ),
        }
    return out


# ---- the table ----------------------------------------------------------------------


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, int, bool], dict[str, float]]:
    """Per (transport, followers, paced): the median of each figure over the repeats."""
    groups: dict[tuple[str, int, bool], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("kind") == "batch":
            continue
        groups.setdefault((r["transport"], r["followers"], r["paced"]), []).append(r)
    out = {}
    for k, rs in groups.items():
        figures = [f for f in rs[0] if isinstance(rs[0][f], float | int) and f != "paced"]
        out[k] = {f: statistics.median(r[f] for r in rs) for f in figures}
        out[k]["n"] = len(rs)
    return out


def render(rows: list[dict[str, Any]], joined: list[dict[str, Any]], rs: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    agg = aggregate(rows)
    none = agg[("none", 0, False)]
    reps = int(none["n"])
    add(
        f"(i)+(ii) {FRAMES} frames of {FRAME_BYTES} B, batched as the app batches; full speed: "
        f"median of {reps} runs; paced: {PACED_PER_S} frames/s, one run"
    )
    head = (
        f"{'transport':<14} {'fol':>3} {'frames/s':>9} {'batch':>6} {'owner':>6} {'Redis':>6}"
        f" {'p50 ms':>7} {'p99 ms':>7} | {'p50 ms':>7} {'p99 ms':>7}"
    )
    add(f"{'':<14} {'':>3} {'full speed':-^45} | {'paced':-^15}")
    add(head)
    add("-" * len(head))
    for (transport, fol, paced), r in agg.items():
        if paced:
            continue
        p = agg.get((transport, fol, True), {})

        def lat(x: dict[str, float]) -> str:
            return f"{x['p50_ms']:7.2f} {x['p99_ms']:7.2f}" if "p50_ms" in x else f"{'-':>15}"

        add(
            f"{transport:<14} {fol:>3} {r['frames_per_s']:9.0f} {FRAMES / r['batches']:6.1f}"
            f" {r['owner_cpu_s'] / FRAMES * 1e6:6.1f} {r['redis_cpu_s'] / FRAMES * 1e6:6.1f}"
            f" {lat(r)} | {lat(p)}"
        )
    add(
        "fol: followers (another process, one connection each); batch: frames per batch; "
        "owner, Redis: CPU us per frame of the owner process (making the frames too: see "
        "`none`) and of redis-server. Latency: frame made -> read by a follower; at full "
        "speed with 10 followers it is mostly the one follower process falling behind."
    )
    add("")
    add("owner-side cost of one batch of 20 frames (4 KB), sent one after another, no follower")
    head = f"{'transport':<14} {'owner CPU us':>12} {'Redis CPU us':>12} {'round trip us':>13}"
    add(head)
    add("-" * len(head))
    for transport in TRANSPORTS:
        runs = [r for r in rows if r.get("kind") == "batch" and r["transport"] == transport]
        figures = ("owner_us_per_batch", "redis_us_per_batch", "round_trip_us")
        med = {f: statistics.median(r[f] for r in runs) for f in figures}
        add(
            f"{transport:<14} {med['owner_us_per_batch']:12.0f} {med['redis_us_per_batch']:12.0f}"
            f" {med['round_trip_us']:13.0f}"
        )
    add("")
    add("(iii) joining mid-run with Last-Event-ID (paced run, store with 50 ms group commit)")
    head = (
        f"{'Last-Event-ID':>13} {'made':>5} | {'stream: XREAD ms':>16} {'frames':>6} {'gap':>4}"
        f" | {'pubsub: SUB+SELECT ms':>21} {'from store':>10} {'gap':>4} {'gap closes ms':>13}"
    )
    add(head)
    add("-" * len(head))
    for j in joined:
        add(
            f"{j['last_event_id']:>13} {j['published']:>5} | {j['stream_ms']:16.2f}"
            f" {j['stream_frames']:>6} {0 if j['stream_contiguous'] else 'YES':>4}"
            f" | {j['pubsub_ms']:21.2f} {j['store_frames']:>10} {j['gap_frames']:>4}"
            f" {j['gap_wait_ms']:13.1f}"
        )
    add(
        "gap: frames in neither place when the joiner starts reading live; a pub/sub joiner "
        "must wait for the store's next commit (up to 50 ms + the commit) or show a hole."
    )
    add("")
    add(
        f"(iv) Redis stopped mid-run for {rs['redis_down_ms']:.0f} ms "
        f"({rs['down_frames']} frames made meanwhile, {rs['failed_sends']} failed sends; "
        f"store complete: {rs['store_complete']})"
    )
    for kind in ("stream", "pubsub"):
        k = rs[kind]
        rng = f"seq {k['missing_range'][0]}..{k['missing_range'][1]}" if k["missing_range"] else ""
        add(
            f"  {kind:<7} follower: {k['from_redis']} frames from Redis, {k['missing']} to take "
            f"from the store {rng} (all there: {k['in_store']}); live again "
            f"{k['resumed_after_up_ms']:.0f} ms after Redis was back"
        )
    add(
        "  stream: the follower resumes XREAD from its last id; the first entry after the "
        "restart says where it starts (`first`), so the hole is known exactly and filled from "
        "the store. pub/sub: what was published while the follower was not subscribed is gone; "
        "it must notice by seq, and a lost message after the run's last one goes unnoticed."
    )
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------


async def run_all(redis: B.PrivateRedis, pg_url: str, repeats: int) -> dict[str, Any]:
    await redis.ready()
    rows = await throughput(redis.url, repeats)
    schema = f"llmdo_bus_choice_{secrets.token_hex(3)}"
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(
            f'CREATE TABLE "{schema}".event_chunks (run_id TEXT NOT NULL, first_seq BIGINT '
            "NOT NULL, last_seq BIGINT NOT NULL, types TEXT NOT NULL, body BYTEA NOT NULL, "
            "PRIMARY KEY (run_id, first_seq))"
        )
        pool = await asyncpg.create_pool(
            pg_url, min_size=2, max_size=4, server_settings={"search_path": schema}
        )
        try:
            B.log("(iii) joins")
            joined = await joins(redis.url, pool)
            B.log("(iv) Redis restart")
            rs = await restart(redis, pool)
        finally:
            await pool.close()
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    return {"throughput": rows, "joins": joined, "restart": rs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pg", default=PG_URL, help=f"PostgreSQL URL (default {PG_URL})")
    p.add_argument("--repeats", type=int, default=3, help="full-speed runs per transport (3)")
    p.add_argument("--follow", choices=TRANSPORTS, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    p.add_argument("--followers", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.follow:
        args.transport = args.follow
        asyncio.run(follower_main(args))
        return 0
    signal.signal(signal.SIGTERM, B._interrupt)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="llm-do-bus-choice-") as folder:
        redis = B.PrivateRedis(Path(folder))
        redis.start()
        B.log(f"private redis-server on port {redis.port}")
        try:
            result = asyncio.run(run_all(redis, args.pg, args.repeats))
        except B.BenchError as exc:
            B.log(f"FAILED: {exc}")
            return 1
        except KeyboardInterrupt:
            B.log("interrupted")
            return 130
        finally:
            redis.stop()
    table = render(result["throughput"], result["joins"], result["restart"])
    B.RESULTS.mkdir(parents=True, exist_ok=True)
    out = B.RESULTS / time.strftime("bus-choice-%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps({**result, "machine": B.machine(), "table": table}, indent=2) + "\n")
    print(table)
    B.log(f"done in {time.time() - started:.1f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
