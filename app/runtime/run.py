"""Running workers: `invoke` runs one worker (root or child); `WorkerRun` is one top-level run.

A run's events are numbered by its `EventSink` and delivered synchronously to the
callback given to `WorkerRun`; `run_worker` wraps that as an async iterator for
library use. Exactly one terminal event ends every run.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic_ai.usage import RunUsage, UsageLimits

from . import schemas
from .agents import build_agent
from .approvals import ApprovalGate, ApprovalMode
from .attachments import Attachment, check_policy
from .context import Invocation, RunState, RuntimeConfig, own_usage, usage_dict
from .errors import InternalError, LlmDoError, WorkerTimeout, translate
from .events import (
    Event,
    EventSink,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    Usage,
    WorkerFinished,
    WorkerStarted,
)
from .models import ModelResolver
from .registry import Worker, WorkerRegistry
from .stream import emit_response_texts, forward, run_whole_responses

RunStatus = Literal["succeeded", "failed", "cancelled", "interrupted"]


def new_id() -> str:
    return uuid.uuid4().hex


def validate_input(worker: Worker, value: Any) -> None:
    if worker.spec.input_schema is not None:
        schemas.validate(worker.spec.input_schema, value, worker=worker.name, cache=worker.cache)


def _prompt(value: Any, files: list[Attachment]) -> str | list[Any]:
    text = value if isinstance(value, str) else "" if value is None else json.dumps(value)
    if not files:
        return text
    return [text, *(f.to_content() for f in files)]


def _model_for(state: RunState, worker: Worker, parent: Invocation | None) -> str:
    return (
        worker.spec.model
        or (parent.model_name if parent else None)
        or state.request_model
        or state.config.default_model
    )


async def invoke(
    state: RunState,
    worker: Worker,
    input_data: Any,
    files: list[Attachment],
    *,
    parent: Invocation | None,
    tool_call_id: str | None,
    usage: RunUsage,
    usage_limits: UsageLimits | None,
    call_id: str | None = None,
) -> Any:
    """Run one worker to its output, emitting worker.started ... worker.finished."""
    model_name = _model_for(state, worker, parent)
    inv = Invocation(
        state=state,
        worker=worker,
        worker_name=worker.name,
        call_id=call_id or new_id(),
        path=(*parent.path, worker.name) if parent else (worker.name,),
        depth=parent.depth + 1 if parent else 0,
        model_name=model_name,
        parent_call_id=parent.call_id if parent else None,
        tool_call_id=tool_call_id,
    )
    base = {"run_id": state.run_id, "worker": worker.name, "path": inv.path, "call_id": inv.call_id}
    emit = state.sink.emit
    emit(
        WorkerStarted(
            **base,
            model=f"code:{worker.spec.code}" if worker.code else model_name,
            parent_call_id=inv.parent_call_id,
            tool_call_id=tool_call_id,
        )
    )
    try:
        validate_input(worker, input_data)
        if worker.code is not None:
            output = await _run_code(worker, inv, input_data, files, usage, usage_limits)
            emit(WorkerFinished(**base, status="succeeded", output=output, usage=None))
            return output
        model = state.models.get(model_name)
        agent = build_agent(worker, state.registry)
        prompt = _prompt(input_data, files)
        options = {
            "model_settings": None
            if "timeout" in worker.spec.model_settings
            else {"timeout": state.config.stall_timeout_s},
            "model": model,
            "usage": usage,
            "usage_limits": usage_limits,
            "timeout": worker.spec.timeout_s,
        }
        if state.stream_tokens:
            result = await agent.run(prompt, deps=inv, event_stream_handler=forward, **options)
        elif worker.cache["has_tools"]:
            result = await run_whole_responses(agent, prompt, inv, **options)
        else:  # nothing happens between the model's responses: a plain run is enough
            result = await agent.run(prompt, deps=inv, **options)
            emit_response_texts(inv, result.new_messages())
    except asyncio.CancelledError:
        emit(WorkerFinished(**base, status="cancelled"))
        raise
    except Exception as exc:
        # Unmapped exceptions too: a child's failure is a failed tool call for its caller,
        # never a dead run, and the event tree always closes this worker's node.
        err = translate(exc, model=model_name) or InternalError(f"{type(exc).__name__}: {exc}")
        emit(WorkerFinished(**base, status="failed", error=err.as_dict()))
        if err is exc:
            raise
        raise err from exc
    output = result.output
    emit(
        WorkerFinished(
            **base, status="succeeded", output=output, usage=own_usage(result.new_messages())
        )
    )
    return output


async def _run_code(
    worker: Worker,
    inv: Invocation,
    input_data: Any,
    files: list[Attachment],
    usage: RunUsage,
    usage_limits: UsageLimits | None,
) -> Any:
    """A code worker: `await FUNCTION(ctx, input)`, bounded by its timeout_s."""
    from .worker_context import WorkerContext

    assert worker.code is not None
    ctx = WorkerContext(inv, usage=usage, usage_limits=usage_limits, attachments=files)
    try:
        async with asyncio.timeout(worker.spec.timeout_s):
            output = await worker.code(ctx, input_data)
    except TimeoutError:
        raise WorkerTimeout(
            f"Code worker {worker.name!r} ran past its timeout_s ({worker.spec.timeout_s:g} s)"
        ) from None
    if worker.spec.output_schema is not None:
        schemas.validate_output(
            worker.spec.output_schema, output, worker=worker.name, cache=worker.cache
        )
    elif output is not None and not isinstance(output, str):
        output = json.loads(json.dumps(output, default=str))  # JSON-able, like a model's
    return output


@dataclass(slots=True)
class RunResult:
    run_id: str
    status: RunStatus
    output: Any = None
    usage: Usage | None = None
    error: dict[str, str] | None = None


class WorkerRun:
    """One top-level run of a worker.

    `prepare()` checks what the caller got wrong before the run starts (worker exists
    and is valid, input, attachments), so an HTTP layer can answer 4xx
    instead of starting a stream. `execute()` runs it in the calling task and never
    raises for a run failure: the result (and the terminal event) says how it ended.
    `cancel(reason)` ends it as `cancelled`, whole tree included.
    """

    def __init__(
        self,
        registry: WorkerRegistry,
        name: str,
        input: Any = None,
        *,
        on_event: Callable[[Event], None],
        attachments: list[Attachment] | None = None,
        model: str | None = None,
        approval: ApprovalMode = "prompt",
        run_id: str | None = None,
        config: RuntimeConfig | None = None,
        models: ModelResolver | None = None,
        on_approvals_changed: Callable[[], None] | None = None,
        stream_tokens: bool = True,
    ) -> None:
        self.run_id = run_id or new_id()
        self.name = name
        self.input = input
        self.attachments = attachments or []
        config = config or RuntimeConfig()
        sink = EventSink(self.run_id, on_event)
        self.state = RunState(
            run_id=self.run_id,
            sink=sink,
            registry=registry,
            models=models or ModelResolver(),
            config=config,
            gate=ApprovalGate(
                self.run_id,
                sink,
                mode=approval,
                timeout_s=config.approval_timeout_s,
                on_change=on_approvals_changed,
            ),
            request_model=model,
            stream_tokens=stream_tokens,
        )
        self.worker: Worker | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancel_reason: str | None = None
        self._interrupted = False
        self._failure: LlmDoError | None = None
        self._ended = False

    @property
    def model(self) -> str:
        assert self.worker is not None
        return _model_for(self.state, self.worker, None)

    def prepare(self) -> Worker:
        if self.worker is None:
            worker = self.state.registry.get(self.name)
            validate_input(worker, self.input)
            check_policy(worker.spec.attachment_policy, self.attachments, worker=worker.name)
            self.worker = worker
        return self.worker

    def cancel(self, reason: str = "cancelled", *, interrupted: bool = False) -> bool:
        """Ask the run to end as cancelled (or, when the process is stopping, as
        interrupted); False when it is not running."""
        if self._task is None or self._ended or self._cancel_reason is not None:
            return False
        self._cancel_reason = reason
        self._interrupted = interrupted
        self._task.cancel(reason)
        return True

    def fail(self, error: LlmDoError) -> bool:
        """End the run now as `failed` with `error`, for a cause outside the worker (its
        events cannot be stored, say); False when it is not running."""
        if self.cancel(error.message):
            self._failure = error
            return True
        return False

    async def execute(self) -> RunResult:
        """Run to the end; the terminal event has been emitted when this returns."""
        try:
            return await self._execute()
        finally:
            self._ended = True  # from here on, a cancel would hit whoever awaited us

    async def _execute(self) -> RunResult:
        state = self.state
        emit = state.sink.emit
        self._task = asyncio.current_task()
        root_path = (self.name,)
        base = {
            "run_id": self.run_id,
            "worker": self.name,
            "path": root_path,
            "call_id": self.run_id,
        }
        usage = RunUsage()
        try:
            worker = self.prepare()
        except LlmDoError as exc:
            emit(RunFailed(**base, error=exc.as_dict()))
            return RunResult(self.run_id, "failed", error=exc.as_dict())
        limits = worker.spec.usage_limits
        emit(RunStarted(**base, model=self.model, input=self.input))
        try:
            output = await invoke(
                state,
                worker,
                self.input,
                self.attachments,
                parent=None,
                tool_call_id=None,
                usage=usage,
                usage_limits=UsageLimits(
                    request_limit=limits.request_limit,
                    total_tokens_limit=limits.total_tokens_limit,
                    tool_calls_limit=limits.tool_calls_limit,
                ),
                call_id=self.run_id,
            )
        except asyncio.CancelledError:
            if self._cancel_reason is None:
                raise  # not ours (e.g. the process is stopping): let it propagate
            self._task.uncancel()
            totals = usage_dict(usage)
            if self._failure is not None:
                error = self._failure.as_dict()
                emit(RunFailed(**base, error=error, usage=totals))
                return RunResult(self.run_id, "failed", usage=totals, error=error)
            if self._interrupted:
                error = {"type": "interrupted", "message": self._cancel_reason}
                emit(RunFailed(**base, error=error, usage=totals))
                return RunResult(self.run_id, "interrupted", usage=totals, error=error)
            emit(RunCancelled(**base, reason=self._cancel_reason, usage=totals))
            return RunResult(self.run_id, "cancelled", usage=totals, error=None)
        except LlmDoError as exc:
            totals = usage_dict(usage)
            emit(RunFailed(**base, error=exc.as_dict(), usage=totals))
            return RunResult(self.run_id, "failed", usage=totals, error=exc.as_dict())
        except Exception as exc:  # a bug or an unmapped library error: report it, keep serving
            error = {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
            emit(RunFailed(**base, error=error, usage=usage_dict(usage)))
            return RunResult(self.run_id, "failed", usage=usage_dict(usage), error=error)
        totals = usage_dict(usage)
        emit(RunCompleted(**base, output=output, usage=totals))
        return RunResult(self.run_id, "succeeded", output=output, usage=totals)


async def run_worker(
    registry: WorkerRegistry, name: str, input: Any = None, **kwargs: Any
) -> AsyncIterator[Event]:
    """Run a worker and yield its events, ending with the terminal event. Library entry point."""
    queue: asyncio.Queue[Event] = asyncio.Queue()
    run = WorkerRun(registry, name, input, on_event=queue.put_nowait, **kwargs)
    task = asyncio.create_task(run.execute())
    try:
        while True:
            event = await queue.get()
            yield event
            if event.type in ("run.completed", "run.failed", "run.cancelled"):
                break
        await task
    finally:
        if not task.done():
            run.cancel("consumer went away")
            await asyncio.gather(task, return_exceptions=True)
