"""`: ping` keepalive comments on a quiet stream. The interval (15 s by default) is a setting,
`LLM_DO_PING_S`; this module starts its own service with 0.2 s so a ping shows up quickly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import anyio
import httpx
import pytest
from e2e_support import SSE, WORKERS, Service, SseEvent, run_service, sse_items

from tests.fakes.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ping_service(
    fake_openai: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with run_service(
        workers=WORKERS,
        data_dir=tmp_path_factory.mktemp("llm-do-ping"),
        fake_base_url=fake_openai.base_url,
        LLM_DO_PING_S="0.2",
    ) as svc:
        yield svc


async def test_ping_comment_during_a_quiet_run(ping_service: Service) -> None:
    """The model sends one chunk and then nothing: the stream stays open with pings."""
    body = {"input": f"quiet {uuid.uuid4().hex[:8]}", "model": "openai-chat:fake-hang"}
    seen: list[SseEvent | str] = []
    with anyio.fail_after(10):
        async with (
            httpx.AsyncClient(base_url=ping_service.url, timeout=10) as client,
            client.stream("POST", "/workers/plain/run", json=body, headers=SSE) as resp,
        ):
            assert resp.status_code == 200
            async for item in sse_items(resp):
                seen.append(item)
                if item == "ping" and any(
                    isinstance(e, SseEvent) and e.data["type"] == "text.delta" for e in seen
                ):
                    break
    assert seen[-1] == "ping"
    events = [e for e in seen if isinstance(e, SseEvent)]
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]


async def test_pings_do_not_disturb_a_completed_stream(ping_service: Service) -> None:
    """A paced run that outlasts a few ping intervals still parses into a complete stream (pings,
    if any go out between frames, are whole comment lines and never split a frame)."""
    words = " ".join(f"w{i}" for i in range(12))  # 12 chunks at 50 ms: ~0.6 s
    body = {"input": words, "model": "openai-chat:fake-slow"}
    comments: list[str] = []
    events: list[SseEvent] = []
    with anyio.fail_after(15):
        async with (
            httpx.AsyncClient(base_url=ping_service.url, timeout=10) as client,
            client.stream("POST", "/workers/plain/run", json=body, headers=SSE) as resp,
        ):
            async for item in sse_items(resp):
                (comments if isinstance(item, str) else events).append(item)
    assert set(comments) <= {"ping"}
    assert events[-1].data["type"] == "run.completed"
    assert events[-1].data["output"] == words
    deltas = "".join(e.data["delta"] for e in events if e.data["type"] == "text.delta")
    assert deltas == words
