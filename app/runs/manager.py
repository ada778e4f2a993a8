"""RunManager: starts runs as tasks it owns, keeps their logs, cancels them, stops them all.

A run belongs to the manager, never to the HTTP request that started it: a client
that goes away asks for a cancel (or not, with on_disconnect=continue), it does not
kill the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from app.runtime import (
    ApprovalMode,
    Attachment,
    DecisionKind,
    Event,
    ModelResolver,
    RunAlreadyEnded,
    RunNotFound,
    RunResult,
    RuntimeConfig,
    WorkerRegistry,
    WorkerRun,
)

from .log import RunLog
from .wire import encode

log = logging.getLogger("llm_do.runs")


class RunHandle:
    """A run the manager owns: its runtime object, its frames, and how it ended."""

    __slots__ = ("created_at", "log", "result", "run", "task")

    run: WorkerRun

    def __init__(self) -> None:
        self.log = RunLog()
        self.created_at = time.time()
        self.task: asyncio.Task[RunResult] | None = None
        self.result: RunResult | None = None

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def on_event(self, event: Event) -> None:
        self.log.append(encode(event))

    async def wait(self) -> RunResult:
        """The result, once the run ends. Waiting does not own the run: cancelling the waiter
        leaves the run going."""
        assert self.task is not None
        return await asyncio.shield(self.task)


class RunManager:
    def __init__(
        self,
        registry: WorkerRegistry,
        *,
        config: RuntimeConfig | None = None,
        models: ModelResolver | None = None,
        keep_finished: int = 1000,
        default_approval: ApprovalMode = "prompt",
    ) -> None:
        self.registry = registry
        self.default_approval = default_approval
        self.config = config or RuntimeConfig()
        self.models = models or ModelResolver()
        self._live: dict[str, RunHandle] = {}
        self._finished: OrderedDict[str, RunHandle] = OrderedDict()
        self._keep_finished = keep_finished

    def start(
        self,
        name: str,
        input: Any = None,
        *,
        model: str | None = None,
        attachments: list[Attachment] | None = None,
        approval: ApprovalMode | None = None,
    ) -> RunHandle:
        """Start a run; raises the runtime's typed errors (unknown worker, bad input, ...) first."""
        handle = RunHandle()
        handle.run = run = WorkerRun(
            self.registry,
            name,
            input,
            on_event=handle.on_event,
            attachments=attachments,
            model=model,
            approval=approval or self.default_approval,
            config=self.config,
            models=self.models,
        )
        run.prepare()
        self._live[run.run_id] = handle
        handle.task = asyncio.create_task(self._drive(handle), name=f"run-{run.run_id}")
        return handle

    async def _drive(self, handle: RunHandle) -> RunResult:
        try:
            result = await handle.run.execute()
        finally:
            handle.log.close()
            self._live.pop(handle.run_id, None)
            self._finished[handle.run_id] = handle
            while len(self._finished) > self._keep_finished:
                self._finished.popitem(last=False)
        handle.result = result
        log.info("run %s %s %s", handle.run_id, handle.run.name, result.status)
        return result

    def get(self, run_id: str) -> RunHandle:
        handle = self._live.get(run_id) or self._finished.get(run_id)
        if handle is None:
            raise RunNotFound(f"No run with id {run_id!r}")
        return handle

    def cancel(self, run_id: str, reason: str = "cancelled") -> None:
        handle = self.get(run_id)
        if not handle.run.cancel(reason):
            raise RunAlreadyEnded(f"Run {run_id!r} has already ended")

    def approvals(self, run_id: str) -> list[dict[str, Any]]:
        return [p.public() for p in self.get(run_id).run.state.gate.pending]

    def decide(
        self,
        run_id: str,
        approval_id: str,
        decision: DecisionKind,
        *,
        reason: str | None = None,
        args: dict[str, Any] | None = None,
    ) -> None:
        """Deliver a person's decision to the run's gate (the only place that decides)."""
        self.get(run_id).run.state.gate.decide(approval_id, decision, reason=reason, args=args)

    @property
    def live_count(self) -> int:
        return len(self._live)

    async def shutdown(self, reason: str = "the server is shutting down") -> None:
        """Cancel every live run and wait for each to write its terminal event."""
        handles = list(self._live.values())
        for handle in handles:
            handle.run.cancel(reason)
        tasks = [h.task for h in handles if h.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
