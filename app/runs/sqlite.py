"""SqliteRunStore: the embedded RunStore (WAL mode), one writer thread, batched writes.

The event loop never touches SQLite. `append`/`update` put a tuple on a queue (no
await, no lock); the writer thread waits a moment for company (group commit), drains
whatever is pending, writes each run's consecutive events as one row (see `_chunks`)
and commits once, then wakes any `flush` waiting for it. Reads
run on a small pool of their own, each thread with its own connection (WAL lets them
read while the writer writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from app.runtime import StoreUnavailable

from .records import ENDED, RunRecord
from .rows import COLUMNS, NOT_ENDED, PAST_THE_END, chunks, from_row, to_row, unpack
from .store import EventRow, FailureHook

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    worker TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    model TEXT,
    approval TEXT,
    input TEXT,
    output TEXT,
    error TEXT,
    usage TEXT,
    last_seq INTEGER NOT NULL DEFAULT 0,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at DESC);
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (status)
    WHERE status IN ('running', 'waiting_approval');
CREATE TABLE IF NOT EXISTS event_chunks (
    run_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    types TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS event_chunks_by_run ON event_chunks (run_id, first_seq);
"""

_UPSERT = (
    """
INSERT INTO runs (run_id, worker, status, created_at, started_at, finished_at, model, approval,
                  input, output, error, usage, last_seq, owner)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET
    status = excluded.status, started_at = excluded.started_at,
    finished_at = excluded.finished_at, model = excluded.model, output = excluded.output,
    error = excluded.error, usage = excluded.usage, last_seq = excluded.last_seq,
    owner = excluded.owner
WHERE """
    + NOT_ENDED
)
_INSERT_CHUNK = (
    "INSERT OR IGNORE INTO event_chunks SELECT ?1, ?2, ?3, ?4, ?5 "
    "WHERE " + PAST_THE_END.format(run_id="?1", last_seq="?3")
)


_STOP = ("stop",)
LINGER_S = 0.05  # the longest an event waits in memory before its commit starts
RETRY_S = 1.0  # a batch that failed (disk full, database locked) is tried again this often


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class SqliteRunStore:
    on_failure: FailureHook | None = None  # a local file: a failed write is reported by flush

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="llm-do-sqlite-read")
        self._local = threading.local()
        self._urgent = threading.Event()
        self._reader_conns: list[sqlite3.Connection] = []

    # ---- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def init() -> None:
            conn = _connect(self.path)
            conn.executescript(SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
            if "owner" not in columns:  # a store made before runs had owners
                conn.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
            conn.close()

        await asyncio.to_thread(init)
        self._writer = threading.Thread(target=self._write_loop, name="llm-do-sqlite-writer")
        self._writer.start()

    async def close(self) -> None:
        if self._writer is None:
            return
        self._queue.put(_STOP)
        self._urgent.set()
        await asyncio.to_thread(self._writer.join)
        self._writer = None
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()

    # ---- writes (queued) ------------------------------------------------------------

    async def create(self, record: RunRecord) -> None:
        self._queue.put(("run", to_row(record)))
        await self.flush()

    def append(self, run_id: str, seq: int, type: str, data: bytes) -> None:
        self._queue.put(("event", (run_id, seq, type, data)))

    def update(self, record: RunRecord) -> None:
        self._queue.put(("run", to_row(record)))

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[BaseException | None] = loop.create_future()

        def wake(error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, done, error)

        self._queue.put(("flush", wake))
        self._urgent.set()
        error = await done
        if error is not None:  # the batch this flush waited for did not go in
            raise StoreUnavailable(f"The run store cannot be written: {error}") from error

    def _write_loop(self) -> None:
        conn = _connect(self.path)
        stop = False
        kept_events: list[tuple[str, int, str, bytes]] = []  # a failed batch, tried again
        kept_runs: list[tuple[Any, ...]] = []
        try:
            while not stop:
                try:
                    batch = [self._queue.get(timeout=RETRY_S if kept_events or kept_runs else None)]
                except queue.Empty:
                    batch = []
                # Group commit: a token stream arrives a row at a time, and a commit per row
                # would cost more than the rows. Wait a little for company, unless someone
                # is waiting for durability (flush, create, close).
                if batch and batch[0][0] in ("event", "run"):
                    self._urgent.wait(LINGER_S)
                self._urgent.clear()
                while len(batch) < 5000:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                events, runs, wakers = [], [], []
                for op in batch:
                    if op is _STOP:
                        stop = True
                        continue
                    elif op[0] == "event":
                        events.append(op[1])
                    elif op[0] == "run":
                        runs.append(op[1])
                    else:
                        wakers.append(op[1])
                events, runs = kept_events + events, kept_runs + runs
                kept_events, kept_runs = [], []
                failed: BaseException | None = None
                try:
                    if events or runs:
                        conn.execute("BEGIN")
                        if runs:
                            conn.executemany(_UPSERT, runs)
                        if events:
                            conn.executemany(_INSERT_CHUNK, chunks(events))
                        conn.execute("COMMIT")
                except Exception as exc:  # keep serving, whatever it is; flush() reports it
                    if not isinstance(exc, sqlite3.Error):
                        log.exception("unexpected error writing to the SQLite store")
                    failed = exc
                    kept_events, kept_runs = events, runs
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                for wake in wakers:
                    wake(failed)
        finally:
            conn.close()

    # ---- reads (own pool) -----------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path)
            self._reader_conns.append(conn)
        return conn

    async def _read(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._readers, lambda: self._conn().execute(sql, args).fetchall()
        )

    async def get(self, run_id: str) -> RunRecord | None:
        rows = await self._read(f"SELECT {COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        return from_row(rows[0]) if rows else None

    async def list(
        self, *, worker: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        where, args = [], []
        if worker is not None:
            where.append("worker = ?")
            args.append(worker)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {COLUMNS} FROM runs {clause} ORDER BY created_at DESC LIMIT ?"
        return [from_row(r) for r in await self._read(sql, (*args, limit))]

    async def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[EventRow]:
        rows = await self._read(
            "SELECT first_seq, types, body FROM event_chunks "
            "WHERE run_id = ? AND last_seq > ? ORDER BY first_seq LIMIT ?",
            (run_id, after, limit),  # every chunk holds at least one event
        )
        return unpack(rows, after, limit)

    async def unfinished(self) -> list[RunRecord]:
        marks = ",".join("?" * len(ENDED))
        sql = f"SELECT {COLUMNS} FROM runs WHERE status NOT IN ({marks})"
        records = [from_row(r) for r in await self._read(sql, tuple(ENDED))]
        for record in records:  # the record's last_seq lags; the events table does not
            rows = await self._read(
                "SELECT COALESCE(MAX(last_seq), 0) FROM event_chunks WHERE run_id = ?",
                (record.run_id,),
            )
            record.last_seq = rows[0][0]
        return records

    async def prune(self, *, max_age_s: float | None, max_runs: int | None) -> int:
        marks = ",".join("?" * len(ENDED))
        doomed: set[str] = set()
        if max_age_s is not None:
            rows = await self._read(
                f"SELECT run_id FROM runs WHERE status IN ({marks}) AND created_at < ?",
                (*ENDED, time.time() - max_age_s),
            )
            doomed |= {r[0] for r in rows}
        if max_runs is not None:
            rows = await self._read(
                f"SELECT run_id FROM runs WHERE status IN ({marks}) "
                f"ORDER BY created_at DESC LIMIT -1 OFFSET ?",
                (*ENDED, max_runs),
            )
            doomed |= {r[0] for r in rows}
        if doomed:

            def delete() -> None:
                conn = _connect(self.path)
                try:
                    ids = [(d,) for d in doomed]
                    conn.execute("BEGIN")
                    conn.executemany("DELETE FROM event_chunks WHERE run_id = ?", ids)
                    conn.executemany("DELETE FROM runs WHERE run_id = ?", ids)
                    conn.execute("COMMIT")
                finally:
                    conn.close()

            await asyncio.to_thread(delete)
        return len(doomed)


def _settle(fut: asyncio.Future[BaseException | None], error: BaseException | None) -> None:
    if not fut.done():
        fut.set_result(error)
