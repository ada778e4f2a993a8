"""PostgresRunStore: the RunStore on PostgreSQL (asyncpg), for several replicas sharing
one database. Same rows as SQLite (records; events packed one row per run per batch).

Writes never wait on the event loop's hot path: `append`/`update` add to in-memory
buffers; one flusher task owned by the store waits a moment for company (group commit;
`flush` cuts the wait short), then writes the batch in one transaction. A write that
fails is reported by `flush` (so a run's end is never recorded as durable when it is
not) and the batch is kept for the next attempt. The schema is created at `open`,
idempotently, inside the schema named by `?schema=` in the URL (default `public`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from app.runtime import StoreUnavailable

from .records import ENDED, RunRecord
from .rows import COLUMNS, NOT_ENDED, PAST_THE_END, chunks, from_row, to_row, unpack
from .store import EventRow, FailureHook

log = logging.getLogger(__name__)
T = TypeVar("T")

LINGER_S = 0.05
RETRY_S = 1.0  # a failed write is tried again this often, until the database is back
_DB_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    TimeoutError,
)
# The connection was lost, not the database: after a PostgreSQL restart every pooled
# connection is dead, and a session idle in a transaction too long is ended by the server.
# A write that fails so is tried once more at once, on a fresh connection, before it counts.
_LOST = (
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection the server ended mid-operation
    asyncpg.AdminShutdownError,
    asyncpg.IdleInTransactionSessionTimeoutError,
)
# A replica that stalls inside a transaction (a frozen process, a blocked loop) holds row
# locks that another replica's writes then wait on; the server ends such a session after
# this long, so those writes wait at most this (well under `command_timeout`).
IDLE_IN_TRANSACTION_MS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    worker TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    model TEXT,
    approval TEXT,
    input TEXT,
    output TEXT,
    error TEXT,
    usage TEXT,
    last_seq BIGINT NOT NULL DEFAULT 0,
    owner TEXT
);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS owner TEXT;
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at DESC);
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (status)
    WHERE status IN ('running', 'waiting_approval');
CREATE TABLE IF NOT EXISTS event_chunks (
    run_id TEXT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    types TEXT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (run_id, first_seq)
);
"""

_UPSERT = (
    """
INSERT INTO runs (run_id, worker, status, created_at, started_at, finished_at, model, approval,
                  input, output, error, usage, last_seq, owner)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (run_id) DO UPDATE SET
    status = excluded.status, started_at = excluded.started_at,
    finished_at = excluded.finished_at, model = excluded.model, output = excluded.output,
    error = excluded.error, usage = excluded.usage, last_seq = excluded.last_seq,
    owner = excluded.owner
WHERE """
    + NOT_ENDED
)
_INSERT_CHUNK = (
    "INSERT INTO event_chunks SELECT $1::text, $2::bigint, $3::bigint, $4::text, $5::bytea "
    "WHERE " + PAST_THE_END.format(run_id="$1::text", last_seq="$3::bigint") + " "
    "ON CONFLICT DO NOTHING"
)


async def _once_more_if_lost(op: Callable[[], Awaitable[T]]) -> T:
    """`op()`, and once more at once if it lost its connection (see `_LOST`)."""
    try:
        return await op()
    except _LOST:
        return await op()


def _why(exc: BaseException) -> str:
    """An error's message, or its kind when it has none (a timeout says nothing)."""
    return str(exc) or type(exc).__name__


def _split_url(url: str) -> tuple[str, str]:
    """(the URL asyncpg gets, the schema from its `schema` query parameter)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", "public")
    return urlunsplit(parts._replace(query=urlencode(query))), schema


class PostgresRunStore:
    on_failure: FailureHook | None = None

    def __init__(self, url: str) -> None:
        self.url, self.schema = _split_url(url)
        self._pool: asyncpg.Pool | None = None
        self._events: list[tuple[str, int, str, bytes]] = []
        self._runs: dict[str, tuple[Any, ...]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._pending = asyncio.Event()
        self._urgent = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    async def open(self) -> None:
        schema = self.schema.replace('"', "")
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=0,  # no floor to restore (and log about) while the server is away
            max_size=4,
            server_settings={
                "search_path": schema,
                "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
            },
            timeout=5,  # connecting
            command_timeout=10,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            # Replicas starting together would race on CREATE ... IF NOT EXISTS (it is not
            # atomic in PostgreSQL): one migrates at a time.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('llm-do-schema'))")
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(SCHEMA)
        self._flusher = asyncio.create_task(self._flush_loop(), name="llm-do-postgres-flusher")

    async def close(self) -> None:
        if self._pool is None:
            return
        with contextlib.suppress(Exception):
            await self.flush()
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._pool.close()
        self._pool = None

    # ---- writes (buffered) ----------------------------------------------------------

    async def create(self, record: RunRecord) -> None:
        self.update(record)
        try:
            await self.flush()
        except StoreUnavailable:
            # The client is told the run did not start: do not write it later either.
            self._runs.pop(record.run_id, None)
            raise

    def append(self, run_id: str, seq: int, type: str, data: bytes) -> None:
        self._events.append((run_id, seq, type, data))
        self._pending.set()

    def update(self, record: RunRecord) -> None:
        self._runs[record.run_id] = to_row(record)
        self._pending.set()

    async def flush(self) -> None:
        done = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        self._pending.set()
        self._urgent.set()
        await done

    async def _flush_loop(self) -> None:
        assert self._pool is not None
        while True:
            await self._pending.wait()
            if not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), LINGER_S)
            self._pending.clear()
            self._urgent.clear()
            events, self._events = self._events, []
            runs, self._runs = self._runs, {}
            waiters, self._waiters = self._waiters, []
            error: BaseException | None = None
            try:
                if events or runs:
                    await _once_more_if_lost(partial(self._write, runs, events))
            except Exception as exc:  # whatever it is, this loop must go on: flush() waits on it
                if not isinstance(exc, _DB_ERRORS):
                    log.exception("unexpected error writing to PostgreSQL")
                error = exc
                self._events = events + self._events  # keep them for the next attempt
                self._runs = {**runs, **self._runs}
                asyncio.get_running_loop().call_later(RETRY_S, self._pending.set)
                if self.on_failure is not None:
                    self.on_failure({e[0] for e in events} | set(runs), exc)
            for waiter in waiters:
                if waiter.done():
                    continue
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(
                        StoreUnavailable(
                            f"The run store (PostgreSQL) cannot be written: {_why(error)}"
                        )
                    )

    async def _write(
        self, runs: dict[str, tuple[Any, ...]], events: list[tuple[str, int, str, bytes]]
    ) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            if runs:
                await conn.executemany(_UPSERT, list(runs.values()))
            if events:
                await conn.executemany(_INSERT_CHUNK, chunks(events))

    # ---- reads ----------------------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        assert self._pool is not None
        try:
            return await _once_more_if_lost(partial(self._pool.fetch, sql, *args))
        except _DB_ERRORS as exc:
            raise StoreUnavailable(
                f"The run store (PostgreSQL) cannot be read: {_why(exc)}"
            ) from exc

    async def get(self, run_id: str) -> RunRecord | None:
        rows = await self._fetch(f"SELECT {COLUMNS} FROM runs WHERE run_id = $1", run_id)
        return from_row(tuple(rows[0])) if rows else None

    async def list(
        self, *, worker: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        rows = await self._fetch(
            f"SELECT {COLUMNS} FROM runs WHERE ($1::text IS NULL OR worker = $1) "
            "AND ($2::text IS NULL OR status = $2) ORDER BY created_at DESC LIMIT $3",
            worker,
            status,
            limit,
        )
        return [from_row(tuple(r)) for r in rows]

    async def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[EventRow]:
        rows = await self._fetch(
            "SELECT first_seq, types, body FROM event_chunks "
            "WHERE run_id = $1 AND last_seq > $2 ORDER BY first_seq LIMIT $3",
            run_id,
            after,
            limit,
        )
        return unpack([tuple(r) for r in rows], after, limit)

    async def unfinished(self) -> list[RunRecord]:
        # The record's last_seq lags; the events do not. One query: every replica asks often.
        rows = await self._fetch(
            f"SELECT {COLUMNS}, (SELECT COALESCE(MAX(e.last_seq), 0) FROM event_chunks e "
            "WHERE e.run_id = runs.run_id) FROM runs WHERE status <> ALL($1::text[])",
            sorted(ENDED),
        )
        records = []
        for row in rows:
            record = from_row(tuple(row)[:-1])
            record.last_seq = row[-1]
            records.append(record)
        return records

    async def prune(self, *, max_age_s: float | None, max_runs: int | None) -> int:
        ended = sorted(ENDED)
        doomed: set[str] = set()
        if max_age_s is not None:
            rows = await self._fetch(
                "SELECT run_id FROM runs WHERE status = ANY($1::text[]) AND created_at < $2",
                ended,
                time.time() - max_age_s,
            )
            doomed |= {r[0] for r in rows}
        if max_runs is not None:
            rows = await self._fetch(
                "SELECT run_id FROM runs WHERE status = ANY($1::text[]) "
                "ORDER BY created_at DESC OFFSET $2",
                ended,
                max_runs,
            )
            doomed |= {r[0] for r in rows}
        if doomed:
            assert self._pool is not None
            async with self._pool.acquire() as conn, conn.transaction():
                ids = sorted(doomed)
                await conn.execute("DELETE FROM event_chunks WHERE run_id = ANY($1)", ids)
                await conn.execute("DELETE FROM runs WHERE run_id = ANY($1)", ids)
        return len(doomed)
