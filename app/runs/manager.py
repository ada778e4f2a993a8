"""RunManager: starts runs as tasks it owns, records them, logs and stores their events,
fans them out, delivers cancels and approval decisions, and stops them all on shutdown.

A run belongs to the manager, never to the HTTP request that started it: a client
that goes away asks for a cancel (or not, with on_disconnect=continue), it does not
kill the task. Every event is encoded once, appended to the run's in-memory log
(followers read it live) and queued for the store. The terminal event is held back
until it and the final record are durable: a run counts as ended only then.

With several replicas (a shared bus, see bus.py) a run lives on the replica that
started it; the others follow it through the bus, send it cancels and decisions
through the bus, and end it as `interrupted` when its owner's lease lapses (`reap`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
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
    LlmDoError,
    ModelResolver,
    RunAlreadyEnded,
    RunNotFound,
    RunResult,
    RuntimeConfig,
    StoreUnavailable,
    TooManyRuns,
    Unavailable,
    WorkerRegistry,
    WorkerRun,
)
from app.runtime.errors import from_dict
from app.runtime.events import RunFailed

from .bus import Bus, LocalBus
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

    __slots__ = ("_bus", "_store", "_terminal", "log", "record", "result", "run", "task")

    run: WorkerRun

    def __init__(self, record: RunRecord, store: RunStore, bus: Bus) -> None:
        self.record = record
        self.log = RunLog(hold=bus.shared)
        self.task: asyncio.Task[RunResult] | None = None
        self.result: RunResult | None = None
        self._store = store
        self._bus = bus if bus.shared else None
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
            if self._bus is not None:
                self._bus.publish(self.record.run_id, self.log)

    def end_log(self) -> None:
        """Show the terminal frame (once the end is durable) and close the log."""
        if self._terminal is not None:
            self.log.append(self._terminal)
        self.log.close()
        if self._bus is not None:
            self._bus.publish(self.record.run_id, self.log)

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
        bus: Bus | None = None,
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
        self.bus: Bus = bus or LocalBus()
        self.store.on_failure = self._store_failed
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

    @property
    def replica_id(self) -> str:
        return self.bus.replica_id

    async def recover(self) -> list[str]:
        """At start-up: end the runs the store still thinks are going whose process is
        gone (a stop or a crash of this one; with several replicas, a dead replica's)."""
        self._loop = asyncio.get_running_loop()
        return await self.reap()

    async def reap(self) -> list[str]:
        """End as `interrupted` every stored unfinished run no live process owns: not
        one of ours, and its owner's lease has lapsed. Each gets a terminal `run.failed`
        after its last event, written once (one replica claims it). Returns their ids."""
        records = [r for r in await self.store.unfinished() if r.run_id not in self._live]
        if not records:
            return []
        others = {r.owner for r in records if r.owner and r.owner != self.replica_id}
        alive = await self.bus.alive(others) if others else set()
        dead = [r for r in records if r.owner not in alive]
        if not dead or not await self.bus.can_judge():
            return []
        ids = []
        for record in dead:
            if await self.bus.claim(record.run_id) and await self._interrupt_stored(record):
                ids.append(record.run_id)
        if ids:
            log.warning("marked %d run(s) of stopped processes interrupted: %s", len(ids), ids)
        return ids

    async def _interrupt_stored(self, record: RunRecord) -> bool:
        """End one run whose owner is gone; False when it had in fact ended."""
        store, run_id = self.store, record.run_id
        last = await store.events(run_id, max(record.last_seq - 1, 0), 2)
        # Events that reached the bus but not the store (the owner died between the two).
        extra = await self.bus.frames_after(run_id, record.last_seq)
        for seq, type_, data in extra:
            store.append(run_id, seq, type_, data)
        final = (extra or last)[-1] if (extra or last) else None
        if final is not None and final[1] in TERMINAL_TYPES:
            # The terminal event was stored (or published) but the final record was not.
            _finish_from_terminal(record, *final)
            store.update(record)
            await store.flush()
            return False
        seq = (final[0] if final else record.last_seq) + 1
        if self.bus.shared and record.owner:
            why = f"replica {record.owner!r}, which ran it, stopped (its lease lapsed)"
        else:
            why = "the service stopped while this run was in flight"
        error = {"type": "interrupted", "message": why}
        event = RunFailed(
            run_id=run_id,
            worker=record.worker,
            path=(record.worker,),
            call_id=run_id,
            seq=seq,
            error=error,
        )
        data, sse = encode(event)
        store.append(run_id, seq, event.type, data)
        record.status, record.error, record.last_seq = "interrupted", error, seq
        record.finished_at = time.time()
        store.update(record)
        await store.flush()
        await self.bus.publish_frames(run_id, seq, sse)  # followers elsewhere see the end
        return True

    async def watch_leases(self) -> None:
        """With several replicas: now and then, reap the runs of replicas that died, and,
        for a lease after our own lease may have lapsed, stop our runs a survivor reaped."""
        checked = recheck_until = time.monotonic()
        while True:
            await asyncio.sleep(self.bus.beat_s * random.uniform(0.8, 1.2))
            now = time.monotonic()
            if self.bus.lease_lapsed_since(checked):
                recheck_until = now + self.bus.lease_s  # a survivor may reap us until then
            checked = now
            try:
                if now < recheck_until:
                    await self._stop_reaped()
                await self.reap()
            except Exception as exc:  # the store or the bus is down: try again next time
                log.warning("lease check failed: %s", exc)

    async def _stop_reaped(self) -> None:
        """Our runs that a survivor ended while it took us for dead (our loop stalled, or
        Redis was out of reach, for longer than the lease). Their stored end stands, so
        going on would spend tokens and run tools for a run every other replica reports
        ended: stop them here too."""
        for handle in list(self._live.values()):
            stored = await self.store.get(handle.run_id)
            if stored is None or not stored.ended or handle.record.ended:
                continue
            why = (
                f"another replica ended this run as {stored.status} while this one "
                f"({self.replica_id}) was out of reach for longer than its lease"
            )
            if handle.run.cancel(why, interrupted=True):
                log.warning("run %s stopped: %s", handle.run_id, why)

    def _store_failed(self, run_ids: set[str], error: BaseException) -> None:
        """The store could not take these runs' events: end them with a typed error
        rather than let them go on with events nobody can replay."""
        why = str(error) or type(error).__name__
        failure = StoreUnavailable(
            f"The run store cannot be written ({why}); the run was stopped so that no "
            "event is lost. Its events are kept and written when the store is back"
        )
        for run_id in run_ids:
            handle = self._live.get(run_id)
            if handle is not None and handle.run.fail(failure):
                log.error("run %s stopped: the store cannot be written: %s", run_id, error)

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
            run_id="",
            worker=name,
            status="running",
            created_at=time.time(),
            approval=mode,
            owner=self.replica_id,
        )
        handle = RunHandle(record, self.store, self.bus)
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
        self._live[run.run_id] = handle  # before the record is visible: nobody reaps it
        try:
            await self.store.create(record)
        except BaseException:
            self._live.pop(run.run_id, None)
            raise
        handle.task = asyncio.create_task(self._drive(handle), name=f"run-{run.run_id}")
        return handle

    async def _drive(self, handle: RunHandle) -> RunResult:
        record = handle.record
        result: RunResult | None = None
        began = time.monotonic()
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
            except StoreUnavailable as exc:  # kept by the store, written when it is back
                log.error("could not persist the end of run %s: %s", handle.run_id, exc)
            except Exception:
                log.exception("could not persist the end of run %s", handle.run_id)
            handle.record = record = final
            handle.end_log()
            handle.result = result
            self._live.pop(handle.run_id, None)
            if not cancelled and await self._superseded(final, began):
                log.warning(
                    "run %s was ended by another replica while this one, cut off for longer "
                    "than its lease, still ran it; the stored end stands",
                    handle.run_id,
                )
            else:
                self._recent[handle.run_id] = handle
                while len(self._recent) > self._keep_finished:
                    self._recent.popitem(last=False)
            log.info("run %s %s %s", handle.run_id, record.worker, record.status)
            if cancelled:
                raise asyncio.CancelledError

    async def _superseded(self, final: RunRecord, began: float) -> bool:
        """Whether a survivor reaped this run while our lease was lapsed: the store then
        keeps its end (an ended record is final), and so must our answers, so the run is
        not kept among the recent ones (GET and replays then read the store)."""
        if not self.bus.lease_lapsed_since(began):
            return False
        try:
            stored = await self.store.get(final.run_id)
        except StoreUnavailable:
            return False
        return stored is not None and (stored.status, stored.error, stored.last_seq) != (
            final.status,
            final.error,
            final.last_seq,
        )

    def live(self, run_id: str) -> RunHandle | None:
        return self._live.get(run_id) or self._recent.get(run_id)

    @property
    def live_count(self) -> int:
        return len(self._live)

    def _live_record(self, handle: RunHandle) -> dict[str, Any]:
        pending = [p.public() for p in handle.run.state.gate.pending]
        if not handle.record.ended:
            handle.record.last_seq = handle.run.state.sink.seq
        return handle.record.public(pending)

    async def record(self, run_id: str) -> dict[str, Any]:
        handle = self.live(run_id)
        if handle is not None:
            return self._live_record(handle)
        record = await self._stored(run_id)
        if self._elsewhere(record):
            try:  # the owner's view: pending approvals, the live event count
                return (await self._ask_owner(record, "record"))["record"]
            except Unavailable:
                pass  # the owner is unreachable: the stored record is the best answer
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
        record = await self._stored(run_id)
        if self._elsewhere(record):
            return self.bus.tail(run_id, after, self.store)
        return self._replay(run_id, after)

    async def _stored(self, run_id: str) -> RunRecord:
        record = await self.store.get(run_id)
        if record is None:
            raise RunNotFound(f"No run with id {run_id!r}")
        return record

    def _elsewhere(self, record: RunRecord) -> bool:
        """Whether the run is going on another replica (ask it through the bus)."""
        owner = record.owner
        return self.bus.shared and not record.ended and bool(owner) and owner != self.replica_id

    async def _ask_owner(self, record: RunRecord, op: str, **args: Any) -> dict[str, Any]:
        answer = await self.bus.request(
            record.owner or "", {"op": op, "run_id": record.run_id, **args}
        )
        if "error" in answer:
            raise from_dict(answer["error"])
        return answer

    async def on_control(self, message: dict[str, Any]) -> dict[str, Any]:
        """A request another replica sent through the bus for a run of ours; the answer
        (or the typed error) goes back to it. Answered from local state only."""
        run_id, op = message.get("run_id", ""), message.get("op")
        try:
            handle = self.live(run_id)
            if handle is None:
                record = await self._stored(run_id)
                if op == "record":
                    return {"record": record.public()}
                if op == "approvals":
                    return {"approvals": []}
                if op == "decide":
                    raise ApprovalAlreadyDecided(
                        f"Run {run_id!r} has ended; its approvals are closed"
                    )
                raise RunAlreadyEnded(f"Run {run_id!r} has already ended")
            if op == "cancel":
                return {
                    "status": await self._cancel_local(
                        handle, message.get("reason") or "cancelled by request"
                    )
                }
            if op == "decide":
                handle.run.state.gate.decide(
                    message["approval_id"],
                    message["decision"],
                    reason=message.get("reason"),
                    args=message.get("args"),
                )
                return {}
            if op == "record":
                return {"record": self._live_record(handle)}
            if op == "approvals":
                return {"approvals": [p.public() for p in handle.run.state.gate.pending]}
            return {"error": {"type": "error", "message": f"unknown request {op!r}"}}
        except LlmDoError as exc:
            return {"error": exc.as_dict()}

    async def _replay(self, run_id: str, after: int) -> AsyncIterator[bytes]:
        while True:
            rows = await self.store.events(run_id, after, REPLAY_PAGE)
            if not rows:
                return
            yield b"".join(frame(seq, type_, data) for seq, type_, data in rows)
            after = rows[-1][0]

    def cancel(self, run_id: str, reason: str = "cancelled by request") -> RunHandle:
        """Cancel a run of this process (see cancel_and_wait for any replica's)."""
        handle = self._live.get(run_id)
        if handle is None or not handle.run.cancel(reason):
            if handle is None and self._recent.get(run_id) is None:
                raise RunNotFound(f"No live run with id {run_id!r}")
            raise RunAlreadyEnded(f"Run {run_id!r} has already ended")
        return handle

    async def _cancel_local(self, handle: RunHandle, reason: str) -> str:
        if not handle.run.cancel(reason):
            raise RunAlreadyEnded(f"Run {handle.run_id!r} has already ended")
        return (await handle.wait()).status

    async def cancel_and_wait(self, run_id: str, reason: str = "cancelled by request") -> str:
        """Cancel the run wherever it runs; its final status, once it has ended."""
        handle = self._live.get(run_id) or self._recent.get(run_id)
        if handle is not None:
            return await self._cancel_local(handle, reason)
        record = await self._stored(run_id)
        if self._elsewhere(record):
            return (await self._ask_owner(record, "cancel", reason=reason))["status"]
        raise RunAlreadyEnded(f"Run {run_id!r} has already ended")

    # ---- approvals ------------------------------------------------------------------

    async def approvals(self, run_id: str) -> list[dict[str, Any]]:
        handle = self.live(run_id)
        if handle is not None:
            return [p.public() for p in handle.run.state.gate.pending]
        record = await self._stored(run_id)
        if self._elsewhere(record):
            return (await self._ask_owner(record, "approvals"))["approvals"]
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
        """Deliver a person's decision to the run's gate (the only place that decides),
        on whichever replica runs it."""
        handle = self.live(run_id)
        if handle is not None:
            handle.run.state.gate.decide(approval_id, decision, reason=reason, args=args)
            return
        record = await self._stored(run_id)
        if self._elsewhere(record):
            await self._ask_owner(
                record,
                "decide",
                approval_id=approval_id,
                decision=decision,
                reason=reason,
                args=args,
            )
            return
        raise ApprovalAlreadyDecided(f"Run {run_id!r} has ended; its approvals are closed")
