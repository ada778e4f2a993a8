"""Approvals over a real socket (workers.md §7, http-api.md): a gated tool call waits in place
for a decision posted to /runs/{id}/approvals/{approval_id} while the stream stays open.

The service runs on a copy of tests/e2e/workers in a temporary project, so the `g_notes`
sandbox the g_* workers write to is a temporary folder this test can look into.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
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
    SseEvent,
    StreamedRun,
    afake_log,
    check_stream,
    eventually,
    run_service,
    sse_items,
    stream_run,
)

from tests.fakes.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("approvals-project")
    shutil.copytree(WORKERS, root / "workers")
    (root / "g_notes").mkdir()
    return root


@pytest.fixture(scope="module")
def svc(
    project: Path, fake_openai: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with run_service(
        workers=project / "workers",
        data_dir=tmp_path_factory.mktemp("approvals-data"),
        fake_base_url=fake_openai.base_url,
    ) as service:
        yield service
    assert "Traceback" not in service.output(), service.output()


@pytest.fixture
async def client(svc: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=svc.url, timeout=15) as c:
        yield c


# ---- helpers ---------------------------------------------------------------------------------


def marker() -> str:
    return uuid.uuid4().hex[:10]


def calls(*specs: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """The fake model's script: make these tool calls (in parallel)."""
    return {"calls": [{"tool": tool, "args": args} for tool, args in specs]}


def write(name: str, content: str) -> tuple[str, dict[str, Any]]:
    return "write_file", {"path": f"notes/{name}", "content": content}


def delegate(worker: str, script: dict[str, Any] | str) -> tuple[str, dict[str, Any]]:
    data = script if isinstance(script, str) else json.dumps(script)
    return "worker_call", {"worker": worker, "input_data": data}


class Live:
    """A streamed run being read event by event, so a test can act in between."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.run_id: str = response.headers["x-run-id"]
        self.events: list[SseEvent] = []
        self._items = sse_items(response)

    @property
    def data(self) -> list[dict[str, Any]]:
        return [e.data for e in self.events]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.data if d["type"] == kind]

    async def next(self) -> dict[str, Any]:
        async for item in self._items:
            if isinstance(item, SseEvent):
                self.events.append(item)
                return item.data
        raise AssertionError(f"the stream ended after {[d['type'] for d in self.data]}")

    async def until(self, kind: str, **match: Any) -> dict[str, Any]:
        """Read up to the next event of `kind` (with the given field values)."""
        while True:
            data = await self.next()
            if data["type"] == kind and all(data.get(k) == v for k, v in match.items()):
                return data
            if data["type"] in TERMINAL:
                raise AssertionError(f"no {kind} {match} before the end: {self.data}")

    async def finish(self) -> dict[str, Any]:
        """Read to the terminal event and check the whole stream."""
        while not self.events or self.events[-1].data["type"] not in TERMINAL:
            await self.next()
        check_stream(StreamedRun(200, self.response.headers, self.events))
        return self.events[-1].data


@asynccontextmanager
async def live_run(
    client: httpx.AsyncClient, worker: str, body: dict[str, Any]
) -> AsyncIterator[Live]:
    async with client.stream("POST", f"/workers/{worker}/run", json=body, headers=SSE) as resp:
        assert resp.status_code == 200, await resp.aread()
        yield Live(resp)


async def decide(
    client: httpx.AsyncClient, run_id: str, approval_id: str, decision: str, **extra: Any
) -> httpx.Response:
    return await client.post(
        f"/runs/{run_id}/approvals/{approval_id}", json={"decision": decision, **extra}
    )


async def tool_messages(fake: FakeOpenAIServer, needle: str) -> list[str]:
    """Contents of the tool messages the fake model received in requests mentioning `needle`."""
    log = await afake_log(fake.url)
    out = []
    for request in log["requests"]:
        if needle not in json.dumps(request):
            continue
        for message in request.get("messages") or []:
            if message.get("role") == "tool":
                content = message.get("content")
                out.append(content if isinstance(content, str) else json.dumps(content))
    return out


# ---- approve, edit, deny ---------------------------------------------------------------------


async def test_approve(client: httpx.AsyncClient, project: Path) -> None:
    m = marker()
    note = project / "g_notes" / f"{m}.md"
    body = {"input": calls(write(f"{m}.md", f"content {m}"))}
    with anyio.fail_after(20):
        async with live_run(client, "g_writer", body) as run:
            req = await run.until("approval.requested")
            for field in ("approval_id", "tool_call_id", "tool", "args", "description"):
                assert req[field], field
            assert req["expires_at"] > req["created_at"]
            assert (req["tool"], req["args"]) == (
                "write_file",
                {"path": f"notes/{m}.md", "content": f"content {m}"},
            )
            assert req["path"] == ["g_writer"] and req["call_id"] == run.run_id
            assert not note.exists()  # waiting in place
            resp = await decide(client, run.run_id, req["approval_id"], "approve")
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"approval_id": req["approval_id"], "decision": "approve"}
            resolved = await run.until("approval.resolved")
            assert (resolved["approval_id"], resolved["decision"]) == (
                req["approval_id"],
                "approve",
            )
            end = await run.finish()
    assert end["type"] == "run.completed", end
    assert note.read_text() == f"content {m}"
    (result,) = run.of_type("tool.result")
    assert result["outcome"] == "success"
    assert end["output"] == f"Tool results: Wrote {len(f'content {m}')} bytes to notes/{m}.md"


async def test_approve_with_edited_args(client: httpx.AsyncClient, project: Path) -> None:
    m = marker()
    body = {"input": calls(write(f"{m}.md", "what the model wrote"))}
    edited = {"path": f"notes/{m}.md", "content": f"what a person wrote {m}"}
    with anyio.fail_after(20):
        async with live_run(client, "g_writer", body) as run:
            req = await run.until("approval.requested")
            resp = await decide(client, run.run_id, req["approval_id"], "approve", args=edited)
            assert resp.status_code == 200, resp.text
            end = await run.finish()
    assert end["type"] == "run.completed", end
    assert (project / "g_notes" / f"{m}.md").read_text() == f"what a person wrote {m}"


async def test_deny_tells_the_model_why(
    client: httpx.AsyncClient, project: Path, fake_openai: FakeOpenAIServer
) -> None:
    m = marker()
    reason = f"not today {m}"
    body = {"input": calls(write(f"{m}.md", "x"))}
    with anyio.fail_after(20):
        async with live_run(client, "g_writer", body) as run:
            req = await run.until("approval.requested")
            resp = await decide(client, run.run_id, req["approval_id"], "deny", reason=reason)
            assert resp.status_code == 200, resp.text
            resolved = await run.until("approval.resolved")
            assert (resolved["decision"], resolved["reason"]) == ("deny", reason)
            end = await run.finish()
    assert end["type"] == "run.completed", end  # the run goes on
    assert not (project / "g_notes" / f"{m}.md").exists()
    (result,) = run.of_type("tool.result")
    assert result["outcome"] == "denied" and reason in str(result["content"])
    # the model's next turn carried the reason in the tool message
    assert [t for t in await tool_messages(fake_openai, m) if reason in t]
    assert reason in end["output"]


async def test_second_decision_is_409_and_unknown_ids_are_404(
    client: httpx.AsyncClient,
) -> None:
    m = marker()
    body = {"input": calls(write(f"{m}.md", "x"))}
    with anyio.fail_after(20):
        async with live_run(client, "g_writer", body) as run:
            req = await run.until("approval.requested")
            aid = req["approval_id"]
            unknown = await decide(client, run.run_id, "no-such-approval", "approve")
            bad = await client.post(
                f"/runs/{run.run_id}/approvals/{aid}", json={"decision": "maybe"}
            )
            assert (await decide(client, run.run_id, aid, "deny")).status_code == 200
            again = await decide(client, run.run_id, aid, "approve")
            await run.finish()
        after_end = await decide(client, run.run_id, aid, "approve")
        no_run = await decide(client, "no-such-run", aid, "approve")
        no_run_list = await client.get("/runs/no-such-run/approvals")
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["type"] == "approval_not_found"
    assert bad.status_code == 422, bad.text
    assert again.status_code == 409, again.text
    assert again.json()["error"]["type"] == "approval_already_decided"
    assert after_end.status_code == 409, after_end.text
    assert no_run.status_code == 404, no_run.text
    assert no_run.json()["error"]["type"] == "run_not_found"
    assert no_run_list.status_code == 404, no_run_list.text
    assert len(run.of_type("approval.resolved")) == 1


# ---- approve_for_run -------------------------------------------------------------------------


async def test_approve_for_run_covers_the_same_call_in_a_nested_child(
    client: httpx.AsyncClient, project: Path
) -> None:
    """g_gatekeeper writes a note and (gated) asks g_writer for the very same write: once the
    first write is approved for the run, the child's identical call is not asked again."""
    m = marker()
    same = write(f"{m}.md", f"shared {m}")
    body = {"input": calls(same, delegate("g_writer", calls(same)))}
    with anyio.fail_after(20):
        async with live_run(client, "g_gatekeeper", body) as run:
            first = await run.until("approval.requested", tool="write_file")
            call = await run.until("approval.requested", tool="worker_call")
            resp = await decide(client, run.run_id, first["approval_id"], "approve_for_run")
            assert resp.status_code == 200, resp.text
            await run.until("approval.resolved", approval_id=first["approval_id"])
            resp = await decide(client, run.run_id, call["approval_id"], "approve")
            assert resp.status_code == 200, resp.text
            end = await run.finish()
    assert end["type"] == "run.completed", end
    requested = run.of_type("approval.requested")
    assert [(r["tool"], r["path"]) for r in requested] == [
        ("write_file", ["g_gatekeeper"]),
        ("worker_call", ["g_gatekeeper"]),
    ]
    child_results = [r for r in run.of_type("tool.result") if r["worker"] == "g_writer"]
    assert [(r["tool"], r["outcome"]) for r in child_results] == [("write_file", "success")]
    assert (project / "g_notes" / f"{m}.md").read_text() == f"shared {m}"


async def test_approve_for_run_does_not_cover_other_args(client: httpx.AsyncClient) -> None:
    m = marker()
    body = {
        "input": calls(
            write(f"{m}.md", "one"),
            delegate("g_writer", calls(write(f"{m}.md", "two"))),
        )
    }
    with anyio.fail_after(20):
        async with live_run(client, "g_gatekeeper", body) as run:
            first = await run.until("approval.requested", tool="write_file")
            call = await run.until("approval.requested", tool="worker_call")
            await decide(client, run.run_id, first["approval_id"], "approve_for_run")
            await decide(client, run.run_id, call["approval_id"], "approve")
            child = await run.until("approval.requested", worker="g_writer")
            assert child["args"]["content"] == "two"
            await decide(client, run.run_id, child["approval_id"], "deny")
            end = await run.finish()
    assert end["type"] == "run.completed", end


# ---- nested and parallel ---------------------------------------------------------------------


async def test_nested_approval_shows_on_the_root_stream(
    client: httpx.AsyncClient, project: Path
) -> None:
    m = marker()
    body = {"input": calls(delegate("g_writer", calls(write(f"{m}.md", f"nested {m}"))))}
    with anyio.fail_after(20):
        async with live_run(client, "g_boss", body) as run:
            req = await run.until("approval.requested")
            assert (req["worker"], req["path"]) == ("g_writer", ["g_boss", "g_writer"])
            assert req["run_id"] == run.run_id and req["call_id"] != run.run_id
            listed = (await client.get(f"/runs/{run.run_id}/approvals")).json()["approvals"]
            assert [(a["approval_id"], a["worker"], a["path"]) for a in listed] == [
                (req["approval_id"], "g_writer", ["g_boss", "g_writer"])
            ]
            resp = await decide(client, run.run_id, req["approval_id"], "approve")
            assert resp.status_code == 200, resp.text
            end = await run.finish()
    assert end["type"] == "run.completed", end
    assert (project / "g_notes" / f"{m}.md").read_text() == f"nested {m}"


async def test_a_sibling_child_keeps_streaming_while_one_waits(
    client: httpx.AsyncClient, project: Path
) -> None:
    m = marker()
    words = " ".join(f"w{i}" for i in range(30))
    body = {
        "input": calls(
            delegate("g_writer", calls(write(f"{m}.md", "parallel"))),
            delegate("g_slow", f"{m} {words}"),
        )
    }
    with anyio.fail_after(30):
        async with live_run(client, "g_boss", body) as run:
            req = await run.until("approval.requested")
            assert req["worker"] == "g_writer"
            # the other child streams on while this call waits for its decision
            await run.until("text.delta", worker="g_slow")
            await run.until("text.delta", worker="g_slow")
            last_before_decision = run.events[-1].data["seq"]
            assert not run.of_type("approval.resolved")
            resp = await decide(client, run.run_id, req["approval_id"], "approve")
            assert resp.status_code == 200, resp.text
            end = await run.finish()
    assert end["type"] == "run.completed", end
    slow_seqs = [
        e.data["seq"]
        for e in run.events
        if e.data["type"] == "text.delta" and e.data["worker"] == "g_slow"
    ]
    between = [s for s in slow_seqs if req["seq"] < s <= last_before_decision]
    assert len(between) >= 2, (req["seq"], last_before_decision, slow_seqs)
    (resolved,) = run.of_type("approval.resolved")
    assert resolved["seq"] > last_before_decision
    slow_done = [d for d in run.of_type("worker.finished") if d["worker"] == "g_slow"]
    assert slow_done and slow_done[0]["output"] == f"{m} {words}"
    assert (project / "g_notes" / f"{m}.md").read_text() == "parallel"


# ---- waiting: status, cancel, blocking runs --------------------------------------------------


async def test_status_is_waiting_approval_while_pending(client: httpx.AsyncClient) -> None:
    m = marker()
    body = {"input": calls(write(f"{m}.md", "x"))}
    with anyio.fail_after(20):
        async with live_run(client, "g_writer", body) as run:
            req = await run.until("approval.requested")
            record = (await client.get(f"/runs/{run.run_id}")).json()
            assert record["status"] == "waiting_approval"
            (pending,) = record["pending_approvals"]
            assert (pending["approval_id"], pending["tool"], pending["args"]) == (
                req["approval_id"],
                "write_file",
                {"path": f"notes/{m}.md", "content": "x"},
            )
            listed = await client.get("/runs", params={"status": "waiting_approval"})
            assert run.run_id in [r["run_id"] for r in listed.json()["runs"]]
            await decide(client, run.run_id, req["approval_id"], "approve")
            end = await run.finish()
        record = (await client.get(f"/runs/{run.run_id}")).json()
    assert end["type"] == "run.completed"
    assert (record["status"], record["pending_approvals"]) == ("succeeded", [])


async def test_cancel_while_waiting(client: httpx.AsyncClient, project: Path) -> None:
    m = marker()
    body = {"input": calls(write(f"{m}.md", "x"))}
    with anyio.fail_after(20):
        async with live_run(client, "g_writer", body) as run:
            req = await run.until("approval.requested")
            resp = await client.post(f"/runs/{run.run_id}/cancel")
            assert resp.status_code == 200, resp.text
            assert resp.json()["status"] == "cancelled"
            resolved = await run.until("approval.resolved")
            end = await run.finish()
        approvals = await client.get(f"/runs/{run.run_id}/approvals")
        record = (await client.get(f"/runs/{run.run_id}")).json()
        late = await decide(client, run.run_id, req["approval_id"], "approve")
    assert (resolved["approval_id"], resolved["decision"]) == (req["approval_id"], "cancelled")
    assert end["type"] == "run.cancelled", end
    assert approvals.status_code == 200 and approvals.json() == {"approvals": []}
    assert (record["status"], record["pending_approvals"]) == ("cancelled", [])
    assert late.status_code == 409, late.text
    assert not (project / "g_notes" / f"{m}.md").exists()
    assert not run.of_type("tool.result")


async def test_blocking_run_is_approved_the_same_way(
    client: httpx.AsyncClient, project: Path
) -> None:
    m = marker()
    body = {"input": calls(write(f"{m}.md", f"blocking {m}"))}
    with anyio.fail_after(20):
        async with client.stream("POST", "/workers/g_writer/run", json=body) as resp:
            # the headers are here at once, while the run waits for its approval
            assert resp.status_code == 200
            run_id = resp.headers["x-run-id"]
            assert resp.headers["content-location"] == f"/runs/{run_id}"

            async def pending() -> list[dict[str, Any]]:
                got = await client.get(f"/runs/{run_id}/approvals")
                return got.json()["approvals"]

            (approval,) = await eventually(pending, within=10, what="the pending approval")
            assert approval["tool"] == "write_file"
            answer = await decide(client, run_id, approval["approval_id"], "approve")
            assert answer.status_code == 200, answer.text
            result = json.loads(await resp.aread())
    assert result["run_id"] == run_id
    assert result["status"] == "succeeded", result
    assert result["output"] == f"Tool results: Wrote {len(f'blocking {m}')} bytes to notes/{m}.md"
    assert (project / "g_notes" / f"{m}.md").read_text() == f"blocking {m}"


# ---- approval modes in the request body ------------------------------------------------------


@pytest.mark.parametrize("mode", ["approve_all", "deny_all"])
async def test_approval_mode_in_the_request_body(
    client: httpx.AsyncClient, project: Path, fake_openai: FakeOpenAIServer, mode: str
) -> None:
    m = marker()
    body = {
        "input": calls(delegate("g_writer", calls(write(f"{m}.md", f"mode {m}")))),
        "approval": mode,
    }
    with anyio.fail_after(20):
        run = await stream_run(client, "g_boss", body)
    check_stream(run)
    assert run.terminal["type"] == "run.completed", run.terminal
    assert not run.of_type("approval.requested") and not run.of_type("approval.resolved")
    (child_result,) = [r for r in run.of_type("tool.result") if r["worker"] == "g_writer"]
    note = project / "g_notes" / f"{m}.md"
    if mode == "approve_all":
        assert child_result["outcome"] == "success"
        assert note.read_text() == f"mode {m}"
    else:
        assert child_result["outcome"] == "denied"
        assert not note.exists()
        assert [t for t in await tool_messages(fake_openai, m) if "deny_all" in t]


# ---- server settings: LLM_DO_APPROVAL_TIMEOUT_S and LLM_DO_APPROVAL --------------------------


@pytest.fixture(scope="module")
def tuned(
    fake_openai: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Service, Path]]:
    """A second service: approvals time out after 1 s, and runs default to deny_all."""
    root = tmp_path_factory.mktemp("approvals-tuned")
    shutil.copytree(WORKERS, root / "workers")
    with run_service(
        workers=root / "workers",
        data_dir=root / "data",
        fake_base_url=fake_openai.base_url,
        LLM_DO_APPROVAL_TIMEOUT_S="1",
        LLM_DO_APPROVAL="deny_all",
    ) as service:
        yield service, root
    assert "Traceback" not in service.output(), service.output()


async def test_unanswered_approval_times_out(
    tuned: tuple[Service, Path], fake_openai: FakeOpenAIServer
) -> None:
    service, root = tuned
    m = marker()
    body = {"input": calls(write(f"{m}.md", "x")), "approval": "prompt"}
    with anyio.fail_after(8):  # the decision is due after 1 s
        async with (
            httpx.AsyncClient(base_url=service.url, timeout=15) as client,
            live_run(client, "g_writer", body) as run,
        ):
            req = await run.until("approval.requested")
            assert req["expires_at"] - req["created_at"] == pytest.approx(1)
            resolved = await run.until("approval.resolved")
            end = await run.finish()
    assert (resolved["approval_id"], resolved["decision"], resolved["reason"]) == (
        req["approval_id"],
        "deny",
        "timed out",
    )
    assert end["type"] == "run.completed", end
    (result,) = run.of_type("tool.result")
    assert result["outcome"] == "denied"
    assert [t for t in await tool_messages(fake_openai, m) if "timed out" in t]
    assert not (root / "g_notes" / f"{m}.md").exists()


async def test_server_default_approval_mode(
    tuned: tuple[Service, Path], fake_openai: FakeOpenAIServer
) -> None:
    service, root = tuned
    m = marker()
    body = {"input": calls(write(f"{m}.md", "x"))}  # no "approval": the server's default
    with anyio.fail_after(8):
        async with httpx.AsyncClient(base_url=service.url, timeout=15) as client:
            run = await stream_run(
                client, "g_writer", body, until=lambda e: e.event == "approval.requested"
            )
    assert not run.of_type("approval.requested")  # (a run left waiting is cancelled: we left)
    assert run.terminal["type"] == "run.completed", run.terminal
    (result,) = run.of_type("tool.result")
    assert result["outcome"] == "denied"
    assert not (root / "g_notes" / f"{m}.md").exists()
