"""PydanticAI's agent events -> our events, for one worker invocation.

Two ways to run an agent:
- `forward` is the `event_stream_handler` of a streamed run: every model token passes
  through it (the hot path), so it dispatches on exact types and builds one small
  dataclass per event.
- `run_whole_responses` runs the agent node by node with non-streamed model requests
  (what a plain `agent.run()` does, and markedly cheaper): each response's text is one
  `text.delta`, tool calls and results are streamed from the tool nodes as usual. Used
  for blocking runs, whose client wants only the result.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any

from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import (
    AgentStreamEvent,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelResponse,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ThinkingPart,
    ThinkingPartDelta,
)

from .context import Invocation
from .events import TextDelta, ThinkingDelta, ToolCall, ToolResult

_PLAIN = (str, int, float, bool, type(None), dict, list)


def _args(part: Any) -> Any:
    try:
        return part.args_as_dict()
    except ValueError:
        return part.args


async def forward(ctx: RunContext[Invocation], stream: AsyncIterable[AgentStreamEvent]) -> None:
    """The `event_stream_handler` of a streamed invocation."""
    await forward_events(ctx.deps, stream)


def _text_emitters(inv: Invocation) -> tuple[Callable[[str], None], Callable[[str], None]]:
    """(text, thinking): emit one delta of this invocation's text or reasoning."""
    emit = inv.state.sink.emit
    run_id, worker, path, call_id = inv.state.run_id, inv.worker_name, inv.path, inv.call_id

    def text(delta: str) -> None:
        emit(TextDelta(run_id=run_id, worker=worker, path=path, call_id=call_id, delta=delta))

    def thinking(delta: str) -> None:
        emit(ThinkingDelta(run_id=run_id, worker=worker, path=path, call_id=call_id, delta=delta))

    return text, thinking


def _emit_parts(inv: Invocation, parts: Iterable[Any]) -> None:
    """The text and thinking of a finished model response, one event per part."""
    text, thinking = _text_emitters(inv)
    for part in parts:
        if type(part) is TextPart and part.content:
            text(part.content)
        elif type(part) is ThinkingPart and part.content:
            thinking(part.content)


async def forward_events(inv: Invocation, stream: AsyncIterable[AgentStreamEvent]) -> None:
    emit = inv.state.sink.emit
    text, thinking = _text_emitters(inv)
    run_id, worker, path, call_id = inv.state.run_id, inv.worker_name, inv.path, inv.call_id
    async for ev in stream:
        kind = type(ev)
        if kind is PartDeltaEvent:
            delta = ev.delta
            if type(delta) is TextPartDelta:
                if delta.content_delta:
                    text(delta.content_delta)
            elif type(delta) is ThinkingPartDelta and delta.content_delta:
                thinking(delta.content_delta)
        elif kind is PartStartEvent:
            # The first piece of a response arrives here, not in a delta.
            _emit_parts(inv, (ev.part,))
        elif kind is FunctionToolCallEvent:
            part = ev.part
            emit(
                ToolCall(
                    run_id=run_id,
                    worker=worker,
                    path=path,
                    call_id=call_id,
                    tool_call_id=part.tool_call_id,
                    tool=part.tool_name,
                    args=_args(part),
                )
            )
        elif kind is FunctionToolResultEvent:
            part = ev.part
            content = (
                part.content if isinstance(part.content, _PLAIN) else part.model_response_str()
            )
            emit(
                ToolResult(
                    run_id=run_id,
                    worker=worker,
                    path=path,
                    call_id=call_id,
                    tool_call_id=part.tool_call_id,
                    tool=part.tool_name,
                    outcome=part.outcome,
                    content=content,
                )
            )


def emit_response_texts(inv: Invocation, messages: list[Any]) -> None:
    """How a run without tools and without token streaming shows its answer."""
    for message in messages:
        if isinstance(message, ModelResponse):
            _emit_parts(inv, message.parts)


async def run_whole_responses(
    agent: Agent[Invocation, Any], prompt: Any, inv: Invocation, **kwargs: Any
) -> Any:
    """`agent.run(...)` without token streaming, still emitting the run's events."""
    async with agent.iter(prompt, deps=inv, **kwargs) as run:
        async for node in run:
            if Agent.is_call_tools_node(node):
                _emit_parts(inv, node.model_response.parts)
                async with node.stream(run.ctx) as events:
                    await forward_events(inv, events)
    assert run.result is not None
    return run.result
