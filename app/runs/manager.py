"""RunManager: starts runs as tasks it owns, records them, logs and stores their events,
fans them out, delivers cancels and approval decisions, and stops them all on shutdown.

A run belongs to the manager, never to the HTTP request that started it: a client
that goes away asks for a cancel (or not, with on_disconnect=continue), it does not
kill the task. Every event is encoded once, appended to the run's in-memory log
(followers read it live) and queued for the store. The terminal event is held back
until it and the final record are durable: a run counts as ended only then.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from app.runtime import (
    TERMINAL_TYPES,
    ApprovalAlreadyDecided,
    ApprovalMode,
    Attachment,
    DecisionKind,
    Event,
    ModelResolver,
    RunAlreadyEnded,
    RunNotFound,
    RunResult,
    RuntimeConfig,
    TooManyRuns,
    Unavailable,
    WorkerRegistry,
    WorkerRun,
)
from app.runtime.events import RunFailed

from .log import RunLog
from .memory import MemoryRunStore
from .records import RunRecord
from .store import RunStore
from .wire import encode, frame

log = logging.getLogger("llm_do.runs")

REPLAY_PAGE = 500


_TERMINAL_STATUS = {"run.completed": "succeeded", "run.cancelled": "cancelled"}


def _finish_from_terminal(record: RunRecord, seq: int, type_: str, data: bytes) -> None:
    body = json.loads(data)
    status = _TERMINAL_STATUS.get(type_, "failed")
    if type_ == "run.failed" and body.get("error", {}).get("type") == "interrupted":
        status = "interrupted"
    record.status = status  # type: ignore[assignment]
    record.output, record.error = body.get("output"), body.get("error")
    record.usage, record.last_seq = body.get("usage"), seq
    record.finished_at = record.finished_at or time.time()


class RunHandle:
    """A live (or just finished) run: its runtime object, record, frames and result."""

    __slots__ = ("_store", "_terminal", "log", "record", "result", "run", "task")

    run: WorkerRun

    def __init__(self, record: RunRecord, store: RunStore) -> None:
        self.record = record
        self.log = RunLog()
        self.task: asyncio.Task[RunResult] | None = None
        self.result: RunResult | None = None
        self._store = store
        self._terminal: bytes | None = None

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def on_event(self, event: Event) -> None:
        """The hot path: encode once, queue for the store, append for the followers."""
        data, sse = encode(event)
        self._store.append(event.run_id, event.seq, event.type, data)
        if event.type in TERMINAL_TYPES:
            self._terminal = sse  # sent once it is durable (see RunManager._drive)
        else:
            self.log.append(sse)

    def approvals_changed(self) -> None:
        record = self.record
        if record.ended:
            return
        status = "waiting_approval" if self.run.state.gate.pending else "running"
        if status != record.status:
            record.status = status
            record.last_seq = self.run.state.sink.seq
            self._store.update(record)

    async def wait(self) -> RunResult:
        """The result, once the run ends. Waiting does not own the run: cancelling the
        waiter leaves the run going."""
        assert self.task is not None
        return await asyncio.shield(self.task)


class RunManager:
    def __init__(
        self,
        registry: WorkerRegistry,
        *,
        store: RunStore | None = None,
        config: RuntimeConfig | None = None,
        models: ModelResolver | None = None,
        default_approval: ApprovalMode = "prompt",
        keep_finished: int = 200,
        max_runs: int = 100,
        grace_s: float = 5,
    ) -> None:
        self.max_runs = max_runs
        self.grace_s = grace_s
        self.registry = registry
        self.store: RunStore = store or MemoryRunStore()
        self.config = config or RuntimeConfig()
        self.models = models or ModelResolver()
        self.default_approval = default_approval
        self._live: dict[str, RunHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self._recent: OrderedDict[str, RunHandle] = OrderedDict()
        self._keep_finished = keep_finished

    # ---- lifecycle ------------------------------------------------------------------

    def begin_shutdown_threadsafe(self, reason: str = "the service is shutting down") -> None:
        """From a signal handler: refuse new runs at once (503), let the live ones finish
        for `grace_s`, then end the rest as `interrupted`. Set before the server closes
        any stream, so a closed stream does not look like a client leaving."""
        self.stopping = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(
                self._loop.call_later, self.grace_s, self._interrupt_all, reason
            )

    def _interrupt_all(self, reason: str) -> None:
        for handle in list(self._live.values()):
            handle.run.cancel(reason, interrupted=True)

    async def recover(self) -> list[str]:
        """At start-up: runs the store still thinks are going were cut off by a stop or a
        crash. Each ends `interrupted`, with a terminal `run.failed` event after its last."""
        self._loop = asyncio.get_running_loop()
        ids = []
        for record in await self.store.unfinished():
            last = await self.store.events(record.run_id, max(record.last_seq - 1, 0), 1)
            if last and last[0][1] in TERMINAL_TYPES:
                # The terminal event was stored but the final record was not: finish it.
                _finish_from_terminal(record, last[0][0], last[0][1], last[0][2])
                self.store.update(record)
                continue
            seq = record.last_seq + 1
            error = {
                "type": "interrupted",
                "message": "the service stopped while this run was in flight",
            }
            event = RunFailed(
                run_id=record.run_id,
                worker=record.worker,
                path=(record.worker,),
                call_id=record.run_id,
                seq=seq,
                error=error,
            )
            data, _ = encode(event)
            self.store.append(record.run_id, seq, event.type, data)
            record.status, record.error, record.last_seq = "interrupted", error, seq
            record.finished_at = time.time()
            self.store.update(record)
            ids.append(record.run_id)
        await self.store.flush()
        if ids:
            log.warning("marked %d run(s) interrupted by the last stop: %s", len(ids), ids)
        return ids

    async def shutdown(self, reason: str = "the service is shutting down") -> None:
        """Give live runs the rest of the grace period, end the others as `interrupted`,
        and wait until each is recorded."""
        self.stopping = True
        handles = list(self._live.values())
        pending = [h.task for h in handles if h.task is not None and not h.task.done()]
        if pending and self.grace_s > 0:
            await asyncio.wait(pending, timeout=self.grace_s)
        self._interrupt_all(reason)
        tasks = [h.task for h in handles if h.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.flush()

    # ---- runs -----------------------------------------------------------------------

    async def start(
        self,
        name: str,
        input: Any = None,
        *,
        model: str | None = None,
        attachments: list[Attachment] | None = None,
        approval: ApprovalMode | None = None,
        stream_tokens: bool = True,
    ) -> RunHandle:
        """Start a run; raises the runtime's typed errors (unknown worker, bad input, ...)
        before anything is recorded. The record is durable when this returns.
        `stream_tokens=False` asks models for whole responses: cheaper, for a client that
        only wants the result (followers then see one text.delta per response)."""
        if self.stopping:
            raise Unavailable("The service is shutting down; start the run again in a moment")
        if len(self._live) >= self.max_runs:
            raise TooManyRuns(
                f"{len(self._live)} runs are going, the limit (LLM_DO_MAX_RUNS); "
                "retry when one has ended"
            )
        mode = approval or self.default_approval
        record = RunRecord(
            run_id="", worker=name, status="running", created_at=time.time(), approval=mode
        )
        handle = RunHandle(record, self.store)
        handle.run = run = WorkerRun(
            self.registry,
            name,
            input,
            on_event=handle.on_event,
            attachments=attachments,
            model=model,
            approval=mode,
            config=self.config,
            models=self.models,
            on_approvals_changed=handle.approvals_changed,
            stream_tokens=stream_tokens,
        )
        run.prepare()
        record.run_id = run.run_id
        record.model = run.model
        record.input = input
        record.started_at = time.time()
        await self.store.create(record)
        self._live[run.run_id] = handle
        handle.task = asyncio.create_task(self._drive(handle), name=f"run-{run.run_id}")
        return handle

    async def _drive(self, handle: RunHandle) -> RunResult:
        record = handle.record
        result: RunResult | None = None
        try:
            result = await handle.run.execute()
            return result
        finally:
            # The record says "ended" only once its end is durable: build the final state
            # aside, store it, then show it.
            final = replace(record, finished_at=time.time(), last_seq=handle.run.state.sink.seq)
            if result is None:  # cancelled from outside, not by us: the process is going away
                final.status = "interrupted"
            else:
                final.status, final.output = result.status, result.output
                final.error, final.usage = result.error, result.usage
            self.store.update(final)
            cancelled = False
            try:
                await asyncio.shield(self.store.flush())
            except asyncio.CancelledError:
                cancelled = True  # still close the log below, then let it propagate
            except Exception:
                log.exception("could not persist the end of run %s", handle.run_id)
            handle.record = record = final
            if handle._terminal is not None:
                handle.log.append(handle._terminal)
            handle.log.close()
            handle.result = result
            self._live.pop(handle.run_id, None)
            self._recent[handle.run_id] = handle
            while len(self._recent) > self._keep_finished:
                self._recent.popitem(last=False)
            log.info("run %s %s %s", handle.run_id, record.worker, record.status)
            if cancelled:
                raise asyncio.CancelledError

    def live(self, run_id: str) -> RunHandle | None:
        return self._live.get(run_id) or self._recent.get(run_id)

    @property
    def live_count(self) -> int:
        return len(self._live)

    async def record(self, run_id: str) -> dict[str, Any]:
        handle = self.live(run_id)
        if handle is not None:
            pending = [p.public() for p in handle.run.state.gate.pending]
            if not handle.record.ended:
                handle.record.last_seq = handle.run.state.sink.seq
            return handle.record.public(pending)
        record = await self.store.get(run_id)
        if record is None:
            raise RunNotFound(f"No run with id {run_id!r}")
        return record.public()

    async def list(
        self, *, worker: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Newest first. Live runs are shown as they are now (the store's copy of a live
        record can lag by a few milliseconds)."""

        def wanted(r: RunRecord) -> bool:
            return (worker is None or r.worker == worker) and (status is None or r.status == status)

        stored = await self.store.list(worker=worker, status=status, limit=limit)
        records = {r.run_id: r for r in stored if r.run_id not in self._live}
        records |= {h.run_id: h.record for h in self._live.values() if wanted(h.record)}
        newest = sorted(records.values(), key=lambda r: r.created_at, reverse=True)
        return [r.public() for r in newest[:limit]]

    async def follow(self, run_id: str, after: int = 0) -> AsyncIterator[bytes]:
        """The run's SSE frames with seq > after: live until its terminal event, or
        replayed from the store for a run that has ended."""
        handle = self.live(run_id)
        if handle is not None:
            return handle.log.follow(after)
        if await self.store.get(run_id) is None:
            raise RunNotFound(f"No run with id {run_id!r}")
        return self._replay(run_id, after)

    async def _replay(self, run_id: str, after: int) -> AsyncIterator[bytes]:
        while True:
            rows = await self.store.events(run_id, after, REPLAY_PAGE)
            if not rows:
                return
            yield b"".join(frame(seq, type_, data) for seq, type_, data in rows)
            after = rows[-1][0]

    def cancel(self, run_id: str, reason: str = "cancelled by request") -> RunHandle:
        handle = self._live.get(run_id)
        if handle is None or not handle.run.cancel(reason):
            if handle is None and self._recent.get(run_id) is None:
                raise RunNotFound(f"No live run with id {run_id!r}")
            raise RunAlreadyEnded(f"Run {run_id!r} has already ended")
        return handle

    async def cancel_and_wait(self, run_id: str, reason: str = "cancelled by request") -> str:
        try:
            handle = self.cancel(run_id, reason)
        except RunNotFound:
            if await self.store.get(run_id) is not None:
                raise RunAlreadyEnded(f"Run {run_id!r} has already ended") from None
            raise
        result = await handle.wait()
        return result.status

    # ---- approvals ------------------------------------------------------------------

    async def approvals(self, run_id: str) -> list[dict[str, Any]]:
        handle = self.live(run_id)
        if handle is not None:
            return [p.public() for p in handle.run.state.gate.pending]
        if await self.store.get(run_id) is None:
            raise RunNotFound(f"No run with id {run_id!r}")
        return []

    async def decide(
        self,
        run_id: str,
        approval_id: str,
        decision: DecisionKind,
        *,
        reason: str | None = None,
        args: dict[str, Any] | None = None,
    ) -> None:
        """Deliver a person's decision to the run's gate (the only place that decides)."""
        handle = self.live(run_id)
        if handle is None:
            if await self.store.get(run_id) is None:
                raise RunNotFound(f"No run with id {run_id!r}")
            raise ApprovalAlreadyDecided(f"Run {run_id!r} has ended; its approvals are closed")
        handle.run.state.gate.decide(approval_id, decision, reason=reason, args=args)
