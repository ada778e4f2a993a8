"""Shared helpers of the runtime tests: worker files in a temp folder, scripted models, events."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import yaml
from pydantic_ai.messages import (
    BinaryContent,
    ModelMessage,
    ModelRequest,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from app.runtime import Event, ModelResolver, WorkerRegistry, run_worker
from app.runtime.events import TERMINAL_TYPES

Item = str | dict[int, DeltaToolCall]
Turn = list[Item] | Callable[[list[ModelMessage], AgentInfo], list[Item]]


class ScriptedModels(ModelResolver):
    """A ModelResolver that hands out given models for given names (e.g. "script:parent")."""

    def __init__(self, scripted: dict[str, Model] | None = None) -> None:
        super().__init__()
        self.scripted = dict(scripted or {})

    def get(self, name: str) -> Model:
        model = self.scripted.get(name)
        return model if model is not None else super().get(name)


class Script:
    """A FunctionModel stream function playing one turn per model request.

    Each turn is a list of stream items (text chunks, or `{index: DeltaToolCall}`) or a
    function of (messages, info) returning one; the last turn repeats. Every request's
    messages and AgentInfo are recorded in `seen`.
    """

    def __init__(self, *turns: Turn) -> None:
        self.turns = turns
        self.seen: list[tuple[list[ModelMessage], AgentInfo]] = []

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Item]:
        self.seen.append((list(messages), info))
        turn = self.turns[min(len(self.seen), len(self.turns)) - 1]
        for item in turn(messages, info) if callable(turn) else turn:
            yield item

    def model(self, name: str = "script") -> FunctionModel:
        return FunctionModel(stream_function=self, model_name=name)

    @property
    def requests(self) -> int:
        return len(self.seen)


def call(tool: str, args: dict[str, Any], call_id: str, index: int = 0) -> dict[int, DeltaToolCall]:
    """One complete tool call as a stream item."""
    return {index: DeltaToolCall(name=tool, json_args=json.dumps(args), tool_call_id=call_id)}


def calls(*specs: tuple[str, dict[str, Any], str]) -> dict[int, DeltaToolCall]:
    """Several tool calls in one response (the model asks for them in parallel)."""
    return {
        i: DeltaToolCall(name=tool, json_args=json.dumps(args), tool_call_id=cid)
        for i, (tool, args, cid) in enumerate(specs)
    }


def tool_returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    """The tool results in the latest request the model received."""
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    return [p for p in last.parts if isinstance(p, ToolReturnPart)]


def user_prompt(messages: list[ModelMessage]) -> UserPromptPart:
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart):
                    return part
    raise AssertionError("no user prompt in the messages")


def binary_parts(messages: list[ModelMessage]) -> list[BinaryContent]:
    content = user_prompt(messages).content
    if isinstance(content, str):
        return []
    return [c for c in content if isinstance(c, BinaryContent)]


def worker_text(name: str, body: str = "You are a test worker.", **front: Any) -> str:
    head = yaml.safe_dump({"name": name, **front}, sort_keys=False)
    return f"---\n{head}---\n{body}\n"


def write_worker(
    workers: Path,
    name: str,
    body: str = "You are a test worker.",
    *,
    folder: bool = False,
    tools: str | None = None,
    **front: Any,
) -> Path:
    """Write `workers/NAME.worker` (or `workers/NAME/worker.worker` + tools.py) and return it."""
    if folder or tools is not None:
        path = workers / name / "worker.worker"
        if tools is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "tools.py").write_text(tools, encoding="utf-8")
    else:
        path = workers / f"{name}.worker"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(worker_text(name, body, **front), encoding="utf-8")
    return path


def rewrite(path: Path, text: str) -> None:
    """Replace a file's content and move its mtime forward (never the same mtime twice)."""
    old = path.stat().st_mtime_ns
    path.write_text(text, encoding="utf-8")
    new = old + 1_000_000_000
    os.utime(path, ns=(new, new))


async def collect(registry: WorkerRegistry, name: str, input: Any = None, **kw: Any) -> list[Event]:
    """All events of one run, ending with its terminal event (fails after 10 s)."""
    events: list[Event] = []
    with anyio.fail_after(10):
        async for event in run_worker(registry, name, input, **kw):
            events.append(event)
    return events


def of_type(events: Iterable[Event], kind: str) -> list[Any]:
    return [e for e in events if e.type == kind]


def text_of(events: Iterable[Event], path: tuple[str, ...] | None = None) -> str:
    return "".join(
        e.delta for e in events if e.type == "text.delta" and (path is None or e.path == path)
    )


def terminal(events: list[Event]) -> Any:
    ends = [e for e in events if e.type in TERMINAL_TYPES]
    assert len(ends) == 1, [e.type for e in events]
    assert events[-1] is ends[0]
    return ends[0]
