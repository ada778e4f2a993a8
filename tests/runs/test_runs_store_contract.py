"""The RunStore contract (app/runs/store.py), one suite run against every implementation.

Each test takes the `store` fixture, parametrized over the implementations (SQLite on a temp
file, memory); a Postgres store joins by adding one param. What only a store on disk can do
(close and reopen, durability seen by another connection) is tested below the suite for SQLite.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from app.runs import MemoryRunStore, RunRecord, RunStore, SqliteRunStore, open_store
from app.runtime import StoreUnavailable
from tests.e2e.e2e_support import eventually
from tests.servers import missing

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0  # a fixed creation time for records whose age does not matter


POSTGRES = os.environ.get("LLM_DO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _postgres_schema() -> str:
    """A fresh schema on the machine's PostgreSQL, or a skip saying why there is none."""
    import asyncpg

    try:
        conn = await asyncpg.connect(POSTGRES, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        missing(f"no PostgreSQL at {POSTGRES} ({exc}); set LLM_DO_TEST_POSTGRES_URL")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    await conn.close()
    return schema


async def _drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES, timeout=3)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "memory", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    impl: RunStore
    schema = None
    if request.param == "sqlite":
        impl = SqliteRunStore(tmp_path / "runs.sqlite3")
    elif request.param == "postgres":
        schema = await _postgres_schema()
        impl = open_store(f"{POSTGRES}?schema={schema}")
    else:
        impl = MemoryRunStore()
    await impl.open()
    try:
        yield impl
    finally:
        await impl.close()
        if schema is not None:
            await _drop_schema(schema)


def make(run_id: str, *, created_at: float = T0, status: str = "running", **kw: Any) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        worker=kw.pop("worker", "w"),
        status=status,  # type: ignore[arg-type]
        created_at=created_at,
        **kw,
    )


def data(seq: int, **extra: Any) -> bytes:
    return json.dumps({"seq": seq, **extra}, separators=(",", ":")).encode()


async def fill(
    store: RunStore, run_id: str, n: int, first: int = 1
) -> list[tuple[int, str, bytes]]:
    rows = [(seq, f"type.{seq}", data(seq)) for seq in range(first, first + n)]
    for seq, kind, body in rows:
        store.append(run_id, seq, kind, body)
    await store.flush()
    return rows


# ---- records ---------------------------------------------------------------------------------


async def test_create_then_get_round_trips_every_field(store: RunStore) -> None:
    record = make(
        "r1",
        worker="summarizer",
        model="openai-chat:fake",
        input={"text": "héllo", "n": [1, 2]},
        approval="deny_all",
        started_at=T0 + 1,
    )
    await store.create(record)
    got = await store.get("r1")
    assert got is not None
    assert got == record
    assert got is not record
    assert await store.get("nope") is None


async def test_owner_round_trips_and_an_ended_record_is_final(store: RunStore) -> None:
    """With several replicas, a replica that lost its lease may still finish a run a survivor
    already ended as interrupted: the first end stays."""
    record = make("r1", owner="replica-a")
    await store.create(record)
    stored = await store.get("r1")
    assert stored is not None and stored.owner == "replica-a"
    record.status, record.error = "interrupted", {"type": "interrupted", "message": "lost"}
    store.update(record)
    await store.flush()
    late = make("r1", owner="replica-a", status="succeeded", output="late")
    store.update(late)
    await store.flush()
    final = await store.get("r1")
    assert final is not None
    assert (final.status, final.output, final.error) == ("interrupted", None, record.error)


async def test_nothing_is_stored_past_an_ended_runs_terminal_event(store: RunStore) -> None:
    """The late replica's events after a survivor's `interrupted` are not replayed either; the
    run's own last batch (events up to its terminal one, with the final record) is kept."""
    await store.create(make("r1"))
    rows = await fill(store, "r1", 3)
    ended = make("r1", status="interrupted", last_seq=4)
    store.append("r1", 4, "run.failed", data(4))
    store.update(ended)
    await store.flush()
    store.append("r1", 5, "text.delta", data(5))
    store.append("r1", 6, "run.completed", data(6))
    await store.flush()
    assert await store.events("r1") == [*rows, (4, "run.failed", data(4))]


async def test_update_is_a_snapshot_made_durable_by_flush(store: RunStore) -> None:
    record = make("r1", input="in")
    await store.create(record)
    record.status = "succeeded"
    record.output = {"answer": 42}
    record.usage = {"requests": 1, "input_tokens": 3, "output_tokens": 4, "tool_calls": 0}
    record.finished_at = T0 + 5
    record.last_seq = 7
    store.update(record)
    # The record was queued as it was at update(): later changes in place are not stored.
    record.status = "failed"
    record.output = "changed later"
    await store.flush()
    got = await store.get("r1")
    assert got is not None
    assert (got.status, got.output, got.finished_at, got.last_seq) == (
        "succeeded",
        {"answer": 42},
        T0 + 5,
        7,
    )
    assert got.usage == {"requests": 1, "input_tokens": 3, "output_tokens": 4, "tool_calls": 0}
    assert got.input == "in"  # update keeps what create stored


async def test_create_copies_the_record(store: RunStore) -> None:
    record = make("r1")
    await store.create(record)
    record.status = "cancelled"  # the manager mutates its record in place; only update() stores
    got = await store.get("r1")
    assert got is not None and got.status == "running"


async def test_error_round_trips(store: RunStore) -> None:
    record = make("r1")
    await store.create(record)
    record.status = "failed"
    record.error = {"type": "model_error", "message": "the model 'x' does not exist"}
    store.update(record)
    await store.flush()
    got = await store.get("r1")
    assert got is not None
    assert got.error == {"type": "model_error", "message": "the model 'x' does not exist"}
    assert got.ended


# ---- events ----------------------------------------------------------------------------------


async def test_events_come_back_in_order_as_the_same_bytes(store: RunStore) -> None:
    await store.create(make("r1"))
    body = '{"delta":"line\\nbreak \\u00e9 \\"quoted\\" 😀"}'.encode()
    store.append("r1", 1, "run.started", data(1))
    store.append("r1", 2, "text.delta", body)
    store.append("r1", 3, "run.completed", data(3))
    await store.flush()
    rows = await store.events("r1")
    assert rows == [
        (1, "run.started", data(1)),
        (2, "text.delta", body),
        (3, "run.completed", data(3)),
    ]
    assert all(type(row[2]) is bytes for row in rows)


async def test_events_after_and_limit_page_through_the_log(store: RunStore) -> None:
    await store.create(make("r1"))
    rows = await fill(store, "r1", 25)
    for after in (0, 1, 7, 24, 25, 30):
        for limit in (1, 3, 10, 1000):
            got = await store.events("r1", after, limit)
            assert got == rows[after : after + limit], (after, limit)
    # Paging with the last seq of each page as the next `after` yields every event once.
    pages, after = [], 0
    while page := await store.events("r1", after, 4):
        pages.append(page)
        after = page[-1][0]
    assert [row for page in pages for row in page] == rows
    assert [len(p) for p in pages] == [4, 4, 4, 4, 4, 4, 1]


async def test_events_are_kept_per_run(store: RunStore) -> None:
    await store.create(make("a"))
    await store.create(make("b"))
    for seq in range(1, 6):  # interleaved, as two live runs append them
        store.append("a", seq, "x", data(seq, run="a"))
        store.append("b", seq, "x", data(seq, run="b"))
    await store.flush()
    assert [json.loads(r[2])["run"] for r in await store.events("a")] == ["a"] * 5
    assert [json.loads(r[2])["run"] for r in await store.events("b", 2)] == ["b"] * 3
    assert await store.events("unknown") == []


async def test_events_appended_in_batches_across_flushes(store: RunStore) -> None:
    await store.create(make("r1"))
    rows = await fill(store, "r1", 3)
    rows += await fill(store, "r1", 4, first=4)
    assert await store.events("r1") == rows


# ---- listing ---------------------------------------------------------------------------------


async def _five(store: RunStore) -> None:
    specs = [
        ("r1", "alpha", "succeeded"),
        ("r2", "beta", "failed"),
        ("r3", "alpha", "running"),
        ("r4", "beta", "succeeded"),
        ("r5", "alpha", "succeeded"),
    ]
    for i, (run_id, worker, status) in enumerate(specs):
        await store.create(make(run_id, worker=worker, status=status, created_at=T0 + i))


async def test_list_is_newest_first_with_filters_and_limit(store: RunStore) -> None:
    await _five(store)

    async def ids(**kw: Any) -> list[str]:
        return [r.run_id for r in await store.list(**kw)]

    assert await ids() == ["r5", "r4", "r3", "r2", "r1"]
    assert await ids(limit=2) == ["r5", "r4"]
    assert await ids(worker="alpha") == ["r5", "r3", "r1"]
    assert await ids(status="succeeded") == ["r5", "r4", "r1"]
    assert await ids(worker="alpha", status="succeeded") == ["r5", "r1"]
    assert await ids(worker="alpha", status="succeeded", limit=1) == ["r5"]
    assert await ids(worker="gamma") == []
    assert await ids(status="interrupted") == []


async def test_list_sees_updated_status(store: RunStore) -> None:
    await _five(store)
    record = await store.get("r3")
    assert record is not None
    record.status = "cancelled"
    store.update(record)
    await store.flush()
    assert [r.run_id for r in await store.list(status="running")] == []
    assert [r.run_id for r in await store.list(status="cancelled")] == ["r3"]


# ---- unfinished runs -------------------------------------------------------------------------


async def test_unfinished_lists_only_runs_still_going(store: RunStore) -> None:
    for i, status in enumerate(
        ["running", "waiting_approval", "succeeded", "failed", "cancelled", "interrupted"]
    ):
        await store.create(make(f"r{i}", status=status, created_at=T0 + i))
    got = await store.unfinished()
    assert sorted((r.run_id, r.status) for r in got) == [
        ("r0", "running"),
        ("r1", "waiting_approval"),
    ]


async def test_unfinished_reports_the_last_stored_seq(
    store: RunStore, request: pytest.FixtureRequest
) -> None:
    """The manager updates a live record's last_seq only at approvals and at the end, so after
    a crash the record lags its events; recover() numbers the interrupted event last_seq + 1."""
    await store.create(make("r1", last_seq=0))
    await fill(store, "r1", 6)
    [record] = await store.unfinished()
    assert record.last_seq == 6


# ---- retention -------------------------------------------------------------------------------


async def test_prune_by_age_deletes_only_old_ended_runs_and_their_events(store: RunStore) -> None:
    now = time.time()
    old, new = now - 3600, now - 10
    await store.create(make("old-done", status="succeeded", created_at=old, last_seq=3))
    await store.create(make("old-failed", status="failed", created_at=old + 1))
    await store.create(make("old-running", status="running", created_at=old + 2))
    await store.create(make("old-waiting", status="waiting_approval", created_at=old + 3))
    await store.create(make("new-done", status="succeeded", created_at=new, last_seq=3))
    for run_id in ("old-done", "old-running", "new-done"):
        await fill(store, run_id, 3)

    assert await store.prune(max_age_s=600, max_runs=None) == 2
    left = {r.run_id for r in await store.list()}
    assert left == {"old-running", "old-waiting", "new-done"}
    assert await store.get("old-done") is None
    assert await store.events("old-done") == []
    assert len(await store.events("old-running")) == 3
    assert len(await store.events("new-done")) == 3
    assert await store.prune(max_age_s=600, max_runs=None) == 0


async def test_prune_by_count_keeps_the_newest_ended_runs(store: RunStore) -> None:
    now = time.time()
    statuses = ["succeeded", "running", "failed", "cancelled", "interrupted", "succeeded"]
    for i, status in enumerate(statuses):  # r0 oldest ... r5 newest
        await store.create(make(f"r{i}", status=status, created_at=now - 100 + i))
        await fill(store, f"r{i}", 2)

    assert await store.prune(max_age_s=None, max_runs=2) == 3  # r0, r2, r3 go
    left = [r.run_id for r in await store.list()]
    assert left == ["r5", "r4", "r1"]  # the newest two ended runs, and the running one
    for gone in ("r0", "r2", "r3"):
        assert await store.events(gone) == []
    assert len(await store.events("r1")) == 2
    assert await store.prune(max_age_s=None, max_runs=2) == 0
    assert await store.prune(max_age_s=None, max_runs=None) == 0


async def test_prune_by_age_and_count_together(store: RunStore) -> None:
    now = time.time()
    await store.create(make("ancient", status="succeeded", created_at=now - 10_000))
    for i in range(3):
        await store.create(make(f"recent{i}", status="succeeded", created_at=now - 10 + i))
    assert await store.prune(max_age_s=3600, max_runs=2) == 2  # ancient (age), recent0 (count)
    assert [r.run_id for r in await store.list()] == ["recent2", "recent1"]


# ---- SQLite only: a file that outlives the store object --------------------------------------


async def test_sqlite_close_and_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    first = SqliteRunStore(path)
    await first.open()
    record = make("r1", input={"q": "x"}, model="echo")
    await first.create(record)
    rows = await fill(first, "r1", 5)
    record.status, record.output, record.last_seq = "succeeded", "done", 6
    first.update(record)
    # Appended after the last flush: close() drains the queue before it stops.
    first.append("r1", 6, "late", data(6))
    await first.close()

    second = SqliteRunStore(path)
    await second.open()
    try:
        got = await second.get("r1")
        assert got is not None
        assert (got.status, got.output, got.input, got.model, got.last_seq) == (
            "succeeded",
            "done",
            {"q": "x"},
            "echo",
            6,
        )
        assert await second.events("r1") == [*rows, (6, "late", data(6))]
        assert [r.run_id for r in await second.list()] == ["r1"]
        assert await second.unfinished() == []
    finally:
        await second.close()


async def test_sqlite_a_failed_write_fails_its_flush_and_not_the_next(tmp_path: Path) -> None:
    """A write that fails (here: the table is gone) fails the flush that waited for it with
    the typed error and is kept; once writes work again, it goes in with the next batch and
    flushes succeed again."""
    path = tmp_path / "runs.sqlite3"
    store = SqliteRunStore(path)
    await store.open()
    try:
        await store.create(make("r1"))
        schema = (
            sqlite3.connect(path)
            .execute("SELECT sql FROM sqlite_master WHERE name = 'event_chunks'")
            .fetchone()[0]
        )
        with sqlite3.connect(path) as other:
            other.execute("DROP TABLE event_chunks")
        store.append("r1", 1, "a", data(1))
        with pytest.raises(StoreUnavailable, match="event_chunks"):
            await store.flush()
        with sqlite3.connect(path) as other:
            other.execute(schema)

        async def kept_batch_written() -> bool:  # tried again on its own, every second
            return await store.events("r1") == [(1, "a", data(1))]

        await eventually(kept_batch_written, within=10, what="the kept batch to be written")
        store.append("r1", 2, "b", data(2))
        await store.flush()
        assert await store.events("r1") == [(1, "a", data(1)), (2, "b", data(2))]
    finally:
        await store.close()


async def test_sqlite_flush_is_durable_for_another_connection(tmp_path: Path) -> None:
    """After flush() returns, another store on the same file (and a plain sqlite3 connection)
    sees the rows, while the first store is still open: nothing waits for close()."""
    path = tmp_path / "runs.sqlite3"
    writer = open_store(f"sqlite:///{path}")
    assert isinstance(writer, SqliteRunStore)
    await writer.open()
    reader = SqliteRunStore(path)
    await reader.open()
    try:
        record = make("r1")
        await writer.create(record)  # create() is durable when it returns
        assert await reader.get("r1") == record
        rows = await fill(writer, "r1", 40)
        record.status, record.last_seq = "succeeded", 40
        writer.update(record)
        await writer.flush()
        assert await reader.events("r1") == rows
        got = await reader.get("r1")
        assert got is not None and (got.status, got.last_seq) == ("succeeded", 40)

        def raw() -> tuple[int, str]:
            with sqlite3.connect(path) as conn:
                count = conn.execute(
                    "SELECT MAX(last_seq) FROM event_chunks WHERE run_id='r1'"
                ).fetchone()
                status = conn.execute("SELECT status FROM runs WHERE run_id='r1'").fetchone()
            return count[0], status[0]

        assert await anyio.to_thread.run_sync(raw) == (40, "succeeded")
    finally:
        await reader.close()
        await writer.close()


# ---- PostgreSQL only: connections lost, sessions stalled ------------------------------------


async def _admin(sql: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES, timeout=3)
    try:
        if sql.lstrip().upper().startswith("SELECT"):
            return await conn.fetch(sql)
        return await conn.execute(sql)
    finally:
        await conn.close()


async def test_postgres_a_write_whose_connection_dies_is_retried_at_once() -> None:
    """A connection lost in the middle of a write (PostgreSQL restarted, or ended a session
    that stalled in a transaction) is not a store that is down: the batch is written again
    at once on a fresh connection, and no run is failed for it. A trigger makes the server
    end the writing session once, in the middle of its transaction."""
    schema = await _postgres_schema()
    store = open_store(f"{POSTGRES}?schema={schema}")
    failures: list[set[str]] = []
    store.on_failure = lambda ids, exc: failures.append(ids)
    await store.open()
    try:
        await store.create(make("r1"))
        rows = await fill(store, "r1", 2)
        await _admin(f"""
            SET search_path = "{schema}";
            CREATE SEQUENCE kills;
            CREATE FUNCTION kill_once() RETURNS trigger AS $$ BEGIN
                IF nextval('kills') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid());
                END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER kill_once BEFORE INSERT ON event_chunks
                FOR EACH ROW EXECUTE FUNCTION kill_once();
        """)
        more = await fill(store, "r1", 2, first=3)
        assert (await _admin(f'SELECT last_value, is_called FROM "{schema}".kills'))[0][1]
        assert await store.events("r1") == rows + more
        assert failures == []
    finally:
        await store.close()
        await _drop_schema(schema)


async def test_postgres_an_unexpected_write_error_fails_that_flush_and_no_later_one() -> None:
    """The writer task is what every flush waits on: an error of a kind nobody foresaw (an
    asyncpg connection left in a broken state raised InternalClientError here once) must
    fail that flush with the typed error, not end the task and leave every later flush,
    and with it every run's end, waiting forever."""
    schema = await _postgres_schema()
    store = open_store(f"{POSTGRES}?schema={schema}")
    await store.open()
    try:
        await store.create(make("r1"))
        real = store._write  # type: ignore[attr-defined]
        calls = 0

        async def broken_once(*args: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("nobody saw this coming")
            await real(*args)

        store._write = broken_once  # type: ignore[attr-defined]
        store.append("r1", 1, "a", data(1))
        with anyio.fail_after(10), pytest.raises(StoreUnavailable, match="nobody saw"):
            await store.flush()
        with anyio.fail_after(10):
            await store.flush()  # the kept batch goes in with this one
        assert await store.events("r1") == [(1, "a", data(1))]
    finally:
        with anyio.move_on_after(10):  # bounded even if the writer task were gone
            await store.close()
        await _drop_schema(schema)


async def test_postgres_a_replica_stalled_in_a_transaction_does_not_block_the_others() -> None:
    """A replica frozen inside a transaction holds its row locks; another replica's write
    to the same run (a survivor ending it) waits for the server to end the stalled session
    (idle_in_transaction_session_timeout), then goes through instead of failing."""
    schema = await _postgres_schema()
    url = f"{POSTGRES}?schema={schema}"
    stalled, survivor = open_store(url), open_store(url)
    await stalled.open()
    await survivor.open()
    pool = stalled._pool  # type: ignore[attr-defined]
    conn = None
    try:
        await stalled.create(make("r1", owner="frozen"))
        conn = await pool.acquire()
        tx = conn.transaction()
        await tx.start()
        await conn.execute("UPDATE runs SET last_seq = 1 WHERE run_id = 'r1'")  # row lock
        # ...and the stalled replica sends nothing more.
        ended = make("r1", owner="frozen", status="interrupted", last_seq=1)
        survivor.append("r1", 1, "run.failed", data(1))
        survivor.update(ended)
        with anyio.fail_after(30):
            await survivor.flush()
        got = await survivor.get("r1")
        assert got is not None and got.status == "interrupted"
        assert await survivor.events("r1") == [(1, "run.failed", data(1))]
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()  # the server may have ended it already
                await pool.release(conn)
        await stalled.close()
        await survivor.close()
        await _drop_schema(schema)


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryRunStore)
    store = open_store(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    assert isinstance(store, SqliteRunStore) and store.path == tmp_path / "x.sqlite3"
    from app.runs.postgres import PostgresRunStore

    pg = open_store("postgresql://u@db.example/runs?schema=team1&sslmode=disable")
    assert isinstance(pg, PostgresRunStore) and pg.schema == "team1"
    assert pg.url == "postgresql://u@db.example/runs?sslmode=disable"
    with pytest.raises(ValueError, match="Unsupported"):
        open_store("mysql://nowhere")
