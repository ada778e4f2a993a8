"""RedisBus: the bus shared by several replicas (see bus.py for what a bus does).

Keys, under a prefix (`?prefix=` in the URL, default `llm-do`):

- `{p}:run:{run_id}` a Redis Stream per run. One entry per publish batch, its id
  `{last seq}-0`, fields `first` (seq of its first frame), `frames` (the SSE bytes,
  as the owner's followers get them) and `end` on the run's last entry. A follower on
  another replica resumes with XREAD from `{Last-Event-ID}-0`: ids are seqs, so
  resuming needs no lookup. Chosen over pub/sub plus the store, which loses what is
  published while a follower (re)subscribes and would need the store — which lags by
  its group commit — to fill the gap on every join; a stream is ordered, replayable
  from any id, and one XADD per batch keeps the owner's cost flat (numbers: bench/bus_choice.py).
  A stream expires a day after its first entry, five minutes after its last (EXPIRE is
  sent with those two only): the store has everything by then.
- `{p}:ctl:{replica}` the pub/sub channel a replica takes control requests on; the
  answer goes back on a list `{p}:reply:{id}` the asker BLPOPs.
- `{p}:replica:{replica}` the replica's lease: renewed every `lease_s / 6`, lapses after
  `2/3 lease_s`, so a dead replica's runs are interrupted within `lease_s`.
- `{p}:reap:{run_id}` taken (SET NX) by the one replica that ends a dead owner's run.

An event reaches the stream before a follower on the owner sees it (the owner's log
holds frames until they are published). When Redis cannot be reached, the frames are
flushed to the store instead and then shown; followers elsewhere read the store until
Redis is back, and fill any hole the restart left from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as redis
from redis.exceptions import RedisError

from app.runtime import TERMINAL_TYPES, Unavailable

from .bus import ControlHandler
from .log import RunLog
from .store import EventRow, RunStore
from .wire import drop_frames, frame, unframe

log = logging.getLogger("llm_do.bus")

TTL_LIVE_S = 24 * 3600
TTL_ENDED_S = 300
STREAM_MAXLEN = 10_000  # entries (batches); older ones are read from the store
TAIL_BLOCK_MS = 2_000  # a quiet follower checks the store this often (did the run end?)
TAIL_COUNT = 256
STORE_POLL_S = 0.25  # how often a follower reads the store while Redis is down
FILL_WAIT_S = 10.0  # how long a hole may take to reach the store (its group commit)
REQUEST_TIMEOUT_S = 10.0
# While frames keep coming (a token stream, many runs at once), rounds start at most this
# often, so one round carries several frames of each run: a round costs the replica about
# 150 µs of CPU whatever it carries. The first frame after a quiet spell goes at once.
ROUND_GAP_S = 0.001
RETRY_AFTER_DOWN_S = 1.0  # after a failed publish, publish to the store only, this long
_ERRORS = (RedisError, OSError)


def _split_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    prefix = query.pop("prefix", "llm-do")
    return urlunsplit(parts._replace(query=urlencode(query))), prefix


class RedisBus:
    shared = True

    def __init__(self, url: str, *, replica_id: str, lease_s: float = 30) -> None:
        self.url, self.prefix = _split_url(url)
        self.replica_id = replica_id
        self.lease_s = lease_s
        self.beat_s = lease_s / 6
        self.ttl_s = lease_s * 2 / 3
        # Quick commands and blocking ones (XREAD BLOCK, BLPOP) on separate pools, so a
        # dead server fails a publish in a second, not after a blocking read's timeout.
        self._fast = redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)
        self._slow = redis.from_url(
            self.url, socket_connect_timeout=1, socket_timeout=REQUEST_TIMEOUT_S + 5
        )
        self._store: RunStore | None = None
        self._on_control: ControlHandler | None = None
        self._dirty: dict[str, RunLog] = {}
        self._wake = asyncio.Event()
        self._down_until = 0.0
        self._sending = False
        self._round_at = 0.0  # when the last publish round started (monotonic)
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._beats = 0
        self._last_beat = 0.0
        self._reset_at = 0.0

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    # ---- lifecycle ------------------------------------------------------------------

    async def open(self, store: RunStore, on_control: ControlHandler) -> None:
        self._store, self._on_control = store, on_control
        try:
            await self._fast.ping()
        except _ERRORS as exc:
            # Start anyway: runs go on with the store alone and the bus is retried.
            log.warning("the bus (Redis at %s) cannot be reached yet: %s", self.url, exc)
        await self._beat()
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="llm-do-bus-publish"),
            asyncio.create_task(self._listen_loop(), name="llm-do-bus-listen"),
            asyncio.create_task(self._beat_loop(), name="llm-do-bus-heartbeat"),
        ]

    async def close(self) -> None:
        # The last frames (the runs the shutdown ended) go out before the publisher stops.
        deadline = time.monotonic() + 2
        while (self._dirty or self._sending) and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        self._closing = True
        # Cancel until they end: on Python 3.11 a cancel that lands inside redis-py's
        # asyncio.wait_for (socket timeouts) can be swallowed, and the loop would go on.
        pending = {*self._tasks, *self._handlers}
        for _ in range(50):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.1)
        if pending:
            log.warning("%d bus task(s) did not stop", len(pending))
        with contextlib.suppress(*_ERRORS):
            await self._fast.delete(self._key("replica", self.replica_id))
        await self._fast.aclose()
        await self._slow.aclose()

    # ---- events ---------------------------------------------------------------------

    def publish(self, run_id: str, log: RunLog) -> None:
        self._dirty[run_id] = log
        self._wake.set()

    async def _publish_loop(self) -> None:
        """One pipeline per round, holding every run's new frames: while it is out, the
        next round's frames gather (group commit), and rounds in a burst are ROUND_GAP_S
        apart."""
        while True:
            await self._wake.wait()
            # At least one more turn of the loop lets the other ready tasks add their frames.
            await asyncio.sleep(max(0.0, self._round_at + ROUND_GAP_S - time.monotonic()))
            self._round_at = time.monotonic()
            self._wake.clear()
            dirty, self._dirty = self._dirty, {}
            batch = [
                (run_id, run_log, run_log.published, len(run_log.frames))
                for run_id, run_log in dirty.items()
                if len(run_log.frames) > run_log.published
            ]
            if not batch:
                continue
            self._sending = True
            if not await self._send(batch):
                # Redis is down: the store is the other shared place an event may be
                # before a client sees it.
                assert self._store is not None
                try:
                    await self._store.flush()
                except Exception as exc:  # the run fails with a typed error (manager)
                    log.error(
                        "events of %d run(s) reached neither bus nor store: %s", len(batch), exc
                    )
            for _run_id, run_log, _start, end in batch:
                run_log.published = max(run_log.published, end)
                run_log.release(end)
            self._sending = False

    async def _send(self, batch: list[tuple[str, RunLog, int, int]]) -> bool:
        if time.monotonic() < self._down_until:
            return False
        try:
            async with self._fast.pipeline(transaction=False) as pipe:
                for run_id, run_log, start, end in batch:
                    last = run_log.closed and end == len(run_log.frames)
                    frames = b"".join(run_log.frames[start:end])
                    self._xadd(pipe, run_id, start + 1, end, frames, last)
                await pipe.execute()
            return True
        except Exception as exc:  # whatever it is, the frames must still reach the clients
            self._down_until = time.monotonic() + RETRY_AFTER_DOWN_S
            log.warning("publishing to the bus failed (%s); using the store meanwhile", exc)
            return False

    def _xadd(
        self, pipe: Any, run_id: str, first: int, last: int, frames: bytes, end: bool
    ) -> None:
        key = self._key("run", run_id)
        fields: dict[str, Any] = {"first": first, "frames": frames}
        if end:
            fields["end"] = 1
        pipe.xadd(key, fields, id=f"{last}-0", maxlen=STREAM_MAXLEN, approximate=True)
        if end or first == 1:  # an EXPIRE per batch would cost as much as the XADD
            pipe.expire(key, TTL_ENDED_S if end else TTL_LIVE_S)

    async def publish_frames(self, run_id: str, first: int, frames: bytes) -> None:
        last = first + frames.count(b"\n\n") - 1
        try:
            async with self._fast.pipeline(transaction=False) as pipe:
                self._xadd(pipe, run_id, first, last, frames, True)
                await pipe.execute()
        except _ERRORS as exc:  # followers elsewhere find the end in the store
            log.warning("could not publish the end of run %s: %s", run_id, exc)

    async def frames_after(self, run_id: str, after: int) -> list[EventRow]:
        entries = await self._fast.xrange(self._key("run", run_id), min=f"{after}-1")
        rows = [row for _id, fields in entries for row in unframe(fields[b"frames"])]
        return [row for row in rows if row[0] > after]

    async def tail(self, run_id: str, after: int, store: RunStore) -> AsyncIterator[bytes]:
        key = self._key("run", run_id)
        cursor = after
        while True:
            try:
                reply = await self._slow.xread(
                    {key: f"{cursor}-0"}, count=TAIL_COUNT, block=TAIL_BLOCK_MS
                )
            except _ERRORS:
                reply = None
                await asyncio.sleep(STORE_POLL_S)  # Redis is down: follow the store meanwhile
            if not reply:
                # Quiet, or Redis is down: the store may have what the stream lacks (a
                # stream lost in a restart, or expired) and knows whether the run ended.
                chunk, cursor, ended = await _from_store(store, run_id, cursor)
                if chunk:
                    yield chunk
                if ended:
                    return
                continue
            for entry_id, fields in reply[0][1]:
                last, first = int(entry_id.split(b"-")[0]), int(fields[b"first"])
                if last <= cursor:
                    continue
                if first > cursor + 1:  # a hole: entries lost in a Redis restart, or trimmed
                    async for chunk in _fill(store, run_id, cursor, first - 1):
                        yield chunk
                    cursor = first - 1
                frames = fields[b"frames"]
                yield drop_frames(frames, cursor + 1 - first) if first <= cursor else frames
                cursor = last
                if b"end" in fields:
                    return

    # ---- control requests -----------------------------------------------------------

    async def request(self, replica: str, message: dict[str, Any]) -> dict[str, Any]:
        reply_key = self._key("reply", uuid.uuid4().hex)
        body = json.dumps({**message, "reply": reply_key})
        deadline = time.monotonic() + 3
        try:
            # Nobody subscribed: the owner may be re-subscribing after a Redis restart.
            while not await self._fast.publish(self._key("ctl", replica), body):
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"Replica {replica!r}, which runs this run, is not reachable; if it "
                        f"has stopped, its runs end as interrupted within {self.lease_s:g} s"
                    )
                await asyncio.sleep(0.2)
            answer = await self._slow.blpop([reply_key], timeout=REQUEST_TIMEOUT_S)
        except _ERRORS as exc:
            raise Unavailable(f"The bus (Redis) cannot be reached: {exc}") from exc
        if answer is None:
            raise Unavailable(
                f"Replica {replica!r}, which runs this run, did not answer in "
                f"{REQUEST_TIMEOUT_S:g} s; try again"
            )
        return json.loads(answer[1])

    async def _listen_loop(self) -> None:
        channel = self._key("ctl", self.replica_id)
        while not self._closing:
            pubsub = self._slow.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                while not self._closing:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None:
                        task = asyncio.create_task(self._answer(json.loads(message["data"])))
                        self._handlers.add(task)
                        task.add_done_callback(self._handlers.discard)
            except _ERRORS as exc:
                log.warning("control channel lost (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(*_ERRORS):
                    await pubsub.aclose()

    async def _answer(self, message: dict[str, Any]) -> None:
        assert self._on_control is not None
        answer = await self._on_control(message)
        try:
            async with self._fast.pipeline(transaction=False) as pipe:
                pipe.lpush(message["reply"], json.dumps(answer))
                pipe.expire(message["reply"], 60)
                await pipe.execute()
        except _ERRORS as exc:
            log.warning("could not answer a %s request: %s", message.get("op"), exc)

    # ---- liveness -------------------------------------------------------------------

    async def _beat(self) -> None:
        now = time.monotonic()
        try:
            before = await self._fast.set(
                self._key("replica", self.replica_id),
                b"1",
                px=int(self.ttl_s * 1000),
                get=True,
            )
        except _ERRORS:
            self._reset_at = now
            return
        if before is None and self._beats:
            self._reset_at = now  # our lease was gone: Redis restarted (or we were cut off)
        self._beats += 1
        self._last_beat = now

    async def _beat_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.beat_s)
            await self._beat()

    async def alive(self, replicas: set[str]) -> set[str]:
        names = sorted(replicas)
        if not names:
            return set()
        values = await self._fast.mget([self._key("replica", r) for r in names])
        return {name for name, value in zip(names, values, strict=True) if value is not None}

    async def can_judge(self) -> bool:
        """A lease missing right after Redis (re)started, or while our own lease is in
        doubt, proves nothing: every live replica renews within `beat_s`."""
        now = time.monotonic()
        if now - self._reset_at < self.ttl_s or now - self._last_beat > 2 * self.beat_s:
            return False
        try:
            info = await self._fast.info("server")
        except _ERRORS:
            return False
        return float(info.get("uptime_in_seconds", 0)) >= self.ttl_s

    def lease_lapsed_since(self, t: float) -> bool:
        # A beat that failed or found our lease gone, or no beat for a lease's ttl (a stalled
        # loop: the beat that would tell has not run yet).
        return self._reset_at >= t or time.monotonic() - self._last_beat > self.ttl_s

    async def claim(self, run_id: str) -> bool:
        return bool(
            await self._fast.set(
                self._key("reap", run_id), self.replica_id.encode(), nx=True, px=60_000
            )
        )


async def _from_store(store: RunStore, run_id: str, cursor: int) -> tuple[bytes, int, bool]:
    """(frames after cursor, new cursor, whether the run has ended) from the store."""
    rows = await store.events(run_id, cursor, 1000)
    if rows:
        chunk = b"".join(frame(*row) for row in rows)
        return chunk, rows[-1][0], rows[-1][1] in TERMINAL_TYPES
    record = await store.get(run_id)
    return b"", cursor, record is None or record.ended


async def _fill(store: RunStore, run_id: str, cursor: int, upto: int) -> AsyncIterator[bytes]:
    """Frames cursor+1..upto from the store, waiting for its group commit to bring them."""
    deadline = time.monotonic() + FILL_WAIT_S
    while cursor < upto:
        rows = await store.events(run_id, cursor, upto - cursor)
        if rows:
            yield b"".join(frame(*row) for row in rows)
            cursor = rows[-1][0]
        elif time.monotonic() > deadline:
            log.error(
                "events %d..%d of run %s are in neither bus nor store", cursor + 1, upto, run_id
            )
            return
        else:
            await asyncio.sleep(0.05)
