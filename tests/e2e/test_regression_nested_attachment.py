"""Regression for the hang in seed-why-worker-execution-went-async.md ("issue 2"): a worker
calling another worker that receives attachments deadlocked under the old run_sync + thread
design. Here the whole path is real: HTTP + SSE into `llm-do serve`, the orchestrator's model
is PydanticAI's OpenAI chat client talking to the fake server over a socket, and it asks for
`worker_call(summarizer, attachments=["input/deck.pdf"])`."""

from __future__ import annotations

import base64
import re
import uuid

import anyio
import httpx
import pytest
from e2e_support import DECK, Service, afake_log, stream_run, user_content, user_text

from tests.fakes.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.anyio


async def test_issue2_nested_attachment_regression(
    service: Service, fake_openai: FakeOpenAIServer
) -> None:
    marker = f"deck-{uuid.uuid4().hex[:8]}"
    args = {
        "worker": "summarizer",
        "input_data": f"Summarize the deck {marker}",
        "attachments": ["input/deck.pdf"],
    }
    body = {"input": {"calls": [{"tool": "worker_call", "args": args}]}}
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            run = await stream_run(client, "orchestrator", body)

    assert run.status_code == 200
    assert run.terminal["type"] == "run.completed", run.terminal

    # The orchestrator's model asked for the call; the child ran nested under it.
    [call] = run.of_type("tool.call")
    assert (call["tool"], call["args"], call["path"]) == ("worker_call", args, ["orchestrator"])
    [child] = [d for d in run.of_type("worker.started") if d["worker"] == "summarizer"]
    assert child["path"] == ["orchestrator", "summarizer"]
    assert child["call_id"] not in (run.run_id, None)
    assert child["parent_call_id"] == run.run_id
    assert child["tool_call_id"] == call["tool_call_id"]
    assert child["model"] == "openai-chat:fake"

    # The child's text streamed into the parent's stream, as its own call, in order.
    child_deltas = [d for d in run.of_type("text.delta") if d["worker"] == "summarizer"]
    assert len(child_deltas) > 1
    for d in child_deltas:
        assert (d["path"], d["call_id"]) == (["orchestrator", "summarizer"], child["call_id"])
    child_text = run.text_of(child["call_id"])
    # The marker is the fake model's proof that a file part reached it (pydantic-ai's chat
    # client names every document `filename.<ext>` on the wire, so the name is not checked).
    size = len(DECK.read_bytes())
    assert re.fullmatch(
        rf"Summarize the deck {marker} \[files: [\w.-]+\.pdf \({size} bytes\)\]", child_text
    ), child_text

    [finished] = [d for d in run.of_type("worker.finished") if d["worker"] == "summarizer"]
    assert (finished["status"], finished["output"]) == ("succeeded", child_text)
    [result] = run.of_type("tool.result")
    assert (result["outcome"], result["content"]) == ("success", child_text)
    assert run.terminal["output"] == f"Tool results: {child_text}"
    assert run.text_of(run.run_id) == run.terminal["output"]
    assert run.terminal["usage"]["requests"] == 3
    assert run.terminal["usage"]["tool_calls"] == 1

    # The fake saw the child's request carry the deck as a `file` part, bytes intact.
    log = await afake_log(fake_openai.url)
    child_requests = [
        r
        for r in log["requests"]
        if isinstance(user_content(r), list) and f"Summarize the deck {marker}" in user_text(r)
    ]
    assert len(child_requests) == 1
    files = [p["file"] for p in user_content(child_requests[0]) if p.get("type") == "file"]
    assert len(files) == 1
    prefix = "data:application/pdf;base64,"
    assert files[0]["file_data"].startswith(prefix)
    assert base64.b64decode(files[0]["file_data"].removeprefix(prefix)) == DECK.read_bytes()
    assert child_requests[0]["model"] == "fake"
    assert child_requests[0]["stream"] is True
