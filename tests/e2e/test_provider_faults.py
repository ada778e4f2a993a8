"""Provider faults end as documented, over the real OpenAI client path: a typed run.failed
with a message that helps, or a retried success; the service keeps serving."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from e2e_support import SSE, WORKERS, Service, afake_log, run_service, sse_items

from tests.fakes.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def faulty(
    fake_openai: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    data: Path = tmp_path_factory.mktemp("faults")
    with run_service(
        workers=WORKERS,
        data_dir=data,
        fake_base_url=fake_openai.base_url,
        LLM_DO_STALL_TIMEOUT_S="1",
    ) as svc:
        yield svc


async def streamed(svc: Service, model: str) -> tuple[str, list[dict]]:
    text = f"fault {uuid.uuid4().hex[:8]} one two three"
    events: list[dict] = []
    with anyio.fail_after(30):
        async with (
            httpx.AsyncClient(base_url=svc.url, timeout=30) as client,
            client.stream(
                "POST", "/workers/plain/run", json={"input": text, "model": model}, headers=SSE
            ) as resp,
        ):
            assert resp.status_code == 200
            async for item in sse_items(resp):
                if not isinstance(item, str):
                    events.append(item.data)
    return text, events


@pytest.mark.parametrize(
    ("model", "error_type", "needle"),
    [
        ("openai-chat:fake-429", "provider_rate_limited", "rate-limited"),
        ("openai-chat:fake-hang", "provider_timeout", "LLM_DO_STALL_TIMEOUT_S"),
        ("openai-chat:fake-malformed", None, "fake-malformed"),
        ("openai-chat:fake-drop", None, "fake-drop"),
    ],
)
async def test_a_provider_fault_ends_the_run_with_a_typed_error(
    faulty: Service, fake_openai: FakeOpenAIServer, model: str, error_type: str | None, needle: str
) -> None:
    text, events = await streamed(faulty, model)
    if model.endswith("fake-429"):  # retried (honouring Retry-After: 1) before giving up
        log = await afake_log(fake_openai.url)
        asked = [r for r in log["requests"] if text in json.dumps(r)]
        assert len(asked) >= 2, len(asked)
    end = events[-1]
    assert end["type"] == "run.failed", end
    assert sum(e["type"] in ("run.completed", "run.failed", "run.cancelled") for e in events) == 1
    if error_type is not None:
        assert end["error"]["type"] == error_type
    else:
        assert end["error"]["type"] in ("provider_error", "model_behavior_error"), end
    assert needle in end["error"]["message"]
    assert "Traceback" not in end["error"]["message"]


async def test_a_500_before_any_token_is_retried_and_the_run_succeeds(faulty: Service) -> None:
    text, events = await streamed(faulty, "openai-chat:fake-500-once")
    assert events[-1]["type"] == "run.completed", events[-1]
    assert text.split()[0] in events[-1]["output"]


async def test_the_service_keeps_serving_after_faults(faulty: Service) -> None:
    async with httpx.AsyncClient(base_url=faulty.url, timeout=10) as client:
        r = await client.post("/workers/plain/run", json={"input": "still here", "model": "echo"})
        assert r.json()["status"] == "succeeded"
        assert (await client.get("/healthz")).json()["status"] == "ok"


@pytest.mark.parametrize(
    "model",
    [
        "openai-chat:fake-429",
        "openai-chat:fake-hang",
        "openai-chat:fake-malformed",
        "openai-chat:fake-drop",
        "openai-chat:fake-500-once",
    ],
)
async def test_faults_leave_no_task_behind(
    fake_openai: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    """In-process, so the event loop can be inspected: after a faulty run has ended, the
    tasks that exist are exactly those that existed before it."""
    import asyncio

    from app.runtime import ModelResolver, RuntimeConfig, WorkerRegistry, WorkerRun

    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    before = asyncio.all_tasks()
    events: list = []
    run = WorkerRun(
        WorkerRegistry(WORKERS),
        "plain",
        f"leak {uuid.uuid4().hex[:8]} one two",
        on_event=events.append,
        model=model,
        config=RuntimeConfig(stall_timeout_s=1),
        models=ModelResolver(),
    )
    with anyio.fail_after(30):
        result = await run.execute()
    assert result.status in ("failed", "succeeded")
    assert events[-1].type in ("run.failed", "run.completed")
    leftover = asyncio.all_tasks() - before - {asyncio.current_task()}
    if leftover:  # helpers still unwinding may finish; a leaked task would not
        _, pending = await asyncio.wait(leftover, timeout=5)
        assert not pending, pending
