"""Code workers over HTTP: a gated ctx.write_file waits for an approval POSTed by the
client and resumes; the stream looks like a model worker's."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from e2e_support import SSE, Service, run_service, sse_items

from tests.fakes.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.anyio

SCRIBE = """---
name: scribe
code: main.py:run
sandbox:
  paths:
    notes: {root: notes, mode: rw, suffixes: [.md]}
---
Writes the input to notes/<name>.md, as code.
"""
MAIN = """async def run(ctx, input):
    await ctx.emit("writing " + input["name"] + "\\n")
    result = await ctx.write_file("notes/" + input["name"] + ".md", input["text"])
    await ctx.emit("done\\n")
    return result
"""


TOOLY = """---
name: tooly
model: openai-chat:fake
custom_tools: [ask_echo]
allow_workers: [echoer]
---
Use ask_echo.
"""
TOOLY_TOOLS = """async def ask_echo(ctx, text: str) -> str:
    \"\"\"Ask the echo worker.

    Args:
        text: What to send.
    \"\"\"
    return "echoer said: " + await ctx.call_worker("echoer", text)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("code-http")
    (root / "workers" / "scribe").mkdir(parents=True)
    (root / "workers" / "scribe" / "worker.worker").write_text(SCRIBE)
    (root / "workers" / "scribe" / "main.py").write_text(MAIN)
    (root / "workers" / "tooly").mkdir()
    (root / "workers" / "tooly" / "worker.worker").write_text(TOOLY)
    (root / "workers" / "tooly" / "tools.py").write_text(TOOLY_TOOLS)
    (root / "workers" / "echoer.worker").write_text("---\nname: echoer\nmodel: echo\n---\nEcho.\n")
    return root


@pytest.fixture(scope="module")
def svc(project: Path, fake_openai: FakeOpenAIServer) -> Iterator[Service]:
    with run_service(
        workers=project / "workers", data_dir=project / "data", fake_base_url=fake_openai.base_url
    ) as service:
        yield service


async def test_ctx_write_file_waits_for_an_http_approval_and_resumes(svc: Service, project: Path):
    name = uuid.uuid4().hex[:8]
    body = {"input": {"name": name, "text": "# from code"}}
    seen: list[dict] = []
    with anyio.fail_after(20):
        async with (
            httpx.AsyncClient(base_url=svc.url, timeout=20) as client,
            client.stream("POST", "/workers/scribe/run", json=body, headers=SSE) as resp,
        ):
            run_id = resp.headers["x-run-id"]
            async for item in sse_items(resp):
                if isinstance(item, str):
                    continue
                ev = item.data
                seen.append(ev)
                if ev["type"] == "approval.requested":
                    assert not (project / "notes" / f"{name}.md").exists()  # waiting in place
                    record = (await client.get(f"/runs/{run_id}")).json()
                    assert record["status"] == "waiting_approval"
                    decided = await client.post(
                        f"/runs/{run_id}/approvals/{ev['approval_id']}",
                        json={"decision": "approve"},
                    )
                    assert decided.status_code == 200
    types = [e["type"] for e in seen]
    assert types[:3] == ["run.started", "worker.started", "text.delta"]
    assert types.index("approval.requested") < types.index("approval.resolved")
    assert types[-2:] == ["worker.finished", "run.completed"]
    assert seen[1]["model"] == "code:main.py:run"
    assert seen[-1]["output"] == f"Wrote 11 bytes to notes/{name}.md"
    assert (project / "notes" / f"{name}.md").read_text() == "# from code"
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
    # ctx file operations show as tool calls, like a model's, and the approval points at it
    (call,) = [e for e in seen if e["type"] == "tool.call"]
    (result,) = [e for e in seen if e["type"] == "tool.result"]
    (asked,) = [e for e in seen if e["type"] == "approval.requested"]
    assert call["tool"] == result["tool"] == "write_file"
    assert call["tool_call_id"] == result["tool_call_id"] == asked["tool_call_id"]
    assert result["outcome"] == "success"


async def test_a_tool_with_ctx_streams_its_grandchild_in_the_root_stream(svc: Service):
    words = f"grand {uuid.uuid4().hex[:6]} child"
    call = {"calls": [{"tool": "ask_echo", "args": {"text": words}}]}
    body = {"input": json.dumps(call)}
    seen: list[dict] = []
    with anyio.fail_after(20):
        async with (
            httpx.AsyncClient(base_url=svc.url, timeout=20) as client,
            client.stream("POST", "/workers/tooly/run", json=body, headers=SSE) as resp,
        ):
            async for item in sse_items(resp):
                if not isinstance(item, str):
                    seen.append(item.data)
    grand = [e for e in seen if e["type"] == "text.delta" and e["worker"] == "echoer"]
    assert "".join(e["delta"] for e in grand) == words
    assert grand[0]["path"] == ["tooly", "echoer"]
    assert seen[-1]["type"] == "run.completed"
    assert f"echoer said: {words}" in seen[-1]["output"]
