"""RedisBus in-process (app/runs/redis_bus.py) against a real Redis: a run's frames reach Redis
before a follower on the owner sees them, a follower on another bus gets the same bytes live
and from any `after`, holes in a run's stream are filled from the store once and in order,
control requests reach the named replica and come back, and leases and claims hold.

The machine's Redis is used with a key prefix of each test's own (deleted afterwards); a
test that pauses or stops Redis starts its own `redis-server`. Without Redis they skip
(fail under CI).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import anyio
import pytest
import redis.asyncio as aredis

from app.runs import MemoryRunStore, RunLog, RunRecord, frame
from app.runs.redis_bus import RedisBus
from app.runs.store import EventRow, RunStore
from app.runtime import Unavailable
from tests.e2e.replicas_support import redis_bus_url, redis_server

pytestmark = pytest.mark.anyio


# ---- helpers ---------------------------------------------------------------------------------


def split_url(url: str) -> tuple[str, str]:
    """(the Redis URL without `?prefix=`, the prefix)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    return urlunsplit(parts._replace(query="")), query.get("prefix", "llm-do")


@dataclass
class Run:
    """A made-up run: its events as store rows and as the SSE frames the owner shows."""

    run_id: str
    rows: list[EventRow]

    @classmethod
    def make(cls, count: int) -> Run:
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        rows = []
        for seq in range(1, count + 1):
            kind = "run.started" if seq == 1 else "text.delta"
            if seq == count:
                kind = "run.completed"
            body = {"run_id": run_id, "seq": seq, "type": kind, "delta": f"w{seq} é✓ "}
            rows.append((seq, kind, json.dumps(body, separators=(",", ":")).encode()))
        return cls(run_id, rows)

    @property
    def frames(self) -> list[bytes]:
        return [frame(*row) for row in self.rows]

    def joined(self, start: int = 0, end: int | None = None) -> bytes:
        return b"".join(self.frames[start:end])

    def record(self, owner: str) -> RunRecord:
        return RunRecord(self.run_id, "w", "running", time.time(), owner=owner)

    def store_rows(self, store: RunStore, start: int, end: int) -> None:
        for row in self.rows[start:end]:
            store.append(self.run_id, *row)

    def add(self, log: RunLog, store: RunStore, start: int, end: int) -> None:
        """What the manager does per event: queue it for the store, append it to the log."""
        self.store_rows(store, start, end)
        for f in self.frames[start:end]:
            log.append(f)


async def refuse(message: dict[str, Any]) -> dict[str, Any]:
    return {"error": {"type": "error", "message": "this bus takes no requests"}}


@asynccontextmanager
async def opened(
    url: str,
    replica: str,
    store: RunStore,
    on_control: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] = refuse,
    lease_s: float = 30,
) -> AsyncIterator[RedisBus]:
    bus = RedisBus(url, replica_id=replica, lease_s=lease_s)
    await bus.open(store, on_control)
    try:
        yield bus
    finally:
        await bus.close()


@dataclass
class Reader:
    """An async iterator of byte chunks (a follower, a tail) read in a task; times each chunk."""

    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    done: bool = False

    @property
    def bytes(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    async def read(self, source: AsyncIterator[bytes]) -> None:
        async for chunk in source:
            self.chunks.append((time.monotonic(), chunk))
        self.done = True


async def until(check: Callable[[], bool], *, within: float, what: str) -> None:
    """Poll a condition another task makes true; fail after `within` seconds."""
    try:
        with anyio.fail_after(within):
            while True:
                if check():
                    return
                await anyio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {within} s waiting for {what}") from None


@pytest.fixture
async def url() -> AsyncIterator[str]:
    """The machine's Redis, with a prefix of this test's own whose keys are deleted after."""
    bus_url = redis_bus_url()
    yield bus_url
    base, prefix = split_url(bus_url)
    client = aredis.from_url(base)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def raw(url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.from_url(split_url(url)[0])
    yield client
    await client.aclose()


def stream_key(url: str, run_id: str) -> str:
    return f"{split_url(url)[1]}:run:{run_id}"


async def stream_bytes(client: aredis.Redis, key: str) -> bytes:
    return b"".join(fields[b"frames"] for _id, fields in await client.xrange(key))


# ---- publish: Redis first, then the owner's followers ----------------------------------------


async def test_a_local_follower_sees_frames_only_once_they_are_on_redis(tmp_path: Path) -> None:
    """Redis is paused for writes while the frames are published: the owner's follower sees
    nothing until the pause ends and the frames are in the run's stream."""
    with redis_server(tmp_path / "redis") as server:
        url = server.url + "?prefix=t"
        raw = aredis.from_url(server.url)
        store = MemoryRunStore()
        run = Run.make(8)
        key = stream_key(url, run.run_id)
        await store.create(run.record("a"))
        try:
            with anyio.fail_after(20):
                async with opened(url, "a", store) as bus, anyio.create_task_group() as tg:
                    log = RunLog(hold=True)
                    local = Reader()
                    tg.start_soon(local.read, log.follow())

                    run.add(log, store, 0, 3)  # appended, not published: nothing to show
                    await anyio.sleep(0.2)
                    assert local.chunks == [] and log.visible == 0

                    await raw.client_pause(1000, all=False)  # writes wait for 1 s
                    paused_until = time.monotonic() + 1.0
                    bus.publish(run.run_id, log)
                    await anyio.sleep(0.5)
                    assert local.chunks == [], "shown before it reached Redis"
                    assert await raw.xlen(key) == 0

                    await until(lambda: bool(local.chunks), within=5, what="the frames")
                    assert local.chunks[0][0] >= paused_until - 0.05
                    assert local.bytes == run.joined(0, 3)
                    assert await stream_bytes(raw, key) == run.joined(0, 3)

                    run.add(log, store, 3, 8)
                    log.close()
                    bus.publish(run.run_id, log)
                    await until(lambda: local.done, within=5, what="the follower to end")
            assert local.bytes == run.joined()
            entries = await raw.xrange(key)
            assert await stream_bytes(raw, key) == run.joined()
            assert b"end" in entries[-1][1] and all(b"end" not in f for _, f in entries[:-1])
        finally:
            await raw.aclose()


class GatedFlushStore(MemoryRunStore):
    """A memory store whose flush() waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.flushing = asyncio.Event()
        self.gate = asyncio.Event()

    async def flush(self) -> None:
        self.flushing.set()
        await self.gate.wait()


async def test_with_redis_down_frames_are_shown_once_in_the_store(tmp_path: Path) -> None:
    """Redis stops: the owner shows frames only after the store has flushed them, and a
    follower on another bus reads them from the store."""
    with redis_server(tmp_path / "redis") as server:
        url = server.url + "?prefix=t"
        store = GatedFlushStore()
        run = Run.make(5)
        await store.create(run.record("a"))
        with anyio.fail_after(20):
            async with (
                opened(url, "a", store) as a,
                opened(url, "b", store) as b,
                anyio.create_task_group() as tg,
            ):
                server.stop()
                log = RunLog(hold=True)
                local, elsewhere = Reader(), Reader()
                tg.start_soon(local.read, log.follow())
                run.add(log, store, 0, 3)
                a.publish(run.run_id, log)
                await store.flushing.wait()
                await anyio.sleep(0.2)
                assert local.chunks == [], "shown before it reached Redis or the store"
                store.gate.set()
                await until(lambda: local.bytes == run.joined(0, 3), within=5, what="frames")

                tg.start_soon(elsewhere.read, b.tail(run.run_id, 0, store))
                await until(lambda: elsewhere.bytes == run.joined(0, 3), within=5, what="tail")
                run.add(log, store, 3, 5)
                log.close()
                a.publish(run.run_id, log)
                await until(lambda: local.done and elsewhere.done, within=10, what="the end")
        assert local.bytes == elsewhere.bytes == run.joined()


# ---- tail: another replica's follower --------------------------------------------------------


async def test_a_tail_on_another_bus_gets_the_same_bytes_live_and_from_any_after(
    url: str, raw: aredis.Redis
) -> None:
    store = MemoryRunStore()
    run = Run.make(20)
    await store.create(run.record("a"))
    batches = [(0, 1), (1, 5), (5, 6), (6, 13), (13, 20)]
    with anyio.fail_after(30):
        async with (
            opened(url, "a", store) as a,
            opened(url, "b", store) as b,
            anyio.create_task_group() as tg,
        ):
            log = RunLog(hold=True)
            local, live = Reader(), Reader()
            tg.start_soon(local.read, log.follow())
            tg.start_soon(live.read, b.tail(run.run_id, 0, store))
            for start, end in batches:
                run.add(log, store, start, end)
                if end == len(run.rows):
                    log.close()
                a.publish(run.run_id, log)
                # Each batch reaches the other bus before the next one is even made.
                await until(
                    lambda end=end: live.bytes == run.joined(0, end), within=5, what=f"..{end}"
                )
            await until(lambda: local.done and live.done, within=5, what="both to end")

            assert local.bytes == live.bytes == run.joined()
            assert await raw.xlen(stream_key(url, run.run_id)) == len(batches)
            for after in range(len(run.rows)):
                got = b"".join([chunk async for chunk in b.tail(run.run_id, after, store)])
                assert got == run.joined(after), after
                assert await b.frames_after(run.run_id, after) == run.rows[after:], after


async def publish_batches(
    run: Run, bus: RedisBus, store: RunStore, batches: list[tuple[int, int]]
) -> None:
    """Publish each batch as its own stream entry (waiting until it is out before the next)."""
    log = RunLog(hold=True)
    for start, end in batches:
        run.add(log, store, start, end)
        if end == len(run.rows):
            log.close()
        bus.publish(run.run_id, log)
        await until(lambda end=end: log.visible == end, within=5, what=f"batch ..{end}")


async def test_entries_missing_from_the_stream_are_filled_from_the_store(
    url: str, raw: aredis.Redis
) -> None:
    """Entries 1-3 and 7-9 are gone from the stream (trimmed, lost); a tail from any `after`
    still gets every frame once, in order: the missing ones from the store."""
    store = MemoryRunStore()
    run = Run.make(12)
    await store.create(run.record("a"))
    key = stream_key(url, run.run_id)
    with anyio.fail_after(30):
        async with opened(url, "a", store) as a, opened(url, "b", store) as b:
            await publish_batches(run, a, store, [(0, 3), (3, 6), (6, 9), (9, 12)])
            assert await raw.xdel(key, "3-0", "9-0") == 2
            assert [e[0] for e in await raw.xrange(key)] == [b"6-0", b"12-0"]
            for after in range(len(run.rows)):
                got = b"".join([chunk async for chunk in b.tail(run.run_id, after, store)])
                assert got == run.joined(after), after


async def test_a_live_tail_fills_a_lost_stream_from_the_store_in_order(
    url: str, raw: aredis.Redis
) -> None:
    """The run's stream is deleted mid-run (a Redis restart); events 4-6 are only in the store,
    6 arriving late (its group commit); the run's end then reaches a new stream. The tail
    yields 1..9 once each, in order, and 6 only once the store has it."""
    store = MemoryRunStore()
    run = Run.make(9)
    await store.create(run.record("a"))
    with anyio.fail_after(30):
        async with (
            opened(url, "a", store) as a,
            opened(url, "b", store) as b,
            anyio.create_task_group() as tg,
        ):
            await publish_batches(run, a, store, [(0, 3)])
            tail = Reader()
            tg.start_soon(tail.read, b.tail(run.run_id, 0, store))
            await until(lambda: tail.bytes == run.joined(0, 3), within=5, what="1..3")

            assert await raw.delete(stream_key(url, run.run_id)) == 1
            run.store_rows(store, 3, 5)
            await a.publish_frames(run.run_id, 7, run.joined(6, 9))
            await until(lambda: tail.bytes == run.joined(0, 5), within=8, what="4..5")
            await anyio.sleep(0.3)
            assert tail.bytes == run.joined(0, 5) and not tail.done  # 6 is not there yet
            run.store_rows(store, 5, 6)
            await until(lambda: tail.done, within=8, what="the tail to end")
    assert tail.bytes == run.joined()


async def test_a_tail_that_read_ahead_in_the_store_skips_those_frames_in_the_stream(
    url: str,
) -> None:
    """While the stream is quiet the tail reads the store (events that went there while Redis
    was unreachable); when the stream brings a batch it partly read already, it yields only
    the rest: no event twice."""
    store = MemoryRunStore()
    run = Run.make(9)
    await store.create(run.record("a"))
    with anyio.fail_after(30):
        async with (
            opened(url, "a", store) as a,
            opened(url, "b", store) as b,
            anyio.create_task_group() as tg,
        ):
            await publish_batches(run, a, store, [(0, 3)])
            tail = Reader()
            tg.start_soon(tail.read, b.tail(run.run_id, 0, store))
            await until(lambda: tail.bytes == run.joined(0, 3), within=5, what="1..3")
            run.store_rows(store, 3, 8)
            await until(lambda: tail.bytes == run.joined(0, 8), within=8, what="4..8")
            await a.publish_frames(run.run_id, 7, run.joined(6, 9))
            await until(lambda: tail.done, within=8, what="the tail to end")
    assert tail.bytes == run.joined()


# ---- control requests ------------------------------------------------------------------------


async def test_a_request_reaches_the_named_replica_and_its_answer_comes_back(url: str) -> None:
    store = MemoryRunStore()
    seen: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    def handler(name: str) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def answer(message: dict[str, Any]) -> dict[str, Any]:
            seen[name].append(message)
            return {"by": name, "double": message["n"] * 2, "op": message["op"]}

        return answer

    with anyio.fail_after(20):
        async with (
            opened(url, "a", store, handler("a")) as a,
            opened(url, "b", store, handler("b")) as b,
        ):
            to_a = await asyncio.gather(
                *(b.request("a", {"op": "cancel", "run_id": "r", "n": n}) for n in range(6))
            )
            to_b = await a.request("b", {"op": "record", "run_id": "r", "n": 21})
    assert to_a == [{"by": "a", "double": 2 * n, "op": "cancel"} for n in range(6)]
    assert to_b == {"by": "b", "double": 42, "op": "record"}
    assert sorted(m["n"] for m in seen["a"]) == list(range(6))
    assert [m["n"] for m in seen["b"]] == [21]
    assert all(m["run_id"] == "r" for m in seen["a"] + seen["b"])


async def test_a_request_to_a_replica_nobody_listens_for_is_unavailable_quickly(
    url: str,
) -> None:
    store = MemoryRunStore()
    async with opened(url, "a", store) as a:
        started = time.monotonic()
        with anyio.fail_after(10), pytest.raises(Unavailable) as caught:
            await a.request(f"gone-{uuid.uuid4().hex[:6]}", {"op": "cancel", "run_id": "r"})
        took = time.monotonic() - started
    print(f"\nrequest to a replica nobody listens for: Unavailable after {took:.2f} s")
    assert took < 5, took
    assert "not reachable" in str(caught.value)


# ---- leases and claims -----------------------------------------------------------------------


async def test_leases_are_renewed_while_open_and_gone_after_close(url: str) -> None:
    store = MemoryRunStore()
    # A lease lapses 0.4 s after its last renewal: staying alive 1.2 s takes renewals.
    with anyio.fail_after(20):
        async with opened(url, "a", store, lease_s=0.6) as a:
            async with opened(url, "b", store, lease_s=0.6) as b:
                assert await a.alive({"a", "b", "never-started"}) == {"a", "b"}
                assert await b.alive(set()) == set()
                samples = []
                deadline = time.monotonic() + 1.2
                while time.monotonic() < deadline:
                    samples.append(await b.alive({"a", "b"}))
                    await anyio.sleep(0.05)
                assert samples and all(s == {"a", "b"} for s in samples), samples
            assert await a.alive({"a", "b"}) == {"a"}


async def test_exactly_one_of_two_buses_claims_a_run(url: str) -> None:
    store = MemoryRunStore()
    with anyio.fail_after(20):
        async with opened(url, "a", store) as a, opened(url, "b", store) as b:
            for _ in range(20):
                run_id = f"run-{uuid.uuid4().hex[:8]}"
                wins = await asyncio.gather(a.claim(run_id), b.claim(run_id))
                assert sorted(wins) == [False, True], wins
                assert not await a.claim(run_id) and not await b.claim(run_id)


# ---- closing ---------------------------------------------------------------------------------


def test_a_bus_closes_promptly_even_right_after_it_opened() -> None:
    """A replica stopped as it starts (or while its loops are mid-command) still shuts down.
    On Python 3.11 a cancel that lands while redis-py sends a command (asyncio.wait_for) is
    swallowed: a bus that cancelled its loops once hung in close() in about one of four
    closes made within 4 ms of open(). Run on an event loop of its own, so a loop left
    running by a close that hung dies with it."""
    bus_url = redis_bus_url()

    async def attempts() -> str | None:
        store = MemoryRunStore()
        try:
            for attempt in range(200):
                bus = RedisBus(bus_url, replica_id=f"c{attempt}", lease_s=30)
                await bus.open(store, refuse)
                await asyncio.sleep(random.uniform(0, 0.004))
                try:
                    await asyncio.wait_for(bus.close(), 2)
                except TimeoutError:
                    # A second cancel reaches the loop that ignored the first.
                    await asyncio.wait_for(bus.close(), 5)
                    return f"close() did not return within 2 s (attempt {attempt})"
            return None
        finally:
            base, prefix = split_url(bus_url)
            client = aredis.from_url(base)
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    problem = asyncio.run(attempts())
    assert problem is None, problem
