"""Three replicas (r0, r1, r2) sharing one PostgreSQL schema and one Redis prefix, over real
sockets (docs/replicas.md): a run executes on the replica that got its POST, and any replica
follows it (same bytes, `Last-Event-ID` included), answers its record, lists it, cancels it
and takes decisions on its approvals.

The replicas serve a copy of tests/e2e/workers in a temporary project, so the `g_notes`
sandbox g_writer writes to is a temporary folder this test can look into.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import anyio
import httpx
import pytest
import redis
from e2e_support import (
    SSE,
    TERMINAL,
    WORKERS,
    StreamedRun,
    afake_log,
    check_stream,
    eventually,
    stream_run,
)

from tests.e2e.e2e_support import Service
from tests.e2e.replicas_support import postgres_schema, redis_bus_url, replicas
from tests.fakes.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.anyio

NAMES = ("r0", "r1", "r2")
CONCURRENT_RUNS = 200


# ---- the three replicas ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("replicas-project")
    shutil.copytree(WORKERS, root / "workers")
    (root / "g_notes").mkdir()
    return root


def _drop_prefix(bus_url: str) -> None:
    """Delete the keys this module's replicas left under their prefix."""
    parts = urlsplit(bus_url)
    prefix = dict(parse_qsl(parts.query))["prefix"]
    client = redis.Redis.from_url(urlunsplit(parts._replace(query="")), socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module")
def cluster(
    project: Path, fake_openai: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Service]]:
    bus_url = redis_bus_url()
    with postgres_schema() as store_url:
        try:
            with replicas(
                3,
                workers=project / "workers",
                tmp_path=tmp_path_factory.mktemp("replicas-data"),
                fake_base_url=fake_openai.base_url,
                store_url=store_url,
                bus_url=bus_url,
                LLM_DO_LEASE_S="5",
            ) as services:
                yield services
        finally:
            _drop_prefix(bus_url)
    # Whatever the tests did, no replica logged a stack trace (no 500s, no task errors).
    for name, service in zip(NAMES, services, strict=True):
        assert "Traceback" not in service.output(), (name, service.output())


@pytest.fixture
async def clients(cluster: list[Service]) -> AsyncIterator[list[httpx.AsyncClient]]:
    limits = httpx.Limits(max_connections=CONCURRENT_RUNS + 20, max_keepalive_connections=50)
    async with (
        httpx.AsyncClient(base_url=cluster[0].url, timeout=30, limits=limits) as a,
        httpx.AsyncClient(base_url=cluster[1].url, timeout=30, limits=limits) as b,
        httpx.AsyncClient(base_url=cluster[2].url, timeout=30, limits=limits) as c,
    ):
        yield [a, b, c]


async def test_the_replicas_are_three_processes(clients: list[httpx.AsyncClient]) -> None:
    """A sanity check of the fixture: each URL is its own replica, named as configured."""
    answers = [(await client.get("/healthz")).json() for client in clients]
    assert [a["replica"] for a in answers] == list(NAMES)


# ---- reading SSE frames as bytes -------------------------------------------------------------


@dataclass
class Frame:
    raw: bytes  # the frame's bytes as the client received them, blank line included
    seq: int
    type: str
    data: dict[str, Any]
    at: float  # time.monotonic() when it was read


def parse_frame(raw: bytes, at: float) -> Frame:
    """One frame of the service's format: `id:`, `event:`, `data:` lines, in that order."""
    lines = raw.removesuffix(b"\n\n").split(b"\n")
    assert len(lines) == 3, raw
    assert lines[0].startswith(b"id: ") and lines[1].startswith(b"event: "), raw
    assert lines[2].startswith(b"data: "), raw
    seq, type_ = int(lines[0][4:]), lines[1][7:].decode()
    data = json.loads(lines[2][6:])
    assert (data["seq"], data["type"]) == (seq, type_), raw
    return Frame(raw, seq, type_, data, at)


async def raw_frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """The event frames of an SSE response, as bytes; the `retry:` hint and `: ping` comments
    are left out."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        while (end := buffer.find(b"\n\n")) >= 0:
            block, buffer = buffer[: end + 2], buffer[end + 2 :]
            if block.startswith((b":", b"retry:")):
                continue
            yield parse_frame(block, time.monotonic())
    assert buffer == b"", f"the stream ended inside a frame: {buffer!r}"


class Follower:
    """An SSE response read in a task of its own, so every frame is timed as it arrives and a
    test can wait for the one it needs."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.frames: list[Frame] = []
        self.closed = False
        self._changed = anyio.Event()

    async def read(self) -> None:
        try:
            async for item in raw_frames(self.response):
                self.frames.append(item)
                self._notify()
        finally:
            self.closed = True
            self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    @property
    def raw(self) -> bytes:
        return b"".join(f.raw for f in self.frames)

    @property
    def types(self) -> list[str]:
        return [f.type for f in self.frames]

    def of_type(self, kind: str) -> list[Frame]:
        return [f for f in self.frames if f.type == kind]

    async def until(self, check: Callable[[Frame], bool] | str) -> Frame:
        """The first frame for which `check` holds (a str: of that type)."""
        if isinstance(check, str):
            kind = check
            check = lambda f: f.type == kind  # noqa: E731
        seen = 0
        while True:
            for item in self.frames[seen:]:
                if check(item):
                    return item
            seen = len(self.frames)
            if self.closed:
                raise AssertionError(f"the stream ended without it, after {self.types}")
            await self._changed.wait()

    async def finish(self) -> Frame:
        """Wait until the server closes the stream; its last frame is the run's one terminal
        event and the ids are consecutive."""
        while not self.closed:
            await self._changed.wait()
        assert self.frames, "no events"
        assert self.frames[-1].type in TERMINAL, self.types
        assert [t in TERMINAL for t in self.types].count(True) == 1, self.types
        first = self.frames[0].seq
        assert [f.seq for f in self.frames] == list(range(first, first + len(self.frames)))
        return self.frames[-1]


@asynccontextmanager
async def follow(
    client: httpx.AsyncClient, method: str, url: str, **kw: Any
) -> AsyncIterator[Follower]:
    async with client.stream(method, url, **kw) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        follower = Follower(response)
        async with anyio.create_task_group() as tg:
            tg.start_soon(follower.read)
            yield follower
            tg.cancel_scope.cancel()


def events_of(client: httpx.AsyncClient, run_id: str, after: int | None = None) -> Any:
    headers = dict(SSE) if after is None else {**SSE, "Last-Event-ID": str(after)}
    return follow(client, "GET", f"/runs/{run_id}/events", headers=headers)


# ---- helpers ---------------------------------------------------------------------------------


def marker() -> str:
    return uuid.uuid4().hex[:10]


def write_call(name: str, content: str) -> dict[str, Any]:
    """g_writer's script for the fake model: one write_file call."""
    return {
        "calls": [{"tool": "write_file", "args": {"path": f"notes/{name}", "content": content}}]
    }


async def start_background(client: httpx.AsyncClient, worker: str, body: dict[str, Any]) -> str:
    resp = await client.post(f"/workers/{worker}/run", json={**body, "background": True})
    assert resp.status_code == 202, resp.text
    return resp.json()["run_id"]


def error_type(resp: httpx.Response) -> str:
    return resp.json()["error"]["type"]


# ---- 1. following a run on another replica ---------------------------------------------------


async def test_followers_on_other_replicas_get_the_owners_bytes(
    clients: list[httpx.AsyncClient],
) -> None:
    """A streams its own POST; C follows from the start, B resumes with `Last-Event-ID: k`
    while the run goes on. Every frame is the same bytes everywhere."""
    a, b, c = clients
    text = f"follow {marker()} " + " ".join(f"w{i}" for i in range(40))  # ~2 s on fake-slow
    with anyio.fail_after(40):
        async with follow(
            a, "POST", "/workers/g_slow/run", json={"input": text}, headers=SSE
        ) as on_a:
            run_id = on_a.response.headers["x-run-id"]
            async with events_of(c, run_id) as on_c:
                k = (await on_a.until(lambda f: f.seq >= 4)).seq
                async with events_of(b, run_id, after=k) as on_b:
                    end_b = await on_b.finish()
                    end_c = await on_c.finish()
                    end_a = await on_a.finish()

        records = [(await client.get(f"/runs/{run_id}")).json() for client in clients]

    n = end_a.seq
    lags = sorted(fc.at - fa.at for fa, fc in zip(on_a.frames, on_c.frames, strict=False))
    print(
        f"\nr2 following a run on r0, lag behind r0's own stream ({len(lags)} events): "
        f"median {lags[len(lags) // 2] * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms"
    )
    assert k > 1 and n > k + 30, (k, n)
    assert end_a.type == "run.completed", end_a.data
    assert [f.seq for f in on_a.frames] == list(range(1, n + 1))
    assert on_a.frames[0].type == "run.started"
    assert end_a.data["output"] == text
    # B: exactly the events after k, in order, to the terminal one; the same bytes as A's.
    assert [f.seq for f in on_b.frames] == list(range(k + 1, n + 1))
    assert end_b.type == "run.completed"
    assert on_b.raw == b"".join(f.raw for f in on_a.frames[k:])
    # ... and live, not a replay once the run had ended.
    assert on_b.frames[0].at < end_a.at, "B's first event came only after the run ended"
    # C, from the start: A's whole stream, byte for byte.
    assert on_c.raw == on_a.raw
    assert end_c.raw == end_a.raw
    # The record is the same whichever replica answers.
    for name, record in zip(NAMES, records, strict=True):
        assert record["status"] == "succeeded", (name, record)
        assert record["events"] == n, (name, record)
        assert record["output"] == end_a.data["output"], (name, record)
        assert record["replica"] == "r0", (name, record)
        assert record["pending_approvals"] == [], (name, record)
    assert records[1] == records[0] and records[2] == records[0]


# ---- 2. approvals across replicas ------------------------------------------------------------


async def test_an_approval_is_decided_on_another_replica(
    clients: list[httpx.AsyncClient], project: Path
) -> None:
    """g_writer runs on A and waits for approval; B follows it, C shows and decides the
    approval, B's second decision is refused, and the file is written by A."""
    a, b, c = clients
    m = marker()
    note = project / "g_notes" / f"{m}.md"
    body = {"input": write_call(f"{m}.md", f"content {m}"), "approval": "prompt"}
    with anyio.fail_after(40):
        run_id = await start_background(a, "g_writer", body)
        async with events_of(b, run_id) as on_b:
            requested = await on_b.until("approval.requested")
            aid = requested.data["approval_id"]
            assert requested.data["args"] == {"path": f"notes/{m}.md", "content": f"content {m}"}
            assert not note.exists()  # waiting in place

            record = (await c.get(f"/runs/{run_id}")).json()
            listed = (await c.get(f"/runs/{run_id}/approvals")).json()["approvals"]

            posted_at = time.monotonic()
            decided = await c.post(f"/runs/{run_id}/approvals/{aid}", json={"decision": "approve"})
            answered_at = time.monotonic()
            again = await b.post(f"/runs/{run_id}/approvals/{aid}", json={"decision": "deny"})
            resolved = await on_b.until("approval.resolved")
            end = await on_b.finish()

        after_end = await b.post(f"/runs/{run_id}/approvals/{aid}", json={"decision": "approve"})
        async with events_of(a, run_id) as replay_a:
            await replay_a.finish()
        final = (await c.get(f"/runs/{run_id}")).json()

    latency = resolved.at - posted_at
    print(
        f"\napproval decided on r2 for a run on r0: POST answered in "
        f"{(answered_at - posted_at) * 1000:.1f} ms, approval.resolved on r1's follower "
        f"{latency * 1000:.1f} ms after the POST"
    )
    assert record["status"] == "waiting_approval", record
    assert record["replica"] == "r0"
    assert [p["approval_id"] for p in record["pending_approvals"]] == [aid], record
    assert [p["approval_id"] for p in listed] == [aid]
    assert decided.status_code == 200, decided.text
    assert decided.json() == {"approval_id": aid, "decision": "approve"}
    assert latency < 5, latency
    assert (resolved.data["approval_id"], resolved.data["decision"]) == (aid, "approve")
    assert again.status_code == 409, again.text
    assert error_type(again) == "approval_already_decided"
    assert after_end.status_code == 409, after_end.text
    assert error_type(after_end) == "approval_already_decided"

    assert end.type == "run.completed", end.data
    assert note.read_text() == f"content {m}"
    assert len(on_b.of_type("approval.resolved")) == 1, on_b.types
    assert len(replay_a.of_type("approval.resolved")) == 1, replay_a.types
    assert replay_a.raw == on_b.raw  # B followed from the start: the stored run, byte for byte
    (result,) = on_b.of_type("tool.result")
    assert result.data["outcome"] == "success"
    assert final["status"] == "succeeded" and final["pending_approvals"] == [], final


# ---- 3. cancelling across replicas -----------------------------------------------------------


async def test_a_cancel_on_another_replica_ends_the_run_everywhere(
    clients: list[httpx.AsyncClient], fake_openai: FakeOpenAIServer
) -> None:
    a, b, c = clients
    m = marker()
    text = f"cancel {m} " + " ".join(f"w{i}" for i in range(400))  # ~20 s on fake-slow
    with anyio.fail_after(30):
        run_id = await start_background(a, "g_slow", {"input": text})
        async with events_of(a, run_id) as on_a, events_of(c, run_id) as on_c:
            await on_a.until("text.delta")
            await on_c.until("text.delta")
            asked_at = time.monotonic()
            cancelled = await b.post(f"/runs/{run_id}/cancel")
            took = time.monotonic() - asked_at
            end_a = await on_a.finish()
            end_c = await on_c.finish()
        again = await c.post(f"/runs/{run_id}/cancel")
        records = [(await client.get(f"/runs/{run_id}")).json() for client in clients]

        async def model_request_closed() -> bool:
            log = await afake_log(fake_openai.url)
            return any(m in entry["text"] for entry in log["closed_early"])

        await eventually(model_request_closed, within=5, what="the model request to close")

    print(f"\ncancel on r1 of a run on r0 answered in {took * 1000:.1f} ms")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"run_id": run_id, "status": "cancelled"}
    assert end_a.type == end_c.type == "run.cancelled"
    assert on_c.raw == on_a.raw
    assert len(on_a.of_type("text.delta")) < 400  # it did not run to its end
    assert again.status_code == 409, again.text
    assert error_type(again) == "run_already_ended"
    for name, record in zip(NAMES, records, strict=True):
        assert record["status"] == "cancelled", (name, record)
        assert record["replica"] == "r0" and record["events"] == end_a.seq, (name, record)


async def test_an_unknown_run_is_404_on_every_replica(clients: list[httpx.AsyncClient]) -> None:
    unknown = f"no-such-run-{marker()}"
    with anyio.fail_after(20):
        for name, client in zip(NAMES, clients, strict=True):
            answers = {
                "record": await client.get(f"/runs/{unknown}"),
                "events": await client.get(f"/runs/{unknown}/events", headers=SSE),
                "cancel": await client.post(f"/runs/{unknown}/cancel"),
                "approvals": await client.get(f"/runs/{unknown}/approvals"),
                "decide": await client.post(
                    f"/runs/{unknown}/approvals/a1", json={"decision": "approve"}
                ),
            }
            for what, resp in answers.items():
                assert resp.status_code == 404, (name, what, resp.text)
                assert error_type(resp) == "run_not_found", (name, what, resp.text)


# ---- 4. listing ------------------------------------------------------------------------------


async def test_every_replica_lists_the_runs_started_on_the_others(
    clients: list[httpx.AsyncClient],
) -> None:
    m = marker()
    with anyio.fail_after(30):
        started = {}
        for name, client in zip(NAMES, clients, strict=True):
            resp = await client.post(
                "/workers/plain/run", json={"input": f"list {m} {name}", "model": "echo"}
            )
            assert resp.status_code == 200, resp.text
            assert resp.json()["status"] == "succeeded", resp.text
            started[resp.json()["run_id"]] = name
        # One run still going on A: the others list it as running.
        live_id = await start_background(
            clients[0], "g_slow", {"input": f"live {m} " + " ".join(["x"] * 400)}
        )
        live_views = [
            (await client.get("/runs", params={"status": "running", "limit": 500})).json()["runs"]
            for client in clients
        ]
        cancelled = await clients[1].post(f"/runs/{live_id}/cancel")
        listings = [
            (await client.get("/runs", params={"limit": 500})).json()["runs"] for client in clients
        ]

    assert cancelled.status_code == 200, cancelled.text
    for name, view in zip(NAMES, live_views, strict=True):
        assert [(r["run_id"], r["replica"]) for r in view if r["run_id"] == live_id] == [
            (live_id, "r0")
        ], name
    for name, runs in zip(NAMES, listings, strict=True):
        by_id = {r["run_id"]: r for r in runs}
        assert set(started) <= set(by_id), (name, started, list(by_id))
        for run_id, owner in started.items():
            assert by_id[run_id]["replica"] == owner, (name, by_id[run_id])
            assert by_id[run_id]["status"] == "succeeded", (name, by_id[run_id])
        assert by_id[live_id]["status"] == "cancelled", (name, by_id[live_id])
    # Nothing is going on now: every replica lists the same runs, the same way, in one order.
    assert listings[1] == listings[0] and listings[2] == listings[0]


# ---- 5. many streamed runs on three replicas -------------------------------------------------


async def test_many_concurrent_streamed_runs_over_three_replicas(
    clients: list[httpx.AsyncClient],
) -> None:
    m = marker()
    inputs = [f"run {i} of {m} a b c d e" for i in range(CONCURRENT_RUNS)]
    started_at = time.monotonic()
    with anyio.fail_after(120):
        runs: list[StreamedRun] = await asyncio.gather(
            *(
                stream_run(clients[i % 3], "plain", {"input": text, "model": "echo"})
                for i, text in enumerate(inputs)
            )
        )
        streamed_s = time.monotonic() - started_at

        async def record_elsewhere(i: int, run: StreamedRun) -> dict[str, Any]:
            resp = await clients[(i + 1) % 3].get(f"/runs/{run.run_id}")
            assert resp.status_code == 200, resp.text
            return resp.json()

        records = await asyncio.gather(*(record_elsewhere(i, r) for i, r in enumerate(runs)))
        records_s = time.monotonic() - started_at - streamed_s
    print(
        f"\n{CONCURRENT_RUNS} streamed runs over 3 replicas: {streamed_s:.2f} s; "
        f"their records read from another replica: {records_s:.2f} s"
    )

    assert len({r.run_id for r in runs}) == CONCURRENT_RUNS
    failures = []
    for i, (run, text, record) in enumerate(zip(runs, inputs, records, strict=True)):
        try:
            check_stream(run)  # a valid SSE stream, ids 1..N, one terminal event, last
            assert run.terminal["type"] == "run.completed", run.terminal
            assert run.terminal["output"] == text
            assert record["status"] == "succeeded", record
            assert record["replica"] == NAMES[i % 3], record
            assert record["events"] == len(run.events), record
            assert record["output"] == text, record
        except AssertionError as exc:
            failures.append((i, run.status_code, str(exc)[:300]))
    assert not failures, f"{len(failures)} of {CONCURRENT_RUNS} runs went wrong: {failures[:5]}"
