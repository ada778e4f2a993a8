"""`worker_call(..., attachments=[...])` that breaks a sandbox or policy rule is a failed tool
call the caller's model sees (workers.md §3, §4): the run goes on, the child never starts.
Over HTTP, attachments reach the model, and a policy violation is a 4xx before any model call."""

from __future__ import annotations

import base64
import json
import re
import uuid

import anyio
import httpx
import pytest
from e2e_support import DECK, Service, afake_log, check_stream, stream_run

from tests.fakes.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("attachments", "needle"),
    [
        (["input/../workers/orchestrator.worker"], "contains '..'"),
        (["input//etc/passwd"], "is absolute"),
        (["secret/deck.pdf"], "Unknown sandbox 'secret'"),
        (["input/missing.pdf"], "does not exist"),
        (["input/deck.pdf"] * 3, "Too many attachments for worker 'summarizer': 3 > 2"),
        (["input/table.csv"], "suffix '.csv'"),
    ],
    ids=["dotdot", "absolute", "unknown-sandbox", "missing", "too-many", "suffix"],
)
async def test_refused_attachment_is_a_failed_tool_call(
    service: Service, attachments: list[str], needle: str
) -> None:
    marker = uuid.uuid4().hex[:8]
    args = {"worker": "summarizer", "input_data": f"refused {marker}", "attachments": attachments}
    body = {"input": {"calls": [{"tool": "worker_call", "args": args}]}}
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            run = await stream_run(client, "orchestrator", body)
    check_stream(run)
    assert run.terminal["type"] == "run.completed", run.terminal
    assert not [d for d in run.of_type("worker.started") if d["worker"] == "summarizer"]
    [result] = run.of_type("tool.result")
    assert result["outcome"] == "failed", result
    assert needle in str(result["content"]), result
    # the orchestrator's model was told, and answered with it
    assert needle in run.terminal["output"]


async def test_http_attachment_reaches_the_model(service: Service) -> None:
    """A base64 attachment in the run request reaches the worker's model as a file part."""
    marker = uuid.uuid4().hex[:8]
    data = DECK.read_bytes()
    body = {
        "input": f"uploaded {marker}",
        "attachments": [{"filename": "deck.pdf", "data_base64": base64.b64encode(data).decode()}],
    }
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            resp = await client.post("/workers/summarizer/run", json=body)
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["status"] == "succeeded", result
    assert re.fullmatch(
        rf"uploaded {marker} \[files: [\w.-]+\.pdf \({len(data)} bytes\)\]", result["output"]
    )


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        (["a.pdf", "b.pdf", "c.pdf"], "Too many attachments for worker 'summarizer': 3 > 2"),
        (["table.csv"], "suffix '.csv'"),
    ],
    ids=["too-many", "suffix"],
)
async def test_http_attachment_policy_is_checked_before_any_model_call(
    service: Service, fake_openai: FakeOpenAIServer, files: list[str], needle: str
) -> None:
    marker = f"policy-{uuid.uuid4().hex[:8]}"
    encoded = base64.b64encode(b"%PDF-1.4 x").decode()
    body = {
        "input": marker,
        "attachments": [{"filename": name, "data_base64": encoded} for name in files],
    }
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            plain = await client.post("/workers/summarizer/run", json=body)
            streamed = await client.post(
                "/workers/summarizer/run", json=body, headers={"Accept": "text/event-stream"}
            )
    for resp in (plain, streamed):
        assert resp.status_code == 422, resp.text
        err = resp.json()["error"]
        assert err["type"] == "attachment_rejected"
        assert needle in err["message"]
    log = await afake_log(fake_openai.url)
    assert not [r for r in log["requests"] if marker in json.dumps(r)]
