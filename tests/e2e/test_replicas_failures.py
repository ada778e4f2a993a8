"""Several replicas when something fails (docs/replicas.md, "When something fails"):

1. the replica that owns a run is SIGKILLed mid-run: a survivor ends the run `interrupted`
   within LLM_DO_LEASE_S, after the events the dead owner had already published, and every
   replica replays the same gap-free run; an owner frozen past the lease (SIGSTOP) that
   then finishes the run changes nothing stored; a replica stopped with SIGTERM finishes its
   short runs and ends the others itself, and followers elsewhere see both;
2. the bus (a Redis server of the test's own) restarts mid-run: the run completes, the
   followers on all three replicas get every event once, and cross-replica control works
   again afterwards;
3. the store (a PostgreSQL cluster of the test's own) goes away mid-run: the run fails with
   the typed `store_unavailable`, new runs get 503, and once the cluster is back the failed
   run's record and events reach it and new runs start again.

Every process these tests start (replicas, redis-server, the PostgreSQL cluster) is stopped by
its PID (pg_ctl stops the cluster through its postmaster.pid); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from tests.e2e.e2e_support import (
    SSE,
    TERMINAL,
    WORKERS,
    Service,
    eventually,
    free_port,
)
from tests.e2e.replicas_support import postgres_schema, redis_bus_url, redis_server, replicas
from tests.fakes.fake_openai import FakeOpenAIServer
from tests.servers import missing

LEASE_S = 4  # LLM_DO_LEASE_S of these tests: a dead owner's runs end within it
RETRY = b"retry: 1000\n\n"
TIMEOUT = httpx.Timeout(10, read=30)  # a follower may hear nothing for a lease


def words(n: int, tag: str) -> str:
    """An input g_slow (the fake's `fake-slow`: one word every ~50 ms) echoes for n/20 s."""
    return f"{tag} " + " ".join(f"w{i}" for i in range(n))


async def start_slow(client: httpx.AsyncClient, svc: Service, n: int, tag: str) -> str:
    """A background g_slow run of `words(n, tag)` on `svc`; its id."""
    body = {"input": words(n, tag), "background": True}
    resp = await client.post(f"{svc.url}/workers/g_slow/run", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()["run_id"]


def frames_of(body: bytes) -> list[bytes]:
    """The event frames of an SSE body, as sent (the retry hint and `: ping`s left out)."""
    return [part + b"\n\n" for part in body.split(b"\n\n") if part.startswith(b"id: ")]


def data_of(frame: bytes) -> dict[str, Any]:
    line = next(ln for ln in frame.split(b"\n") if ln.startswith(b"data: "))
    return json.loads(line[6:])


def logs(*services: Service) -> str:
    return "\n".join(f"----- {s.url} -----\n{s.output()}" for s in services)


# ---- one SSE client ----------------------------------------------------------------------------


@dataclass
class Follower:
    """One client reading one SSE response: each event frame it got (bytes as sent), when it
    got it, and its data. Others wait on it with `until` (bounded)."""

    name: str
    status: int | None = None
    headers: httpx.Headers | None = None
    frames: list[bytes] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    error: str | None = None
    done: bool = False
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def read(self, client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> None:
        try:
            async with client.stream(method, url, headers=SSE, **kw) as resp:
                self.status, self.headers = resp.status_code, resp.headers
                self._notify()
                buffer = b""
                async for chunk in resp.aiter_bytes():
                    buffer += chunk
                    *parts, buffer = buffer.split(b"\n\n")
                    for frame in frames_of(b"\n\n".join(parts) + b"\n\n" if parts else b""):
                        self.frames.append(frame)
                        self.events.append(data_of(frame))
                        self.times.append(time.monotonic())
                    self._notify()
        except httpx.TransportError as exc:
            self.error = repr(exc)
        finally:
            self.done = True
            self._notify()

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1]["type"] in TERMINAL

    def count(self, type_: str) -> int:
        return sum(e["type"] == type_ for e in self.events)

    async def until(self, check: Callable[[], bool], *, within: float, what: str) -> None:
        with anyio.move_on_after(within):
            while not check() and not self.done:
                await self._changed.wait()
        if not check():
            seen = [e["type"] for e in self.events][-5:]
            raise AssertionError(
                f"{self.name}: no {what} within {within} s (stream done={self.done}, "
                f"error={self.error}, {len(self.events)} events, last {seen})"
            )


def on_replicas(
    count: int,
    scenario: Callable[..., Any],
    out: Any,
    fake_openai: FakeOpenAIServer,
    tmp_path: Path,
    **env: str,
) -> str:
    """Run `await scenario(*replicas, out)` on `count` replicas sharing a fresh PostgreSQL
    schema and Redis prefix; print every replica's log if it fails. Returns their logs."""
    with (
        postgres_schema() as store_url,
        replicas(
            count,
            workers=WORKERS,
            tmp_path=tmp_path,
            fake_base_url=fake_openai.base_url,
            store_url=store_url,
            bus_url=redis_bus_url(),
            **env,
        ) as services,
    ):
        try:
            anyio.run(scenario, *services, out)
        except BaseException:
            print(logs(*services), out)
            raise
        return logs(*services)


def check_gap_free(frames: list[bytes]) -> list[dict[str, Any]]:
    events = [data_of(f) for f in frames]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["type"] in TERMINAL for e in events) == 1, [e["type"] for e in events]
    assert events[-1]["type"] in TERMINAL
    return events


# ---- 1. the owner is SIGKILLed mid-run ---------------------------------------------------------


@dataclass
class Kill:
    run_id: str = ""
    follower: Follower | None = None
    seen_before_kill: list[bytes] = field(default_factory=list)
    last_seq_before_kill: int = 0
    elapsed: float = 0.0  # SIGKILL -> the follower on B got the terminal event
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    replays: dict[str, bytes] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)


async def _kill_the_owner(a: Service, b: Service, c: Service, out: Kill) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client, anyio.create_task_group() as tg:
        with anyio.fail_after(30):
            out.run_id = run_id = await start_slow(client, a, 600, "killed")  # ~30 s of text
            out.follower = follower = Follower("B")
            tg.start_soon(follower.read, client, "GET", f"{b.url}/runs/{run_id}/events")
            await follower.until(
                lambda: follower.count("text.delta") >= 5, within=15, what="5 text.delta"
            )
            out.seen_before_kill = list(follower.frames)
            out.last_seq_before_kill = follower.events[-1]["seq"]
            a.proc.kill()  # SIGKILL: no shutdown code runs on A
            killed_at = time.monotonic()
            await anyio.to_thread.run_sync(a.proc.wait, 10)
            assert a.proc.returncode == -signal.SIGKILL

        await follower.until(lambda: follower.ended, within=LEASE_S + 20, what="terminal event")
        out.elapsed = follower.times[-1] - killed_at

    with anyio.fail_after(30):
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            for name, svc in (("B", b), ("C", c)):
                out.records[name] = (await client.get(f"{svc.url}/runs/{run_id}")).json()
                replay = await client.get(f"{svc.url}/runs/{run_id}/events", headers=SSE)
                assert replay.status_code == 200, replay.text
                out.replays[name] = replay.content
            # The survivors go on: a new run on B, followed from C.
            new = Follower("new run on B")
            body = {"input": "after the kill one two three"}
            await new.read(client, "POST", f"{b.url}/workers/g_slow/run", json=body)
            replay = await client.get(f"{c.url}/runs/{new.headers['x-run-id']}/events")
            out.after = {"stream": new, "record_on_c": replay.content}


def test_a_killed_owners_run_is_interrupted_by_a_survivor_within_the_lease(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    out = Kill()
    output = on_replicas(
        3, _kill_the_owner, out, fake_openai, tmp_path, LLM_DO_LEASE_S=str(LEASE_S)
    )
    print(f"\nSIGKILL of the owner -> run.failed interrupted on B's follower: {out.elapsed:.2f} s")

    # B's follower saw the whole run, once, in order, ending `interrupted`.
    follower = out.follower
    assert follower is not None and follower.error is None, follower
    assert follower.frames[: len(out.seen_before_kill)] == out.seen_before_kill
    events = check_gap_free(follower.frames)
    terminal = events[-1]
    assert terminal["type"] == "run.failed", terminal
    assert terminal["error"]["type"] == "interrupted", terminal
    assert (terminal["run_id"], terminal["worker"]) == (out.run_id, "g_slow")
    assert terminal["seq"] > out.last_seq_before_kill
    assert terminal["seq"] == events[-2]["seq"] + 1
    assert out.elapsed <= LEASE_S + 1, f"{out.elapsed:.2f} s from SIGKILL to interrupted"

    # Every survivor says so, and replays the same bytes: what B's follower got.
    for name in ("B", "C"):
        record = out.records[name]
        assert record["status"] == "interrupted", (name, record)
        assert record["error"]["type"] == "interrupted", (name, record)
        assert record["events"] == len(events), (name, record)
    assert out.replays["B"] == out.replays["C"]
    assert out.replays["B"].startswith(RETRY)
    assert frames_of(out.replays["B"]) == follower.frames

    # ...and serve new runs.
    new: Follower = out.after["stream"]
    assert new.status == 200 and new.error is None, new
    assert new.events[-1]["type"] == "run.completed", new.events[-1]
    assert new.events[-1]["output"] == "after the kill one two three"
    assert frames_of(out.after["record_on_c"]) == new.frames
    assert "Traceback" not in output, output


# ---- 1b. the owner freezes for longer than the lease, then goes on -------------------------------


@dataclass
class Freeze:
    run_id: str = ""
    follower: Follower | None = None
    local: Follower | None = None  # a follower on the frozen owner itself
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    replays: dict[str, bytes] = field(default_factory=dict)


async def _freeze_the_owner(a: Service, b: Service, out: Freeze) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client, anyio.create_task_group() as tg:
        with anyio.fail_after(60):
            out.run_id = run_id = await start_slow(client, a, 400, "frozen")  # ~20 s of text
            out.follower = follower = Follower("B")
            out.local = local = Follower("A")
            tg.start_soon(follower.read, client, "GET", f"{b.url}/runs/{run_id}/events")
            tg.start_soon(local.read, client, "GET", f"{a.url}/runs/{run_id}/events")
            await follower.until(
                lambda: follower.count("text.delta") >= 5, within=15, what="5 text.delta"
            )
            os.kill(a.proc.pid, signal.SIGSTOP)  # A's loop stops: no heartbeat, no events
            try:
                await follower.until(
                    lambda: follower.ended, within=LEASE_S + 20, what="terminal event"
                )
            finally:
                os.kill(a.proc.pid, signal.SIGCONT)
            # A wakes up, finds the run ended by B, and stops it too.
            await local.until(lambda: local.ended, within=15, what="A's own end of the run")

    async def settled() -> bool:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            for name, svc in (("A", a), ("B", b)):
                out.records[name] = (await client.get(f"{svc.url}/runs/{out.run_id}")).json()
                replay = await client.get(f"{svc.url}/runs/{out.run_id}/events", headers=SSE)
                out.replays[name] = replay.content
        return all(r.get("status") == "interrupted" for r in out.records.values())

    await eventually(settled, within=15, what="the run to read as interrupted on A and B")


def test_a_frozen_owner_that_lost_its_lease_cannot_rewrite_the_run(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A replica whose loop stalls past the lease (SIGSTOP here; a blocking tool or a network
    cut in life) is taken for dead: B ends its run `interrupted`. When A wakes up it stops the
    run rather than spend the rest of it, and nothing it wrote meanwhile changes the stored
    run: every replica replays exactly what B's follower got, ending with B's `interrupted`."""
    out = Freeze()
    on_replicas(2, _freeze_the_owner, out, fake_openai, tmp_path, LLM_DO_LEASE_S=str(LEASE_S))

    follower = out.follower
    assert follower is not None and follower.error is None, follower
    events = check_gap_free(follower.frames)
    assert events[-1]["type"] == "run.failed", events[-1]
    assert events[-1]["error"]["type"] == "interrupted", events[-1]
    # A's own follower saw A's end of it (past B's end: documented in docs/replicas.md)...
    assert out.local is not None and out.local.ended
    local = check_gap_free(out.local.frames)
    assert local[-1]["type"] == "run.failed", local[-1]
    assert local[-1]["error"]["type"] == "interrupted", local[-1]
    assert "out of reach for longer than its lease" in local[-1]["error"]["message"], local[-1]
    assert out.local.count("text.delta") < 400, "A ran the whole run after it was reaped"
    # ...but the stored run is B's: same record and same bytes on both replicas.
    for name in ("A", "B"):
        record = out.records[name]
        assert record["status"] == "interrupted", (name, record)
        assert record["events"] == len(events), (name, record)
        assert frames_of(out.replays[name]) == follower.frames, name


# ---- 1c. a replica is stopped (SIGTERM: an update, a scale-down) --------------------------------

GRACE_S = 3  # LLM_DO_SHUTDOWN_GRACE_S of this test


@dataclass
class Stop:
    long: Follower | None = None  # a run that outlasts the grace, followed on B
    short: Follower | None = None  # a run that ends within it, followed on B
    run_ids: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0  # SIGTERM -> the long run's terminal event on B
    exit_code: int | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    replays: dict[str, bytes] = field(default_factory=dict)
    after: Follower | None = None


async def _stop_the_owner(a: Service, b: Service, out: Stop) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client, anyio.create_task_group() as tg:
        with anyio.fail_after(60):
            for name, n in (("long", 600), ("short", 10)):  # ~30 s and ~0.5 s of text
                out.run_ids[name] = run_id = await start_slow(client, a, n, name)
                follower = Follower(f"{name} run on B")
                setattr(out, name, follower)
                tg.start_soon(follower.read, client, "GET", f"{b.url}/runs/{run_id}/events")
            assert out.long is not None and out.short is not None
            long, short = out.long, out.short
            await long.until(lambda: long.count("text.delta") >= 3, within=15, what="3 deltas")
            a.proc.terminate()  # what `docker compose stop` and a rolling update send
            stopped_at = time.monotonic()
            await long.until(lambda: long.ended, within=GRACE_S + 15, what="terminal event")
            out.elapsed = long.times[-1] - stopped_at
            await short.until(lambda: short.ended, within=15, what="terminal event")
            out.exit_code = await anyio.to_thread.run_sync(a.proc.wait, 20)

        with anyio.fail_after(30):
            for name, run_id in out.run_ids.items():
                out.records[name] = (await client.get(f"{b.url}/runs/{run_id}")).json()
                replay = await client.get(f"{b.url}/runs/{run_id}/events", headers=SSE)
                out.replays[name] = replay.content
            out.after = Follower("new run on B")
            body = {"input": "after the stop one two"}
            await out.after.read(client, "POST", f"{b.url}/workers/g_slow/run", json=body)


def test_a_stopped_replica_finishes_what_it_can_and_ends_the_rest_for_every_follower(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    """SIGTERM (a rolling update): the stopping replica gives its runs
    LLM_DO_SHUTDOWN_GRACE_S to finish, ends the others `interrupted` itself (no lease wait),
    and followers on the other replicas get both ends live; the other replica goes on."""
    out = Stop()
    output = on_replicas(
        2,
        _stop_the_owner,
        out,
        fake_openai,
        tmp_path,
        LLM_DO_LEASE_S="30",  # a lease wait would show as a 30 s gap
        LLM_DO_SHUTDOWN_GRACE_S=str(GRACE_S),
    )
    print(f"\nSIGTERM of the owner -> run.failed interrupted on B's follower: {out.elapsed:.2f} s")

    # uvicorn ends a clean shutdown by re-raising the signal it got, as a shell expects
    assert out.exit_code == -signal.SIGTERM, output
    assert out.short is not None and out.long is not None
    short = check_gap_free(out.short.frames)
    assert short[-1]["type"] == "run.completed", short[-1]
    assert short[-1]["output"] == words(10, "short")
    long = check_gap_free(out.long.frames)
    assert long[-1]["type"] == "run.failed", long[-1]
    assert long[-1]["error"]["type"] == "interrupted", long[-1]
    assert "shutting down" in long[-1]["error"]["message"], long[-1]
    assert GRACE_S - 0.5 <= out.elapsed <= GRACE_S + 5, f"{out.elapsed:.2f} s"
    for name, frames in (("short", out.short.frames), ("long", out.long.frames)):
        assert out.records[name]["status"] == ("succeeded" if name == "short" else "interrupted")
        assert frames_of(out.replays[name]) == frames, name
    assert out.after is not None and out.after.status == 200, out.after
    assert out.after.events[-1]["type"] == "run.completed", out.after.events[-1]
    assert "Traceback" not in output, output


# ---- 2. Redis restarts mid-run -----------------------------------------------------------------


@dataclass
class Restart:
    run_id: str = ""
    followers: dict[str, Follower] = field(default_factory=dict)
    frames_at_stop: int = 0  # on A's stream
    frames_at_start: int = 0
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    replay: bytes = b""
    cancel: httpx.Response | None = None
    cancelled_record: dict[str, Any] = field(default_factory=dict)


async def _restart_redis(a: Service, b: Service, c: Service, redis: Any, out: Restart) -> None:
    limits = httpx.Limits(max_connections=20)
    async with (
        httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as client,
        anyio.create_task_group() as tg,
    ):
        with anyio.fail_after(20):
            fa = out.followers["A"] = Follower("A (streamed POST)")
            body = {"input": words(240, "restart")}  # ~12 s of text
            tg.start_soon(
                partial(fa.read, client, "POST", f"{a.url}/workers/g_slow/run", json=body)
            )
            await fa.until(lambda: fa.headers is not None, within=10, what="headers")
            assert fa.status == 200 and fa.headers is not None, fa
            out.run_id = run_id = fa.headers["x-run-id"]
            for name, svc in (("B", b), ("C", c)):
                f = out.followers[name] = Follower(name)
                tg.start_soon(f.read, client, "GET", f"{svc.url}/runs/{run_id}/events")
            for f in out.followers.values():
                await f.until(
                    lambda f=f: f.count("text.delta") >= 3, within=10, what="3 text.delta"
                )

            await anyio.to_thread.run_sync(redis.stop)
            out.frames_at_stop = n = len(fa.frames)
            # The owner's own client keeps getting events (through the store).
            await fa.until(
                lambda: len(fa.frames) >= n + 5, within=10, what="5 events without Redis"
            )
            out.frames_at_start = len(fa.frames)
            await anyio.to_thread.run_sync(redis.start)

        with anyio.fail_after(45):
            for f in out.followers.values():
                await f.until(lambda f=f: f.ended, within=45, what="terminal event")

    with anyio.fail_after(30):
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            for name, svc in (("A", a), ("B", b), ("C", c)):
                out.records[name] = (await client.get(f"{svc.url}/runs/{run_id}")).json()
            out.replay = (await client.get(f"{a.url}/runs/{run_id}/events")).content
            # Control requests cross replicas again: a run on B, cancelled through C.
            body = {"input": words(400, "cancel me"), "background": True}
            resp = await client.post(f"{b.url}/workers/g_slow/run", json=body)
            assert resp.status_code == 202, resp.text
            other = resp.json()["run_id"]
            out.cancel = await client.post(f"{c.url}/runs/{other}/cancel")
            out.cancelled_record = (await client.get(f"{a.url}/runs/{other}")).json()


def test_a_redis_restart_mid_run_loses_no_event_on_any_replica(
    fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    out = Restart()
    with (
        postgres_schema() as store_url,
        redis_server(tmp_path / "redis") as redis,
        replicas(
            3,
            workers=WORKERS,
            tmp_path=tmp_path,
            fake_base_url=fake_openai.base_url,
            store_url=store_url,
            bus_url=redis.url,
            LLM_DO_LEASE_S=str(LEASE_S),  # short, so a false "dead replica" would show
        ) as (a, b, c),
    ):
        try:
            anyio.run(_restart_redis, a, b, c, redis, out)
        except BaseException:
            print(logs(a, b, c))
            raise
        output = logs(a, b, c)

    frames = {name: f.frames for name, f in out.followers.items()}
    for name, f in out.followers.items():
        assert f.status == 200 and f.error is None, (name, f.error, output)
    assert out.frames_at_start >= out.frames_at_stop + 5
    events = check_gap_free(frames["A"])
    assert events[-1]["type"] == "run.completed", (events[-1], output)
    assert events[-1]["output"] == words(240, "restart")
    assert frames["B"] == frames["A"], output
    assert frames["C"] == frames["A"], output
    assert frames_of(out.replay) == frames["A"]
    for name, record in out.records.items():
        assert record["status"] == "succeeded", (name, record)
        assert record["events"] == len(events), (name, record)

    assert out.cancel is not None
    assert out.cancel.status_code == 200, (out.cancel.text, output)
    assert out.cancel.json()["status"] == "cancelled"
    assert out.cancelled_record["status"] == "cancelled", out.cancelled_record
    assert "Traceback" not in output, output


# ---- 3. PostgreSQL cannot be written ----------------------------------------------------------


class PostgresCluster:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl, trust auth) on a free port.

    PostgreSQL refuses to run as root, so as root its commands run as the `postgres` user,
    in a directory of its own under the system temp dir: pytest's tmp_path sits in a 0700
    directory of root's that the postgres user cannot enter."""

    def __init__(self) -> None:
        found = sorted(
            glob.glob("/usr/lib/postgresql/*/bin/initdb"),
            key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
        )
        if not found and shutil.which("initdb") is None:
            missing("initdb/pg_ctl are not installed (Debian package postgresql)")
        self.bin = Path(found[-1]).parent if found else Path(shutil.which("initdb") or "").parent
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="llm-do-pg-"))
        self.data = self.root / "data"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root)
                missing("running as root and there is no `postgres` user to run initdb as")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            runuser = shutil.which("runuser")
            self.prefix = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres"]

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / tool), *args]
        if self.prefix[:1] == ["su"]:
            cmd = [*self.prefix, "-c", " ".join(f"'{part}'" for part in cmd)]
        else:
            cmd = [*self.prefix, *cmd]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root
        )

    def init(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                         "--no-sync", "-E", "UTF8")  # fmt: skip
        if done.returncode != 0:
            missing(f"initdb failed here ({' '.join(self.prefix)}): {done.stderr[-500:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"),
                         "-o", options, "-w", "-t", "30", "start")  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr + self.log()

    def stop(self, mode: str = "immediate") -> None:
        done = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")
        assert done.returncode == 0, done.stdout + done.stderr

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.data.exists() and cluster.running():
            cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@dataclass
class Outage:
    stream: Follower | None = None
    run_id: str = ""
    frames_at_stop: int = 0
    elapsed: float = 0.0  # pg_ctl stop -> the stream's terminal event
    refused: httpx.Response | None = None
    health: list[int] = field(default_factory=list)
    record_during: dict[str, Any] = field(default_factory=dict)
    # once the cluster is back
    stored: dict[str, Any] | None = None  # the run's row, read from PostgreSQL itself
    stored_frames: list[bytes] = field(default_factory=list)
    record_after: dict[str, Any] = field(default_factory=dict)
    replay_after: bytes = b""
    new_run: httpx.Response | None = None
    listed: list[dict[str, Any]] = field(default_factory=list)
    log: str = ""


async def _break_the_store(svc: Service, cluster: PostgresCluster, out: Outage) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client, anyio.create_task_group() as tg:
        with anyio.fail_after(20):
            out.stream = stream = Follower("streamed POST")
            body = {"input": words(600, "outage")}  # ~30 s of text
            url = f"{svc.url}/workers/g_slow/run"
            tg.start_soon(partial(stream.read, client, "POST", url, json=body))
            await stream.until(lambda: stream.count("text.delta") >= 5, within=15, what="text")
            assert stream.headers is not None
            out.run_id = stream.headers["x-run-id"]
            stopped_at = time.monotonic()
            await anyio.to_thread.run_sync(cluster.stop)  # pg_ctl stop -m immediate
            out.frames_at_stop = len(stream.frames)
        await stream.until(lambda: stream.ended, within=20, what="terminal event")
        out.elapsed = stream.times[-1] - stopped_at

    with anyio.fail_after(30):
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            body = {"input": "while the store is down"}
            out.refused = await client.post(f"{svc.url}/workers/g_slow/run", json=body)
            for _ in range(3):
                out.health.append((await client.get(f"{svc.url}/healthz")).status_code)
            out.record_during = (await client.get(f"{svc.url}/runs/{out.run_id}")).json()


async def _read_store(url: str, run_id: str) -> tuple[dict[str, Any] | None, list[bytes]]:
    """The run's row and its events, read from PostgreSQL directly (the replica's own answers
    come from its memory while the run is recent, so they cannot tell)."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        row = await conn.fetchrow(
            "SELECT status, error, last_seq FROM runs WHERE run_id=$1", run_id
        )
        chunks = await conn.fetch(
            "SELECT first_seq, types, body FROM event_chunks WHERE run_id=$1 ORDER BY first_seq",
            run_id,
        )
    finally:
        await conn.close()
    frames = []
    for first, types, body in chunks:
        for seq, type_, data in zip(
            range(first, first + 1 + bytes(body).count(b"\n")),
            types.split(","),
            bytes(body).split(b"\n"),
            strict=True,
        ):
            frames.append(b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type_.encode(), data))
    return (dict(row) if row else None), frames


async def _bring_the_store_back(svc: Service, cluster: PostgresCluster, out: Outage) -> None:
    await anyio.to_thread.run_sync(cluster.start)

    async def failed_run_stored() -> bool:
        out.stored, out.stored_frames = await _read_store(cluster.url, out.run_id)
        return bool(out.stored) and out.stored["status"] != "running"

    with contextlib.suppress(AssertionError):  # the tests below say what is missing
        await eventually(failed_run_stored, within=20, what="the failed run to reach the store")
    with anyio.fail_after(30):
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            out.record_after = (await client.get(f"{svc.url}/runs/{out.run_id}")).json()
            out.replay_after = (await client.get(f"{svc.url}/runs/{out.run_id}/events")).content
            body = {"input": "the store is back"}
            out.new_run = await client.post(f"{svc.url}/workers/g_slow/run", json=body)
            out.listed = (await client.get(f"{svc.url}/runs")).json()["runs"]


@pytest.fixture(scope="module")
def outage(
    fake_openai: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outage]:
    out = Outage()
    tmp_path = tmp_path_factory.mktemp("llm-do-store-outage")
    with (
        postgres_cluster() as cluster,
        replicas(
            1,
            workers=WORKERS,
            tmp_path=tmp_path,
            fake_base_url=fake_openai.base_url,
            store_url=cluster.url,
            bus_url=redis_bus_url(),
        ) as (svc,),
    ):
        try:
            anyio.run(_break_the_store, svc, cluster, out)
            anyio.run(_bring_the_store_back, svc, cluster, out)
        except BaseException:
            print(svc.output(), cluster.log())
            raise
        out.log = svc.output()
    yield out


def test_a_store_outage_fails_the_run_with_a_typed_error_and_refuses_new_runs(
    outage: Outage,
) -> None:
    print(f"\npg_ctl stop -> run.failed store_unavailable: {outage.elapsed:.2f} s")
    stream = outage.stream
    assert stream is not None and stream.status == 200 and stream.error is None, stream
    events = check_gap_free(stream.frames)
    terminal = events[-1]
    assert terminal["type"] == "run.failed", terminal
    assert terminal["error"]["type"] == "store_unavailable", terminal
    assert terminal["error"]["message"], terminal
    assert len(events) < 2 + 600, "the run should have been stopped long before its end"
    assert outage.elapsed <= 10, f"{outage.elapsed:.2f} s from the store's stop to run.failed"

    refused = outage.refused
    assert refused is not None
    assert refused.status_code == 503, (refused.status_code, refused.text)
    error = refused.json()["error"]
    assert error["type"] == "store_unavailable", error
    assert error["message"] and "Traceback" not in refused.text, error
    assert outage.health == [200, 200, 200]
    assert outage.record_during["status"] == "failed", outage.record_during


def test_the_failed_run_reaches_the_store_once_it_is_back(outage: Outage) -> None:
    stream = outage.stream
    assert stream is not None
    stored = outage.stored
    assert stored is not None and stored["status"] == "failed", (stored, outage.log)
    assert json.loads(stored["error"])["type"] == "store_unavailable", stored
    # Every event the client saw is stored, byte for byte, ending with the typed failure.
    assert outage.stored_frames == stream.frames
    assert stored["last_seq"] == len(stream.frames)
    # ...and the replica answers the same.
    assert outage.record_after["status"] == "failed", outage.record_after
    assert outage.record_after["error"]["type"] == "store_unavailable"
    assert frames_of(outage.replay_after) == stream.frames


def test_new_runs_start_again_once_the_store_is_back(outage: Outage) -> None:
    new = outage.new_run
    assert new is not None and new.status_code == 200, (new and new.text, outage.log)
    assert new.json()["status"] == "succeeded" and new.json()["output"] == "the store is back"


def test_a_run_refused_with_503_is_never_listed(outage: Outage) -> None:
    """A POST answered 503 started no run: once the store is back, no run of it shows up."""
    inputs = [r.get("input") for r in outage.listed]
    assert "while the store is down" not in inputs, [
        (r["run_id"], r["status"], r.get("input")) for r in outage.listed
    ]
