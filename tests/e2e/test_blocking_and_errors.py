"""Blocking (JSON) runs and the error answers of the run and worker routes, over the socket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from e2e_support import Service

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.url, timeout=15) as c:
        yield c


def _error(resp: httpx.Response, status: int, type_: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["type"] == type_, err
    assert "Traceback" not in err["message"]
    return err["message"]


async def test_blocking_run_returns_the_result(client: httpx.AsyncClient) -> None:
    body = {"input": "blocking mode answer", "model": "openai-chat:fake"}
    with anyio.fail_after(20):
        resp = await client.post("/workers/plain/run", json=body)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert set(data) == {"run_id", "status", "output", "usage", "error"}
    assert (data["status"], data["output"], data["error"]) == ("succeeded", body["input"], None)
    assert data["usage"]["requests"] == 1
    assert data["usage"]["output_tokens"] == 3
    assert resp.headers["x-run-id"] == data["run_id"]
    assert resp.headers["content-location"] == f"/runs/{data['run_id']}"


async def test_blocking_nested_run(client: httpx.AsyncClient) -> None:
    call = {"tool": "worker_call", "args": {"worker": "summarizer", "input_data": "inner words"}}
    with anyio.fail_after(20):
        resp = await client.post("/workers/orchestrator/run", json={"input": {"calls": [call]}})
    data = resp.json()
    assert (data["status"], data["output"]) == ("succeeded", "Tool results: inner words")
    assert data["usage"]["requests"] == 3


async def test_failed_run_is_200_with_model_error(client: httpx.AsyncClient) -> None:
    with anyio.fail_after(20):
        resp = await client.post("/workers/plain/run", json={"input": "x", "model": "nonsense"})
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["status"] == "failed"
    assert data["output"] is None
    assert data["error"]["type"] == "model_error"
    assert "'nonsense'" in data["error"]["message"]
    assert resp.headers["x-run-id"] == data["run_id"]


async def test_provider_error_is_a_failed_run(client: httpx.AsyncClient) -> None:
    """The provider answering 404 (a model the fake does not know) fails the run, no 500."""
    body = {"input": "x", "model": "openai-chat:no-such-model"}
    with anyio.fail_after(20):
        resp = await client.post("/workers/plain/run", json=body)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["status"] == "failed"
    assert data["error"]["type"] == "provider_error"
    assert "404" in data["error"]["message"]


@pytest.mark.parametrize(
    "name",
    ["no-such-worker", "Bad.Name", "-dash", "a" * 65],
    ids=["missing", "uppercase-dot", "leading-dash", "too-long"],
)
async def test_unknown_worker_is_404(client: httpx.AsyncClient, name: str) -> None:
    with anyio.fail_after(10):
        resp = await client.post(f"/workers/{name}/run", json={"input": "x"})
    _error(resp, 404, "worker_not_found")


async def test_unknown_worker_is_404_when_streaming(client: httpx.AsyncClient) -> None:
    with anyio.fail_after(10):
        resp = await client.post(
            "/workers/no-such-worker/run",
            json={"input": "x"},
            headers={"Accept": "text/event-stream"},
        )
    _error(resp, 404, "worker_not_found")


async def test_invalid_worker_is_422_naming_the_key(client: httpx.AsyncClient) -> None:
    with anyio.fail_after(10):
        resp = await client.post("/workers/broken/run", json={"input": "x"})
        detail = await client.get("/workers/broken")
    message = _error(resp, 422, "invalid_worker")
    assert "allow_worker" in message and "broken.worker" in message
    message = _error(detail, 422, "invalid_worker")
    assert "allow_worker" in message
    err = detail.json()["error"]
    assert err["field"] == "allow_worker"
    assert err["path"].endswith("broken.worker")


async def test_worker_list_survives_an_invalid_worker(client: httpx.AsyncClient) -> None:
    with anyio.fail_after(10):
        resp = await client.get("/workers")
    assert resp.status_code == 200
    workers = {w["name"]: w for w in resp.json()["workers"]}
    assert set(workers) >= {"orchestrator", "summarizer", "reader", "plain", "broken"}
    assert "allow_worker" in workers["broken"]["error"]["message"]
    orchestrator = workers["orchestrator"]
    assert "error" not in orchestrator
    assert orchestrator["allow_workers"] == ["summarizer", "reader"]
    assert orchestrator["model"] == "openai-chat:fake"
    assert "worker_call" in orchestrator["tools"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"input": "x", "inputt": "y"}', "inputt"),
        (b'{"input": "x",', "not valid JSON"),
        (b'{"input": 5}', "input"),
        (b'{"on_disconnect": "sometimes"}', "on_disconnect"),
        (b'{"attachments": [{"filename": "a.pdf", "data_base64": "!!"}]}', "base64"),
    ],
    ids=["unknown-field", "invalid-json", "wrong-type", "bad-enum", "bad-base64"],
)
async def test_bad_body_is_422(client: httpx.AsyncClient, content: bytes, needle: str) -> None:
    with anyio.fail_after(10):
        resp = await client.post(
            "/workers/plain/run",
            content=content,
            headers={"Content-Type": "application/json"},
        )
    message = _error(resp, 422, "invalid_request")
    assert needle in message
