"""The run manager in-process (no HTTP): durable terminal events, recovery after a crash,
approval status, replay, and the RunLog's followers.

Workers are written to a temp folder and run on the offline `echo` model or on a scripted
FunctionModel; stores are the real SQLite and memory stores, or a memory store whose flush
a test holds open.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from app.runs import (
    MemoryRunStore,
    RunHandle,
    RunLog,
    RunManager,
    RunRecord,
    RunStore,
    SqliteRunStore,
    frame,
)
from app.runtime import (
    ModelResolver,
    RunAlreadyEnded,
    RunNotFound,
    StoreUnavailable,
    WorkerRegistry,
)

pytestmark = pytest.mark.anyio

TERMINAL = (b"run.completed", b"run.failed", b"run.cancelled")


# ---- helpers ---------------------------------------------------------------------------------


def write_worker(folder: Path, name: str, front: str = "model: echo", body: str = "Echo.") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.worker").write_text(f"---\nname: {name}\n{front}\n---\n{body}\n", "utf-8")


@pytest.fixture
def registry(tmp_path: Path) -> WorkerRegistry:
    workers = tmp_path / "workers"
    write_worker(workers, "echoer")
    return WorkerRegistry(workers)


def frames_of(blob: bytes) -> list[bytes]:
    """Split SSE bytes into frames (each ends with its blank line)."""
    return [f + b"\n\n" for f in blob.split(b"\n\n") if f]


def parse(frame_bytes: bytes) -> tuple[int, str, dict[str, Any]]:
    fields = dict(line.split(b": ", 1) for line in frame_bytes.strip().split(b"\n"))
    return int(fields[b"id"]), fields[b"event"].decode(), json.loads(fields[b"data"])


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


class GatedFlushStore(MemoryRunStore):
    """A memory store whose flush(), once armed, waits until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def flush(self) -> None:
        if self.armed:
            self.entered.set()
            await self.release.wait()


class RecordingSqliteStore(SqliteRunStore):
    """SQLite, noting the status of every record queued with update()."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.statuses: list[str] = []

    def update(self, record: RunRecord) -> None:
        self.statuses.append(record.status)
        super().update(record)


class Scripted(ModelResolver):
    """Hands out the given models by name, and the built-in ones otherwise."""

    def __init__(self, models: dict[str, Model]) -> None:
        super().__init__()
        self.models = models

    def get(self, name: str) -> Model:
        return self.models.get(name) or super().get(name)


# ---- the terminal event is sent only once it is durable --------------------------------------


async def test_terminal_frame_is_held_back_until_the_store_flush(
    registry: WorkerRegistry,
) -> None:
    store = GatedFlushStore()
    manager = RunManager(registry, store=store)
    with anyio.fail_after(10):
        await manager.recover()
        store.armed = True
        handle = await manager.start("echoer", "one two three")
        early = handle.log.follow()  # a follower that is reading while the run ends
        await store.entered.wait()  # the run has ended and waits on its final flush

        # Queued for the store, but not given to any follower yet.
        assert [row[1] for row in await store.events(handle.run_id)][-1] == "run.completed"
        assert handle.log.frames, "the run's other events are live"
        assert not any(parse(f)[1] == "run.completed" for f in handle.log.frames)
        assert not handle.log.closed
        assert manager.live_count == 1

        store.release.set()
        result = await handle.wait()
        blob = await read_all(early)

    assert result.status == "succeeded"
    frames = frames_of(blob)
    assert parse(frames[-1])[1] == "run.completed"
    assert [parse(f)[0] for f in frames] == list(range(1, len(frames) + 1))
    assert handle.log.closed and manager.live_count == 0


async def test_cancel_while_the_final_flush_is_pending_leaves_the_run_succeeded(
    registry: WorkerRegistry,
) -> None:
    store = GatedFlushStore()
    manager = RunManager(registry, store=store)
    with anyio.fail_after(10):
        await manager.recover()
        store.armed = True
        handle = await manager.start("echoer", "hello")
        follower = handle.log.follow()
        await store.entered.wait()
        try:
            with contextlib.suppress(RunAlreadyEnded):  # 409 is fine; a half-ended run is not
                manager.cancel(handle.run_id)
        finally:
            store.release.set()
        assert handle.task is not None
        await asyncio.wait([handle.task])  # returns when the task is done, however it ended
        assert not handle.task.cancelled(), "the run task was cancelled while recording its end"
        assert handle.task.result().status == "succeeded"
        assert handle.log.closed and manager.live_count == 0
        blob = await read_all(follower)
    kinds = [parse(f)[1] for f in frames_of(blob)]
    assert kinds[-1] == "run.completed" and "run.cancelled" not in kinds


# ---- recovery after a crash ------------------------------------------------------------------


def _store(kind: str, tmp_path: Path) -> RunStore:
    return SqliteRunStore(tmp_path / "runs.sqlite3") if kind == "sqlite" else MemoryRunStore()


STORES = ["sqlite", "memory"]


@pytest.mark.parametrize("kind", STORES)
async def test_recover_marks_unfinished_runs_interrupted(
    kind: str, registry: WorkerRegistry, tmp_path: Path
) -> None:
    store = _store(kind, tmp_path)
    await store.open()
    try:
        # What a crash leaves behind: records still "going" whose last_seq lags their events.
        crashed = RunRecord("crashed", "echoer", "running", created_at=1.0, last_seq=1)
        waiting = RunRecord("waiting", "echoer", "waiting_approval", created_at=2.0, last_seq=2)
        done = RunRecord("done", "echoer", "succeeded", created_at=3.0, last_seq=2)
        for record, n in ((crashed, 3), (waiting, 2), (done, 2)):
            await store.create(record)
            for seq in range(1, n + 1):
                store.append(record.run_id, seq, "text.delta", b'{"seq":%d}' % seq)
        await store.flush()

        manager = RunManager(registry, store=store)
        with anyio.fail_after(10):
            ids = await manager.recover()
            assert sorted(ids) == ["crashed", "waiting"]
            for run_id, last in (("crashed", 3), ("waiting", 2)):
                record = await store.get(run_id)
                assert record is not None
                assert record.status == "interrupted"
                assert record.error is not None and record.error["type"] == "interrupted"
                assert record.finished_at is not None and record.last_seq == last + 1
                rows = await store.events(run_id)
                assert [r[0] for r in rows] == list(range(1, last + 2))
                seq, kind_, data = rows[-1]
                assert kind_ == "run.failed"
                event = json.loads(data)
                assert event["seq"] == seq == last + 1
                assert event["error"]["type"] == "interrupted"
                assert (event["run_id"], event["worker"], event["call_id"]) == (
                    run_id,
                    "echoer",
                    run_id,
                )
                assert event["path"] == ["echoer"]
                # Replay ends with the interrupted event, framed like a live one.
                blob = await read_all(await manager.follow(run_id))
                assert frames_of(blob) == [frame(*row) for row in rows]
                assert (await manager.record(run_id))["status"] == "interrupted"
            untouched = await store.get("done")
            assert untouched is not None and untouched.status == "succeeded"
            assert len(await store.events("done")) == 2
            with pytest.raises(RunAlreadyEnded):
                await manager.cancel_and_wait("crashed")
            assert await manager.recover() == []  # idempotent: nothing is left going
    finally:
        await store.close()


async def test_recover_never_adds_a_second_terminal_event(
    registry: WorkerRegistry, tmp_path: Path
) -> None:
    """The terminal event and the final record are two queue items; the writer thread may
    commit them in two batches, and a crash between the two leaves a `running` record whose
    events already end with `run.completed`."""
    store = SqliteRunStore(tmp_path / "runs.sqlite3")
    await store.open()
    try:
        await store.create(RunRecord("r1", "echoer", "running", created_at=1.0))
        for seq, kind in enumerate(["run.started", "text.delta", "run.completed"], start=1):
            store.append("r1", seq, kind, b'{"seq":%d,"type":"%s"}' % (seq, kind.encode()))
        await store.flush()
        with anyio.fail_after(10):
            await RunManager(registry, store=store).recover()
            kinds = [row[1] for row in await store.events("r1")]
            record = await store.get("r1")
    finally:
        await store.close()
    assert record is not None and record.ended
    assert sum(k in ("run.completed", "run.failed", "run.cancelled") for k in kinds) == 1, kinds


# ---- approvals change the status -------------------------------------------------------------


def _writer_script(seen: list[list[ModelMessage]]) -> FunctionModel:
    """First turn: write_file (gated); second turn: report the tool result as text."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        seen.append(list(messages))
        if len(seen) == 1:
            args = json.dumps({"path": "out/note.txt", "content": "hi"})
            yield {0: DeltaToolCall(name="write_file", json_args=args, tool_call_id="w1")}
            return
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        [ret] = [p for p in last.parts if isinstance(p, ToolReturnPart)]
        yield f"tool said: {ret.content}"

    return FunctionModel(stream_function=stream, model_name="writer")


@pytest.mark.parametrize("decision", ["approve", "deny"])
async def test_approvals_move_the_status_to_waiting_approval_and_back(
    decision: str, tmp_path: Path
) -> None:
    workers = tmp_path / "workers"
    front = "model: script:writer\nsandbox:\n  paths:\n    out: {root: out, mode: rw}"
    write_worker(workers, "writer", front)
    seen: list[list[ModelMessage]] = []
    store = RecordingSqliteStore(tmp_path / "runs.sqlite3")
    await store.open()
    try:
        manager = RunManager(
            WorkerRegistry(workers),
            store=store,
            models=Scripted({"script:writer": _writer_script(seen)}),
        )
        with anyio.fail_after(10):
            await manager.recover()
            handle = await manager.start("writer", "write it")
            assert handle.record.status == "running"
            events = handle.log.follow()
            await _until(events, "approval.requested")

            record = await manager.record(handle.run_id)
            assert record["status"] == "waiting_approval"
            [pending] = record["pending_approvals"]
            assert pending["tool"] == "write_file"
            await store.flush()
            stored = await store.get(handle.run_id)
            assert stored is not None and stored.status == "waiting_approval"
            assert stored.last_seq == handle.run.state.sink.seq  # the request is numbered
            listed = await manager.list(status="waiting_approval")
            assert [r["run_id"] for r in listed] == [handle.run_id]

            await manager.decide(handle.run_id, pending["approval_id"], decision)  # type: ignore[arg-type]
            assert handle.record.status == "running"
            assert (await manager.record(handle.run_id))["pending_approvals"] == []

            result = await handle.wait()
            rest = frames_of(await read_all(events))
    finally:
        await store.close()

    assert result.status == "succeeded"
    # Every status the record went through was queued for the store, in order.
    assert store.statuses == ["waiting_approval", "running", "succeeded"]
    kinds = [parse(f)[1] for f in rest]
    assert "approval.resolved" in kinds and kinds[-1] == "run.completed"
    written = (tmp_path / "out" / "note.txt").exists()
    assert written is (decision == "approve")
    assert ("Wrote 2 bytes" in result.output) is (decision == "approve")


async def _until(chunks: AsyncIterator[bytes], kind: str) -> None:
    async for chunk in chunks:
        if any(parse(f)[1] == kind for f in frames_of(chunk)):
            return
    raise AssertionError(f"the log closed without a {kind} event")


# ---- replay and followers of a real run ------------------------------------------------------


async def test_replay_from_the_store_equals_the_live_frames(
    registry: WorkerRegistry, tmp_path: Path
) -> None:
    """keep_finished=0: once ended, the run is read back from SQLite, not from memory."""
    store = SqliteRunStore(tmp_path / "runs.sqlite3")
    await store.open()
    try:
        manager = RunManager(registry, store=store, keep_finished=0)
        with anyio.fail_after(10):
            await manager.recover()
            text = " ".join(f"wörd{i}\n" for i in range(700))  # > one replay page of events
            handle = await manager.start("echoer", text)
            live = await read_all(handle.log.follow())
            await handle.wait()
            assert manager.live(handle.run_id) is None
            replay = await read_all(await manager.follow(handle.run_id))
            after = await read_all(await manager.follow(handle.run_id, 650))
    finally:
        await store.close()
    assert replay == live
    frames = frames_of(live)
    assert len(frames) > 700
    assert frames_of(after) == frames[650:]


async def test_follow_unknown_run_raises(registry: WorkerRegistry) -> None:
    manager = RunManager(registry)
    with pytest.raises(RunNotFound):
        await manager.follow("no-such-run")
    with pytest.raises(RunNotFound):
        manager.cancel("no-such-run")


async def test_a_follower_that_never_reads_does_not_hold_up_the_run(
    registry: WorkerRegistry,
) -> None:
    manager = RunManager(registry)
    with anyio.fail_after(10):
        handle = await manager.start("echoer", " ".join(f"w{i}" for i in range(300)))
        stalled = handle.log.follow()
        first = await anext(stalled)  # reads once, then never again
        reader = handle.log.follow()
        blob = await read_all(reader)
        result = await handle.wait()
    assert result.status == "succeeded"
    assert parse(frames_of(blob)[-1])[1] == "run.completed"
    # When it does read again, the stalled follower gets the rest as one chunk.
    rest = await anext(stalled)
    assert first + rest == blob
    await stalled.aclose()


# ---- RunLog: one producer, many followers ----------------------------------------------------


def _frames(n: int) -> list[bytes]:
    return [frame(i, "text.delta", b'{"delta":"%d"}' % i) for i in range(1, n + 1)]


@pytest.mark.parametrize("followers", [2, 10])
async def test_followers_of_one_log_get_identical_bytes(followers: int) -> None:
    log = RunLog()
    frames = _frames(500)
    got: list[bytes] = [b""] * followers

    async def follow(i: int) -> None:
        async for chunk in log.follow():
            got[i] += chunk

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(followers):
                tg.start_soon(follow, i)
            for i, f in enumerate(frames):
                log.append(f)
                if i % 7 == 0:
                    await anyio.lowlevel.checkpoint()  # let the followers interleave
            log.close()
    assert all(g == b"".join(frames) for g in got)


async def test_follow_after_k_starts_past_k_live_and_after_close() -> None:
    log = RunLog()
    frames = _frames(20)
    for f in frames[:5]:
        log.append(f)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            results: dict[int, bytes] = {}

            async def follow(after: int) -> None:
                results[after] = await read_all(log.follow(after))

            for after in (0, 3, 5, 12):
                tg.start_soon(follow, after)
            await anyio.lowlevel.checkpoint()
            for f in frames[5:]:
                log.append(f)
            log.close()
        late = await read_all(log.follow(17))
    for after in (0, 3, 5, 12):
        assert results[after] == b"".join(frames[after:]), after
    assert late == b"".join(frames[17:])
    assert await read_all(log.follow(20)) == b""


async def test_a_follower_that_never_reads_does_not_block_append() -> None:
    assert not inspect.iscoroutinefunction(RunLog.append)  # the producer never awaits
    log = RunLog()
    frames = _frames(20_000)
    log.append(frames[0])
    stalled = log.follow()
    assert await anext(stalled) == frames[0]
    pending = asyncio.ensure_future(anext(stalled))  # parked on the log's waiter, then ignored
    await anyio.lowlevel.checkpoint()
    for f in frames[1:]:
        log.append(f)  # returns at once, every time
    log.close()
    with anyio.fail_after(5):
        everything = await read_all(log.follow())
        caught_up = await pending
    assert everything == b"".join(frames)
    assert caught_up == b"".join(frames[1:])  # all it missed, as one chunk
    await stalled.aclose()


async def test_handle_is_what_start_returns(registry: WorkerRegistry) -> None:
    manager = RunManager(registry)
    with anyio.fail_after(10):
        handle = await manager.start("echoer", "x")
        assert isinstance(handle, RunHandle)
        assert manager.live(handle.run_id) is handle
        await handle.wait()
    record = await manager.record(handle.run_id)
    assert (record["status"], record["output"], record["events"]) == ("succeeded", "x", 5)


# ---- a store that cannot be written ----------------------------------------------------------


class BreakableStore(MemoryRunStore):
    """A memory store that, once broken, refuses writes the way the PostgreSQL store does:
    flush raises StoreUnavailable and the runs with unwritten events are reported."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def break_now(self, pending: set[str]) -> None:
        """The database goes away with these runs' events still unwritten."""
        self.broken = True
        assert self.on_failure is not None, "the manager listens for store failures"
        self.on_failure(pending, OSError("connection refused"))

    async def flush(self) -> None:
        if self.broken:
            raise StoreUnavailable("The run store (PostgreSQL) cannot be written: refused")

    async def create(self, record: RunRecord) -> None:
        await self.flush()
        await super().create(record)


def _stalling_model(started: asyncio.Event) -> FunctionModel:
    """Streams one word, then waits for ever (until the run is stopped)."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "first "
        started.set()
        await asyncio.Event().wait()
        yield "never"

    return FunctionModel(stream_function=stream, model_name="stall")


async def test_a_run_whose_events_cannot_be_stored_fails_with_store_unavailable(
    tmp_path: Path,
) -> None:
    workers = tmp_path / "workers"
    write_worker(workers, "staller", "model: script:stall")
    started = asyncio.Event()
    store = BreakableStore()
    manager = RunManager(
        WorkerRegistry(workers),
        store=store,
        models=Scripted({"script:stall": _stalling_model(started)}),
    )
    with anyio.fail_after(10):
        await manager.recover()
        handle = await manager.start("staller", "go")
        follower = handle.log.follow()
        await started.wait()
        # The run stops with a typed error, which the follower still gets (its frame is
        # shown though the store refused it).
        store.break_now({handle.run_id})
        result = await handle.wait()
        frames = frames_of(await read_all(follower))

    assert result.status == "failed"
    assert result.error is not None and result.error["type"] == "store_unavailable"
    seq, kind, body = parse(frames[-1])
    assert kind == "run.failed" and body["error"]["type"] == "store_unavailable"
    assert "cannot be written" in body["error"]["message"]
    assert [parse(f)[0] for f in frames] == list(range(1, seq + 1))

    with anyio.fail_after(10):  # and a new run is refused with the same typed error
        with pytest.raises(StoreUnavailable):
            await manager.start("staller", "again")
    assert manager.live_count == 0
