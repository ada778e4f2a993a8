"""Runs in flight when the service stops (SIGTERM) end `interrupted` (http-api.md, "Run records":
"the process stopped while it ran; its stream then ends with `run.failed` whose error type is
`interrupted`"), and say so after a restart on the same data folder.

This module runs its own service twice (stop with runs in flight, then restart)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from e2e_support import (
    SSE,
    TERMINAL,
    WORKERS,
    Service,
    afake_log,
    eventually,
    run_service,
    sse_items,
)

from tests.fakes.fake_openai import FakeOpenAIServer


@dataclass
class Outcome:
    streamed_id: str = ""
    background_id: str = ""
    streamed_events: list[dict[str, Any]] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    replays: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


async def _stop_with_runs_in_flight(svc: Service, fake: FakeOpenAIServer, out: Outcome) -> None:
    marker = uuid.uuid4().hex[:8]
    hang = "openai-chat:fake-hang"
    with anyio.fail_after(25):
        async with httpx.AsyncClient(base_url=svc.url, timeout=20) as client:
            bg = await client.post(
                "/workers/plain/run",
                json={"input": f"background {marker}", "model": hang, "background": True},
            )
            assert bg.status_code == 202, bg.text
            out.background_id = bg.json()["run_id"]

            async def asked() -> bool:
                log = await afake_log(fake.url)
                return any(f"background {marker}" in str(r) for r in log["requests"])

            await eventually(asked, within=10, what="the background run to reach its model")
            body = {"input": f"streamed {marker}", "model": hang}
            async with client.stream("POST", "/workers/plain/run", json=body, headers=SSE) as resp:
                out.streamed_id = resp.headers["x-run-id"]
                try:
                    async for item in sse_items(resp):
                        if isinstance(item, str):
                            continue
                        out.streamed_events.append(item.data)
                        if item.data["type"] == "text.delta":
                            svc.proc.terminate()  # SIGTERM while both runs wait on their model
                except httpx.TransportError:
                    pass  # the server may cut the stream; what arrived before is kept
        await anyio.to_thread.run_sync(svc.proc.wait, 20)


@pytest.fixture(scope="module")
def shutdown(
    fake_openai: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcome]:
    data: Path = tmp_path_factory.mktemp("llm-do-shutdown")
    out = Outcome()
    with run_service(workers=WORKERS, data_dir=data, fake_base_url=fake_openai.base_url) as svc:
        asyncio.run(_stop_with_runs_in_flight(svc, fake_openai, out))
    with (
        run_service(workers=WORKERS, data_dir=data, fake_base_url=fake_openai.base_url) as svc,
        httpx.Client(base_url=svc.url, timeout=10) as client,
    ):
        for run_id in (out.streamed_id, out.background_id):
            out.records[run_id] = client.get(f"/runs/{run_id}").json()
            replay = client.get(f"/runs/{run_id}/events", headers=SSE)
            out.replays[run_id] = [
                _data_of(line) for line in replay.text.splitlines() if line.startswith("data:")
            ]
    yield out


def _data_of(line: str) -> dict[str, Any]:
    return json.loads(line.removeprefix("data:").strip())


def _check_interrupted(out: Outcome, run_id: str) -> None:
    record = out.records[run_id]
    assert record["status"] == "interrupted", record
    assert record["error"]["type"] == "interrupted", record
    replay = out.replays[run_id]
    assert [d["seq"] for d in replay] == list(range(1, len(replay) + 1))
    assert sum(d["type"] in TERMINAL for d in replay) == 1
    assert replay[-1]["type"] == "run.failed"
    assert replay[-1]["error"]["type"] == "interrupted"


def test_background_run_in_flight_at_shutdown_is_interrupted(shutdown: Outcome) -> None:
    _check_interrupted(shutdown, shutdown.background_id)


def test_streamed_run_in_flight_at_shutdown_is_interrupted(shutdown: Outcome) -> None:
    _check_interrupted(shutdown, shutdown.streamed_id)
    assert shutdown.streamed_events[-1]["type"] == "run.failed"
    assert shutdown.streamed_events[-1]["error"]["type"] == "interrupted"


def test_a_run_that_finishes_within_the_grace_period_succeeds(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """SIGTERM stops new runs at once (503) but lets a short run in flight finish."""
    marker = uuid.uuid4().hex[:8]
    words = " ".join(f"{marker}{i}" for i in range(16))  # ~0.8 s on fake-slow
    with run_service(
        workers=WORKERS,
        data_dir=tmp_path,
        fake_base_url=fake_openai.base_url,
        LLM_DO_SHUTDOWN_GRACE_S="10",
    ) as svc:
        with httpx.Client(base_url=svc.url, timeout=10) as client:
            body = {"input": words, "model": "openai-chat:fake-slow", "background": True}
            run_id = client.post("/workers/plain/run", json=body).json()["run_id"]
            svc.proc.terminate()
            try:  # a new run is refused: 503, or the socket no longer accepts at all
                refused = client.post("/workers/plain/run", json={"input": "late"})
            except httpx.TransportError:
                pass
            else:
                assert refused.status_code == 503, refused.text
        svc.proc.wait(20)
    with (
        run_service(workers=WORKERS, data_dir=tmp_path, fake_base_url=fake_openai.base_url) as svc,
        httpx.Client(base_url=svc.url, timeout=10) as client,
    ):
        record = client.get(f"/runs/{run_id}").json()
    assert record["status"] == "succeeded", record
    assert record["output"] == words
