"""A crash (SIGKILL, so no shutdown code runs) and a restart on the same data folder: the run
that was in flight is `interrupted`, its stored events replay gap-free and end with
`run.failed` of type `interrupted`; a finished run is intact, byte for byte (http-api.md: "a
run that was in flight when the process stopped is `interrupted` after it, never left
`running`"). test_shutdown.py covers the graceful stop (SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from e2e_support import SSE, TERMINAL, WORKERS, Service, eventually, run_service

from tests.fakes.fake_openai import FakeOpenAIServer

RETRY = b"retry: 1000\n\n"


@dataclass
class Crash:
    data_dir: Path
    finished_id: str = ""
    finished_live: bytes = b""  # the finished run's live SSE body, as its client received it
    inflight_id: str = ""
    inflight_seen: list[bytes] = field(default_factory=list)  # data lines a follower received
    inflight_text: str = ""
    after: dict[str, Any] = field(default_factory=dict)  # what the restarted service answers
    restarted_output: str = ""
    output_before_probes: str = ""  # the restarted service's log before the edge-case probes
    probes: dict[str, tuple[int | None, bytes]] = field(default_factory=dict)


def stored_max_seq(db: Path, run_id: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT MAX(last_seq) FROM event_chunks WHERE run_id = ?", (run_id,)
        ).fetchone()
    return row[0] or 0


async def _before_the_crash(svc: Service, crash: Crash) -> None:
    marker = uuid.uuid4().hex[:8]
    with anyio.fail_after(30):
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as client:
            body = {"input": f"finished {marker} one two three"}
            async with client.stream("POST", "/workers/plain/run", json=body, headers=SSE) as r:
                assert r.status_code == 200
                crash.finished_id = r.headers["x-run-id"]
                crash.finished_live = b"".join([c async for c in r.aiter_bytes()])

            crash.inflight_text = f"inflight {marker} " + " ".join(f"w{i}" for i in range(400))
            body = {"input": crash.inflight_text, "model": "openai-chat:fake-slow"}
            resp = await client.post("/workers/plain/run", json={**body, "background": True})
            assert resp.status_code == 202, resp.text
            crash.inflight_id = resp.json()["run_id"]
            url = f"/runs/{crash.inflight_id}/events"
            async with client.stream("GET", url, headers=SSE) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        crash.inflight_seen.append(line.encode())
                    if len(crash.inflight_seen) == 8:
                        break

    # Crash only once what the follower saw is committed (the writer batches within ms), so
    # the assertions below can demand all of it back.
    db = crash.data_dir / "runs.sqlite3"
    seen = len(crash.inflight_seen)

    async def committed() -> bool:
        return await anyio.to_thread.run_sync(stored_max_seq, db, crash.inflight_id) >= seen

    await eventually(committed, within=10, what="the seen events to be committed")
    os.kill(svc.proc.pid, signal.SIGKILL)
    await anyio.to_thread.run_sync(svc.proc.wait, 10)


def _after_the_restart(svc: Service, crash: Crash) -> None:
    with httpx.Client(base_url=svc.url, timeout=10) as client:
        for run_id in (crash.finished_id, crash.inflight_id):
            crash.after[run_id] = {
                "record": client.get(f"/runs/{run_id}").json(),
                "replay": client.get(f"/runs/{run_id}/events", headers=SSE).content,
                "cancel": client.post(f"/runs/{run_id}/cancel"),
            }
        fresh = client.post("/workers/plain/run", json={"input": "after the restart"})
        crash.restarted_output = fresh.json()["output"]
        crash.after["listed"] = client.get("/runs", params={"limit": 3}).json()["runs"]
        crash.after["interrupted"] = client.get("/runs", params={"status": "interrupted"}).json()
        crash.output_before_probes = svc.output()
        _probe_resume_ids(client, crash)


def _probe_resume_ids(client: httpx.Client, crash: Crash) -> None:
    """Odd resume ids on a run replayed from the store (no longer in memory after a restart).
    Last, as some of them currently make the server log a traceback."""
    url = f"/runs/{crash.finished_id}/events"
    probes: dict[str, dict[str, Any]] = {
        "max_header": {"headers": {"Last-Event-ID": str(2**63 - 1)}},
        "huge_header": {"headers": {"Last-Event-ID": str(2**63)}},
        "huge_query": {"params": {"after": 2**63}},
        "non_ascii_digit": {"headers": [(b"Last-Event-ID", "\u00b2".encode("latin-1"))]},
    }
    for name, kwargs in probes.items():
        try:
            resp = client.get(url, **kwargs)
            crash.probes[name] = (resp.status_code, resp.content)
        except httpx.TransportError as exc:  # the stream was cut
            crash.probes[name] = (None, repr(exc).encode())


@pytest.fixture(scope="module")
def crash(
    fake_openai: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Crash]:
    out = Crash(tmp_path_factory.mktemp("llm-do-crash"))
    with run_service(
        workers=WORKERS, data_dir=out.data_dir, fake_base_url=fake_openai.base_url
    ) as svc:
        anyio.run(_before_the_crash, svc, out)
        assert svc.proc.returncode == -signal.SIGKILL
    with run_service(
        workers=WORKERS, data_dir=out.data_dir, fake_base_url=fake_openai.base_url
    ) as svc:
        _after_the_restart(svc, out)
    assert "Traceback" not in out.output_before_probes, out.output_before_probes
    yield out


def data_lines(body: bytes) -> list[bytes]:
    return [line for line in body.split(b"\n") if line.startswith(b"data:")]


def test_the_run_in_flight_is_interrupted_after_a_crash(crash: Crash) -> None:
    after = crash.after[crash.inflight_id]
    record = after["record"]
    assert record["status"] == "interrupted", record
    assert record["error"]["type"] == "interrupted"
    assert record["finished_at"] is not None and record["output"] is None
    assert after["cancel"].status_code == 409
    assert after["cancel"].json()["error"]["type"] == "run_already_ended"
    interrupted = [r["run_id"] for r in crash.after["interrupted"]["runs"]]
    assert interrupted == [crash.inflight_id]


def test_its_events_up_to_the_crash_replay_gap_free(crash: Crash) -> None:
    replay: bytes = crash.after[crash.inflight_id]["replay"]
    assert replay.startswith(RETRY)
    lines = data_lines(replay)
    events = [json.loads(line[5:]) for line in lines]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["type"] in TERMINAL for e in events) == 1
    last = events[-1]
    assert last["type"] == "run.failed" and last["error"]["type"] == "interrupted"
    assert (last["run_id"], last["call_id"], last["worker"]) == (
        crash.inflight_id,
        crash.inflight_id,
        "plain",
    )
    # Everything its follower received before the crash comes back, byte for byte.
    seen = crash.inflight_seen
    assert lines[: len(seen)] == seen
    assert len(events) - 1 < 2 + 400 + 3  # it was cut off long before the model finished
    assert crash.after[crash.inflight_id]["record"]["events"] == len(events)


def test_the_finished_run_is_intact_after_a_crash(crash: Crash) -> None:
    after = crash.after[crash.finished_id]
    record = after["record"]
    live_events = [json.loads(line[5:]) for line in data_lines(crash.finished_live)]
    assert record["status"] == "succeeded"
    assert record["output"] == live_events[-1]["output"]
    assert record["events"] == len(live_events)
    assert after["replay"] == RETRY + crash.finished_live  # same frames, same bytes
    assert after["cancel"].status_code == 409


def test_the_restarted_service_serves_new_runs(crash: Crash) -> None:
    assert crash.restarted_output == "after the restart"
    listed = crash.after["listed"]
    assert [r["run_id"] for r in listed[1:]] == [crash.inflight_id, crash.finished_id]
    assert listed[0]["status"] == "succeeded"


def test_the_interrupted_run_keeps_its_started_at(crash: Crash) -> None:
    record = crash.after[crash.inflight_id]["record"]
    assert record["started_at"] is not None
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]


def test_a_resume_id_at_the_sqlite_integer_limit_replays_nothing(crash: Crash) -> None:
    assert crash.probes["max_header"] == (200, RETRY)


@pytest.mark.parametrize("probe", ["huge_header", "huge_query"])
def test_a_resume_id_beyond_any_event_replays_nothing(crash: Crash, probe: str) -> None:
    status, body = crash.probes[probe]
    assert status in (200, 422), body
    if status == 200:
        assert body == RETRY


def test_a_non_ascii_digit_last_event_id_is_422(crash: Crash) -> None:
    status, body = crash.probes["non_ascii_digit"]
    assert status == 422, body
