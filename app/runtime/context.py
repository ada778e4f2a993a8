"""The state one run tree shares, and the context of one worker invocation (the tools' `deps`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic_ai.messages import ModelResponse, ToolReturnPart
from pydantic_ai.usage import RunUsage

from .approvals import ApprovalGate
from .events import EventSink, Usage
from .models import ModelResolver
from .registry import Worker, WorkerRegistry


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """Server-wide runtime settings (built once from Settings, or directly by library users)."""

    default_model: str = "echo"
    max_depth: int = 5
    approval_timeout_s: float = 600
    stall_timeout_s: float = 120  # a provider request silent this long fails (provider_timeout)


@dataclass(slots=True)
class RunState:
    run_id: str
    sink: EventSink
    registry: WorkerRegistry
    models: ModelResolver
    config: RuntimeConfig
    gate: ApprovalGate
    request_model: str | None = None
    stream_tokens: bool = True  # False: whole model responses (cheaper; for blocking runs)
    created: set[tuple[str, str]] = field(default_factory=set)  # (creator, created) this run


@dataclass(slots=True)
class Invocation:
    """One running worker: the root, or a child started by worker_call."""

    state: RunState
    worker: Worker
    worker_name: str
    call_id: str
    path: tuple[str, ...]
    depth: int
    model_name: str
    parent_call_id: str | None = None
    tool_call_id: str | None = None


def usage_dict(usage: RunUsage) -> Usage:
    return {
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "tool_calls": usage.tool_calls,
    }


def own_usage(messages: list) -> Usage:
    """Usage of one worker alone, from its own messages (the RunUsage object is tree-wide)."""
    out = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "tool_calls": 0}
    for m in messages:
        if isinstance(m, ModelResponse):
            out["requests"] += 1
            out["input_tokens"] += m.usage.input_tokens
            out["output_tokens"] += m.usage.output_tokens
        else:
            out["tool_calls"] += sum(isinstance(p, ToolReturnPart) for p in m.parts)
    return out
