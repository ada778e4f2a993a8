"""The wire format of a streamed run (http-api.md, "The event stream"), read off the socket."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import httpx
import pytest
from e2e_support import SSE, Service, check_stream, sse_items, stream_run

pytestmark = pytest.mark.anyio


def _bodies(marker: str) -> dict[str, tuple[str, dict[str, Any]]]:
    nested = {"worker": "summarizer", "input_data": f"nested {marker} text"}
    return {
        "plain": ("plain", {"input": f"plain {marker} one two three", "model": "openai-chat:fake"}),
        "nested": ("orchestrator", {"input": {"calls": [{"tool": "worker_call", "args": nested}]}}),
    }


@pytest.mark.parametrize("case", ["plain", "nested"])
async def test_sse_stream_format(service: Service, case: str) -> None:
    marker = uuid.uuid4().hex[:8]
    worker, body = _bodies(marker)[case]
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            run = await stream_run(client, worker, body)
    check_stream(run)
    assert run.terminal["type"] == "run.completed", run.terminal
    assert marker in run.terminal["output"]
    assert set(run.terminal["usage"]) >= {"requests", "input_tokens", "output_tokens", "tool_calls"}
    started = run.data[0]
    assert started["input"] == body["input"]
    assert started["model"] == body.get("model", "openai-chat:fake")
    if case == "nested":
        depths = {len(d["path"]) - 1 for d in run.data}
        assert depths == {0, 1}
        assert run.terminal["usage"]["tool_calls"] == 1


async def test_sse_frames_are_plain_lines(service: Service) -> None:
    """Each frame is exactly `id:`, `event:`, `data:` lines and a blank line (no multi-line data,
    nothing a strict EventSource parser would trip on)."""
    body = {"input": "raw frames check", "model": "openai-chat:fake"}
    chunks: list[bytes] = []
    with anyio.fail_after(20):
        async with (
            httpx.AsyncClient(base_url=service.url, timeout=10) as client,
            client.stream("POST", "/workers/plain/run", json=body, headers=SSE) as resp,
        ):
            async for chunk in resp.aiter_bytes():
                chunks.append(chunk)
    raw = b"".join(chunks).decode()
    assert raw.endswith("\n\n") and "\r" not in raw
    frames = raw.removesuffix("\n\n").split("\n\n")
    assert len(frames) >= 4
    for frame in frames:
        if frame.startswith(":"):
            continue
        parts = frame.split("\n")
        assert [p.split(": ", 1)[0] for p in parts] == ["id", "event", "data"], frame


async def test_failed_run_streams_one_run_failed(service: Service) -> None:
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            run = await stream_run(client, "plain", {"input": "x", "model": "nonsense"})
    check_stream(run)
    assert run.terminal["type"] == "run.failed"
    assert run.terminal["error"]["type"] == "model_error"
    assert "nonsense" in run.terminal["error"]["message"]


async def test_sse_items_parse_comments_and_multiline_data() -> None:
    """The test's own SSE reader, on a hand-written stream (ping comments, CRLF, split data)."""
    raw = (
        b': ping\r\n\r\nid: 1\r\nevent: x\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
        b'id: 2\nevent: y\ndata: {"b": 2}\n\n'
    )

    def app(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(app)) as client:
        resp = await client.get("http://test/")
        items = [i async for i in sse_items(resp)]
    assert items[0] == "ping"
    assert [(e.id, e.event, e.data) for e in items[1:]] == [
        ("1", "x", {"a": 1}),
        ("2", "y", {"b": 2}),
    ]
