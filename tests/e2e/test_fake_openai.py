"""The fake OpenAI server itself, driven by PydanticAI's real OpenAI chat client (in-process),
so the e2e tests can trust what it answers and what it logs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import anyio
import httpx2
import pytest
from e2e_support import DECK, afake_log, eventually
from pydantic_ai import Agent, BinaryContent, RunContext
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import AgentStreamEvent, PartStartEvent, TextPart
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.fakes.fake_openai import FakeOpenAIServer, words

pytestmark = pytest.mark.anyio


def _agent(fake: FakeOpenAIServer, http: httpx2.AsyncClient, model: str = "fake") -> Agent:
    provider = OpenAIProvider(base_url=fake.base_url, api_key="test-key", http_client=http)
    agent = Agent(OpenAIChatModel(model, provider=provider))

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    return agent


async def _drain(ctx: RunContext[Any], stream: AsyncIterable[AgentStreamEvent]) -> None:
    async for _ in stream:
        pass


def _calls(*pairs: tuple[int, int]) -> str:
    return json.dumps({"calls": [{"tool": "add", "args": {"a": a, "b": b}} for a, b in pairs]})


def test_words_concatenate_back() -> None:
    for text in ["", "one", "  lead and trail  ", "a\nb\tc", "x [files: f.pdf (3 bytes)]"]:
        assert "".join(words(text)) == text


async def test_streamed_text_echo_with_usage(fake_openai: FakeOpenAIServer) -> None:
    with anyio.fail_after(10):
        async with httpx2.AsyncClient() as http:
            result = await _agent(fake_openai, http).run(
                "streamed echo  check", event_stream_handler=_drain
            )
    assert result.output == "streamed echo  check"
    usage = result.usage
    assert (usage.requests, usage.output_tokens) == (1, 3)
    assert usage.input_tokens > 0
    body = next(r for r in reversed(fake_openai.log.requests) if r.get("stream"))
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "json"])
async def test_parallel_tool_calls_then_tool_results(
    fake_openai: FakeOpenAIServer, streamed: bool
) -> None:
    handler = _drain if streamed else None
    with anyio.fail_after(10):
        async with httpx2.AsyncClient() as http:
            result = await _agent(fake_openai, http).run(
                _calls((1, 2), (30, 4)), event_stream_handler=handler
            )
    assert result.output == "Tool results: 3 | 34"
    assert (result.usage.requests, result.usage.tool_calls) == (2, 2)
    last = fake_openai.log.requests[-1]
    assert bool(last.get("stream")) is streamed
    assert [m["tool_call_id"] for m in last["messages"] if m["role"] == "tool"] == [
        "call_0",
        "call_1",
    ]


async def test_calls_for_tools_not_offered_are_echoed(fake_openai: FakeOpenAIServer) -> None:
    text = json.dumps({"calls": [{"tool": "nope", "args": {}}]})
    with anyio.fail_after(10):
        async with httpx2.AsyncClient() as http:
            result = await _agent(fake_openai, http).run(text, event_stream_handler=_drain)
    assert result.output == text


async def test_file_parts_are_reported(fake_openai: FakeOpenAIServer) -> None:
    data = DECK.read_bytes()
    prompt = ["about this", BinaryContent(data, media_type="application/pdf", identifier="d.pdf")]
    with anyio.fail_after(10):
        async with httpx2.AsyncClient() as http:
            result = await _agent(fake_openai, http).run(prompt, event_stream_handler=_drain)
    # pydantic-ai names every document `filename.<ext>` on the chat-completions wire
    assert result.output == f"about this [files: filename.pdf ({len(data)} bytes)]"


async def test_unknown_model_is_a_404(fake_openai: FakeOpenAIServer) -> None:
    with anyio.fail_after(10):
        async with httpx2.AsyncClient() as http:
            with pytest.raises(ModelHTTPError) as info:
                await _agent(fake_openai, http, "gpt-nope").run("hi")
    assert info.value.status_code == 404


async def test_hang_then_cancel_is_logged_as_closed_early(fake_openai: FakeOpenAIServer) -> None:
    first_text = asyncio.Event()

    async def watch(ctx: RunContext[Any], stream: AsyncIterable[AgentStreamEvent]) -> None:
        async for ev in stream:
            if isinstance(ev, PartStartEvent) and isinstance(ev.part, TextPart):
                first_text.set()

    marker = "hang-in-process marker"
    with anyio.fail_after(10):
        async with httpx2.AsyncClient() as http:
            agent = _agent(fake_openai, http, "fake-hang")
            task = asyncio.create_task(agent.run(marker, event_stream_handler=watch))
            await first_text.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        async def closed() -> list[dict[str, Any]]:
            log = await afake_log(fake_openai.url)
            return [r for r in log["closed_early"] if r["text"] == marker]

        [record] = await eventually(closed, within=5, what="the fake to see the disconnect")
    assert record == {
        "model": "fake-hang",
        "closed_early": True,
        "text": marker,
        "chunks_sent": 1,
    }


async def test_non_streamed_hang_ends_with_its_client(fake_openai: FakeOpenAIServer) -> None:
    marker = "non-streamed hang marker"

    def asked() -> bool:
        return any(marker in json.dumps(r) for r in fake_openai.log.requests)

    async def closed() -> list[dict[str, Any]]:
        return [r for r in fake_openai.log.closed_early if r["text"] == marker]

    with anyio.fail_after(10):
        async with httpx2.AsyncClient() as http:
            task = asyncio.create_task(_agent(fake_openai, http, "fake-hang").run(marker))
            await eventually(_async(asked), within=5, what="the request to reach the fake")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        [record] = await eventually(closed, within=5, what="the fake to see the disconnect")
    assert (record["model"], record["chunks_sent"]) == ("fake-hang", 0)


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped
