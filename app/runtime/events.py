"""The event vocabulary of a run, one small class per kind.

Every event of a run tree funnels through one `EventSink`, which stamps `seq`
(1, 2, 3, ... with no gaps) just before handing the event on. `type` is the wire
name from http-api.md; the run manager encodes each event exactly once. Events
are plain slotted dataclasses because they are built on the per-token hot path:
no validation, no copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Usage = dict[str, int]
"""`requests`, `input_tokens`, `output_tokens`, `tool_calls` (summed over the tree at the root)."""


@dataclass(slots=True, kw_only=True)
class _Base:
    run_id: str
    worker: str
    path: tuple[str, ...]
    call_id: str
    seq: int = 0


@dataclass(slots=True, kw_only=True)
class RunStarted(_Base):
    model: str
    input: Any
    type: Literal["run.started"] = "run.started"


@dataclass(slots=True, kw_only=True)
class WorkerStarted(_Base):
    model: str
    parent_call_id: str | None = None
    tool_call_id: str | None = None
    type: Literal["worker.started"] = "worker.started"


@dataclass(slots=True, kw_only=True)
class TextDelta(_Base):
    delta: str
    type: Literal["text.delta"] = "text.delta"


@dataclass(slots=True, kw_only=True)
class ThinkingDelta(_Base):
    delta: str
    type: Literal["thinking.delta"] = "thinking.delta"


@dataclass(slots=True, kw_only=True)
class ToolCall(_Base):
    tool_call_id: str
    tool: str
    args: Any
    type: Literal["tool.call"] = "tool.call"


ToolOutcome = Literal["success", "failed", "denied", "retried", "interrupted"]


@dataclass(slots=True, kw_only=True)
class ToolResult(_Base):
    tool_call_id: str
    tool: str
    outcome: ToolOutcome
    content: Any
    type: Literal["tool.result"] = "tool.result"


@dataclass(slots=True, kw_only=True)
class ApprovalRequested(_Base):
    approval_id: str
    tool_call_id: str
    tool: str
    args: Any
    description: str
    details: dict[str, Any] | None = None
    created_at: float
    expires_at: float
    type: Literal["approval.requested"] = "approval.requested"


@dataclass(slots=True, kw_only=True)
class ApprovalResolved(_Base):
    approval_id: str
    tool_call_id: str
    decision: str
    reason: str | None = None
    type: Literal["approval.resolved"] = "approval.resolved"


WorkerStatus = Literal["succeeded", "failed", "cancelled"]


@dataclass(slots=True, kw_only=True)
class WorkerFinished(_Base):
    status: WorkerStatus
    output: Any = None
    usage: Usage | None = None
    error: dict[str, str] | None = None
    type: Literal["worker.finished"] = "worker.finished"


@dataclass(slots=True, kw_only=True)
class RunCompleted(_Base):
    output: Any
    usage: Usage
    type: Literal["run.completed"] = "run.completed"


@dataclass(slots=True, kw_only=True)
class RunFailed(_Base):
    error: dict[str, str]
    usage: Usage | None = None
    type: Literal["run.failed"] = "run.failed"


@dataclass(slots=True, kw_only=True)
class RunCancelled(_Base):
    reason: str
    usage: Usage | None = None
    type: Literal["run.cancelled"] = "run.cancelled"


Event = (
    RunStarted
    | WorkerStarted
    | TextDelta
    | ThinkingDelta
    | ToolCall
    | ToolResult
    | ApprovalRequested
    | ApprovalResolved
    | WorkerFinished
    | RunCompleted
    | RunFailed
    | RunCancelled
)

TerminalEvent = RunCompleted | RunFailed | RunCancelled
TERMINAL_TYPES = frozenset({"run.completed", "run.failed", "run.cancelled"})
EVENT_TYPES = {
    cls.__dataclass_fields__["type"].default: cls
    for cls in (
        RunStarted,
        WorkerStarted,
        TextDelta,
        ThinkingDelta,
        ToolCall,
        ToolResult,
        ApprovalRequested,
        ApprovalResolved,
        WorkerFinished,
        RunCompleted,
        RunFailed,
        RunCancelled,
    )
}


class EventSink:
    """Numbers the events of one run tree and hands each to `deliver`, synchronously.

    One sink per top-level run, shared by every nested worker, so `seq` is the
    tree-wide order the client sees. There is one event loop, so the increment
    and the delivery cannot interleave with another emitter.
    """

    __slots__ = ("_deliver", "run_id", "seq")

    def __init__(self, run_id: str, deliver: Callable[[Event], None]) -> None:
        self.run_id = run_id
        self.seq = 0
        self._deliver = deliver

    def emit(self, event: Event) -> None:
        self.seq += 1
        event.seq = self.seq
        self._deliver(event)
