"""Ending runs over a real socket: POST /runs/{id}/cancel ends a run and both of its nested
children (their model streams closed), and a client that leaves ends its run or not as
`on_disconnect` says, in the blocking (JSON) mode too.

The streaming `on_disconnect: cancel` default (stream closed upstream, record `cancelled`) is
covered by test_disconnect.py; this file adds the `continue` case and the blocking mode."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import httpx
import pytest
from e2e_support import SSE, TERMINAL, Service, afake_log, eventually, sse_items, stream_run

from tests.fakes.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.anyio


async def closed_early(fake: FakeOpenAIServer, *texts: str) -> list[dict[str, Any]]:
    log = await afake_log(fake.url)
    return [r for r in log["closed_early"] if r["text"] in texts]


async def record_when_ended(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        record = (await client.get(f"/runs/{run_id}")).json()
        return record if record["status"] not in ("running", "waiting_approval") else None

    return await eventually(ended, within=15, what=f"run {run_id} to end")


async def test_cancel_ends_the_run_and_both_nested_children(
    service: Service, fake_openai: FakeOpenAIServer
) -> None:
    """`delegator` (fake model) calls `hanger` twice in parallel; each child's model (fake-hang)
    sends one chunk and then waits. The cancel ends all three and closes both model streams."""
    marker = uuid.uuid4().hex[:8]
    texts = (f"child-a-{marker}", f"child-b-{marker}")
    calls = [{"tool": "worker_call", "args": {"worker": "hanger", "input_data": t}} for t in texts]
    events: list[dict[str, Any]] = []
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            resp = await client.post(
                "/workers/delegator/run", json={"input": {"calls": calls}, "background": True}
            )
            assert resp.status_code == 202, resp.text
            run_id = resp.json()["run_id"]
            url = f"/runs/{run_id}/events"
            async with client.stream("GET", url, headers=SSE) as stream:
                async for item in sse_items(stream):
                    if isinstance(item, str):
                        continue
                    events.append(item.data)
                    talking = {e["delta"] for e in events if e["type"] == "text.delta"}
                    if item.data["type"] == "text.delta" and talking == set(texts):
                        # Both children are mid-stream: cancel from another connection.
                        cancel = await client.post(f"/runs/{run_id}/cancel")
                        assert cancel.status_code == 200, cancel.text
                        assert cancel.json() == {"run_id": run_id, "status": "cancelled"}
            record = (await client.get(f"/runs/{run_id}")).json()
            again = await client.post(f"/runs/{run_id}/cancel")
            closed = await eventually(
                lambda: _both(fake_openai, texts), within=10, what="both child streams to close"
            )

    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["type"] in TERMINAL for e in events) == 1
    assert events[-1]["type"] == "run.cancelled" and events[-1]["reason"]
    finished = {e["call_id"]: e for e in events if e["type"] == "worker.finished"}
    children = [e for e in events if e["type"] == "worker.started" and e["worker"] == "hanger"]
    assert len(children) == 2 and len({c["call_id"] for c in children}) == 2
    for child in children:
        assert child["path"] == ["delegator", "hanger"]
        assert finished[child["call_id"]]["status"] == "cancelled"
    assert finished[run_id]["status"] == "cancelled"  # the root worker's node is closed too
    assert record["status"] == "cancelled"
    assert again.status_code == 409 and again.json()["error"]["type"] == "run_already_ended"
    assert sorted(r["text"] for r in closed) == sorted(texts)
    assert all(r["model"] == "fake-hang" and r["chunks_sent"] == 1 for r in closed)


async def _both(fake: FakeOpenAIServer, texts: tuple[str, ...]) -> list[dict[str, Any]] | None:
    found = await closed_early(fake, *texts)
    return found if {r["text"] for r in found} == set(texts) else None


async def test_streamed_run_with_on_disconnect_continue_completes_after_its_client_left(
    service: Service, fake_openai: FakeOpenAIServer
) -> None:
    text = f"continue-{uuid.uuid4().hex[:8]} " + " ".join(f"w{i}" for i in range(30))
    body = {"input": text, "model": "openai-chat:fake-slow", "on_disconnect": "continue"}
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            run = await stream_run(
                client, "plain", body, until=lambda e: e.data["type"] == "text.delta"
            )
            assert not [e for e in run.events if e.data["type"] in TERMINAL]
            record = await record_when_ended(client, run.run_id)
            replay = await _replay(client, run.run_id)
    assert record["status"] == "succeeded", record
    assert record["output"] == text
    assert replay[-1]["type"] == "run.completed" and replay[-1]["output"] == text
    assert [d["seq"] for d in replay] == list(range(1, len(replay) + 1))
    assert [e.data for e in run.events] == replay[: len(run.events)]
    assert await closed_early(fake_openai, text) == []  # its model stream ran to the end


@pytest.mark.parametrize("on_disconnect", ["cancel", "continue"])
async def test_blocking_client_that_leaves(
    service: Service, fake_openai: FakeOpenAIServer, on_disconnect: str
) -> None:
    """The JSON (non-SSE) mode: the headers (X-Run-Id) come at once, the body when the run
    ends. A client that leaves before that cancels the run (default) or lets it finish."""
    marker = f"blocking-{on_disconnect}-{uuid.uuid4().hex[:8]}"
    if on_disconnect == "cancel":
        text, model = marker, "openai-chat:fake-hang"
    else:
        text, model = marker + "".join(f" w{i}" for i in range(20)), "openai-chat:fake-slow"
    body = {"input": text, "model": model, "on_disconnect": on_disconnect}
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            async with client.stream("POST", "/workers/plain/run", json=body) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("application/json")
                run_id = resp.headers["x-run-id"]
                assert resp.headers["content-location"] == f"/runs/{run_id}"

                async def asked() -> bool:
                    log = await afake_log(fake_openai.url)
                    return any(text in str(r) for r in log["requests"])

                await eventually(asked, within=10, what="the run to reach its model")
            # Leaving the block closed the connection before the result was sent.
            record = await record_when_ended(client, run_id)
            if on_disconnect == "cancel":
                [closed] = await eventually(
                    lambda: closed_early(fake_openai, text), within=10, what="the stream to close"
                )
                assert closed["model"] == "fake-hang"
            replay = await _replay(client, run_id)
    if on_disconnect == "cancel":
        assert record["status"] == "cancelled", record
        assert replay[-1]["type"] == "run.cancelled"
    else:
        assert record["status"] == "succeeded", record
        assert record["output"] == text
        assert replay[-1]["type"] == "run.completed"
        assert await closed_early(fake_openai, text) == []


async def _replay(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    out = []
    async with client.stream("GET", f"/runs/{run_id}/events", headers=SSE) as resp:
        assert resp.status_code == 200
        async for item in sse_items(resp):
            if not isinstance(item, str):
                out.append(item.data)
    return out
