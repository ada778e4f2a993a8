"""Run records over HTTP (http-api.md, "Runs" and "Run records"): GET /runs newest first with
its filters, GET /runs/{id} while a run is live and after it ended, the 202 of a background
run, and the errors of the run routes (404 unknown run, 409 cancel of an ended run)."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import httpx
import pytest
from e2e_support import Service, eventually

pytestmark = pytest.mark.anyio

RECORD_FIELDS = {
    "run_id",
    "worker",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "input",
    "output",
    "error",
    "usage",
    "model",
    "pending_approvals",
}


async def _ended(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        record = (await client.get(f"/runs/{run_id}")).json()
        return record if record["status"] not in ("running", "waiting_approval") else None

    return await eventually(check, within=10, what=f"run {run_id} to end")


async def test_background_run_answers_202_with_its_id(service: Service) -> None:
    text = f"background {uuid.uuid4().hex[:8]}"
    with anyio.fail_after(15):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            resp = await client.post(
                "/workers/plain/run",
                json={"input": text, "model": "openai-chat:fake-slow", "background": True},
            )
            run_id = resp.json()["run_id"]
            live = (await client.get(f"/runs/{run_id}")).json()
            record = await _ended(client, run_id)
    assert resp.status_code == 202
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"run_id": run_id, "status": "running"}
    assert resp.headers["x-run-id"] == run_id
    assert resp.headers["content-location"] == f"/runs/{run_id}"
    assert set(live) >= RECORD_FIELDS
    assert (live["worker"], live["input"], live["model"]) == (
        "plain",
        text,
        "openai-chat:fake-slow",
    )
    assert live["status"] == "running" and live["finished_at"] is None
    assert live["started_at"] is not None and live["started_at"] >= live["created_at"]
    assert record["status"] == "succeeded" and record["output"] == text
    assert record["finished_at"] >= record["started_at"]
    assert record["usage"]["requests"] == 1
    assert record["error"] is None and record["pending_approvals"] == []


async def test_list_runs_newest_first_with_filters_and_limit(service: Service) -> None:
    marker = uuid.uuid4().hex[:8]
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            ids = []
            for i, model in enumerate(["openai-chat:fake", "nonsense", "openai-chat:fake"]):
                resp = await client.post(
                    "/workers/plain/run", json={"input": f"list {marker} {i}", "model": model}
                )
                assert resp.status_code == 200, resp.text
                ids.append(resp.json()["run_id"])
            ok1, failed, ok2 = ids
            hang = await client.post(
                "/workers/plain/run",
                json={
                    "input": f"hang {marker}",
                    "model": "openai-chat:fake-hang",
                    "background": True,
                },
            )
            hanging = hang.json()["run_id"]

            async def listed(**params: Any) -> list[str]:
                resp = await client.get("/runs", params=params)
                assert resp.status_code == 200, resp.text
                return [r["run_id"] for r in resp.json()["runs"]]

            newest = await listed(worker="plain", limit=4)
            running = await listed(worker="plain", status="running")
            failed_only = await listed(worker="plain", status="failed", limit=1)
            succeeded = await listed(worker="plain", status="succeeded", limit=2)
            other_worker = await listed(worker="summarizer", limit=50)
            default = (await client.get("/runs")).json()["runs"]

            cancel = await client.post(f"/runs/{hanging}/cancel")
            cancelled = await listed(worker="plain", status="cancelled", limit=1)
            not_running = await listed(worker="plain", status="running")

            bad = [
                await client.get("/runs", params=params)
                for params in ({"limit": 0}, {"limit": 501}, {"status": "done"}, {"limit": "x"})
            ]

    assert newest == [hanging, ok2, failed, ok1]
    assert hanging in running
    assert failed_only == [failed]
    assert succeeded == [ok2, ok1]
    assert not {ok1, failed, ok2, hanging} & set(other_worker)
    assert len(default) <= 50 and default[0]["run_id"] == hanging
    assert [r["created_at"] for r in default] == sorted(
        (r["created_at"] for r in default), reverse=True
    )
    assert set(default[0]) >= RECORD_FIELDS
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    assert cancelled == [hanging]
    assert hanging not in not_running
    for resp in bad:
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["type"] == "invalid_request"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/runs/{id}"),
        ("GET", "/runs/{id}/events"),
        ("POST", "/runs/{id}/cancel"),
    ],
)
async def test_unknown_run_is_404(service: Service, method: str, path: str) -> None:
    run_id = uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        resp = await client.request(method, path.format(id=run_id))
    assert resp.status_code == 404, resp.text
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert error["type"] == "run_not_found"
    assert run_id in error["message"]


async def test_cancel_of_an_ended_run_is_409(service: Service) -> None:
    with anyio.fail_after(15):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            done = await client.post("/workers/plain/run", json={"input": "done already"})
            run_id = done.json()["run_id"]
            first = await client.post(f"/runs/{run_id}/cancel")
            second = await client.post(f"/runs/{run_id}/cancel")
            record = (await client.get(f"/runs/{run_id}")).json()
    for resp in (first, second):
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"]["type"] == "run_already_ended"
    assert record["status"] == "succeeded"  # a refused cancel changes nothing
