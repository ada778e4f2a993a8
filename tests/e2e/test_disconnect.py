"""A streaming client that goes away cancels its run (on_disconnect defaults to `cancel`), and
the run's model request in flight is closed: the fake model server sees its stream end early.
The same for POST /runs/{id}/cancel."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import httpx
import pytest
from e2e_support import SSE, TERMINAL, Service, afake_log, eventually, sse_items, stream_run

from tests.fakes.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("model", "words"),
    [("fake-hang", 3), ("fake-slow", 400)],  # fake-slow: 400 words at 50 ms = 20 s if not closed
)
async def test_client_disconnect_cancels_the_model_request(
    service: Service, fake_openai: FakeOpenAIServer, model: str, words: int
) -> None:
    marker = f"disconnect-{uuid.uuid4().hex[:8]}"
    text = marker + "".join(f" w{i}" for i in range(words))
    body = {"input": text, "model": f"openai-chat:{model}"}
    with anyio.fail_after(15):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            run = await stream_run(
                client, "plain", body, until=lambda e: e.data["type"] == "text.delta"
            )
            # Leaving stream_run closed the connection after the first text.delta.
            assert run.status_code == 200
            assert run.events[-1].data["delta"] == marker + " "
            assert not [e for e in run.events if e.data["type"] in TERMINAL]

            async def closed() -> list[dict[str, Any]]:
                log = await afake_log(fake_openai.url)
                return [r for r in log["closed_early"] if r["text"] == text]

            [record] = await eventually(
                closed, within=10, what=f"the fake to see the {model} stream closed"
            )
            assert record["model"] == model
            assert record["chunks_sent"] < words

            # The service keeps serving.
            after = await stream_run(
                client, "plain", {"input": "still alive", "model": "openai-chat:fake"}
            )
            assert after.terminal["output"] == "still alive"

    log = await afake_log(fake_openai.url)
    assert sum(1 for r in log["requests"] if r.get("model") == model and text in str(r)) == 1


async def test_disconnect_closes_a_nested_workers_model_request(
    service: Service, fake_openai: FakeOpenAIServer
) -> None:
    """The client leaves while a child worker (two levels down the same loop) is streaming."""
    marker = f"nested-disconnect-{uuid.uuid4().hex[:8]}"
    call = {"tool": "worker_call", "args": {"worker": "hanger", "input_data": marker}}
    with anyio.fail_after(15):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            run = await stream_run(
                client,
                "delegator",
                {"input": {"calls": [call]}},
                until=lambda e: e.data["type"] == "text.delta",
            )
        last = run.events[-1].data
        assert (last["worker"], last["path"], last["delta"]) == (
            "hanger",
            ["delegator", "hanger"],
            marker,
        )

        async def closed() -> list[dict[str, Any]]:
            log = await afake_log(fake_openai.url)
            return [r for r in log["closed_early"] if r["text"] == marker]

        [record] = await eventually(closed, within=10, what="the child's model stream to close")
    assert record["model"] == "fake-hang"


async def test_disconnected_run_is_recorded_as_cancelled(service: Service) -> None:
    body = {"input": f"record {uuid.uuid4().hex[:8]}", "model": "openai-chat:fake-hang"}
    with anyio.fail_after(15):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            run = await stream_run(
                client, "plain", body, until=lambda e: e.data["type"] == "text.delta"
            )

            async def ended() -> dict[str, Any] | None:
                resp = await client.get(f"/runs/{run.run_id}")
                record = resp.json() if resp.status_code == 200 else {}
                return record if record.get("status") not in (None, "running") else None

            record = await eventually(ended, within=10, what="the run to end")
            replay = await stream_run_events(client, run.run_id)
    assert record["status"] == "cancelled", record
    assert record["worker"] == "plain"
    # The stored events end with exactly one terminal event: run.cancelled.
    assert replay[-1]["type"] == "run.cancelled", replay[-1]
    assert "disconnect" in replay[-1]["reason"]
    assert [d["seq"] for d in replay] == list(range(1, len(replay) + 1))


async def test_cancel_endpoint_closes_the_model_request(
    service: Service, fake_openai: FakeOpenAIServer
) -> None:
    marker = f"cancel-{uuid.uuid4().hex[:8]}"
    body = {"input": marker, "model": "openai-chat:fake-hang"}
    with anyio.fail_after(15):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            async with client.stream("POST", "/workers/plain/run", json=body, headers=SSE) as resp:
                run_id = resp.headers["x-run-id"]
                events = []
                async for item in sse_items(resp):
                    if isinstance(item, str):
                        continue
                    events.append(item.data)
                    if item.data["type"] == "text.delta":
                        cancel = await client.post(f"/runs/{run_id}/cancel")
                        assert cancel.status_code == 200, cancel.text
                        assert cancel.json()["status"] == "cancelled"
            again = await client.post(f"/runs/{run_id}/cancel")

        async def closed() -> list[dict[str, Any]]:
            log = await afake_log(fake_openai.url)
            return [r for r in log["closed_early"] if r["text"] == marker]

        await eventually(closed, within=10, what="the model stream to close")
    # The stream itself ended with the terminal event (the client stayed connected).
    assert events[-1]["type"] == "run.cancelled"
    assert sum(e["type"] in TERMINAL for e in events) == 1
    assert again.status_code == 409
    assert again.json()["error"]["type"] == "run_already_ended"


async def stream_run_events(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    out = []
    async with client.stream("GET", f"/runs/{run_id}/events", headers=SSE) as resp:
        assert resp.status_code == 200
        async for item in sse_items(resp):
            if not isinstance(item, str):
                out.append(item.data)
    return out
