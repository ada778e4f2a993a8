"""GET /runs/{id}/events over a real socket (http-api.md, "Run records" and "The event stream"):
replay after the end equals the live stream byte for byte, `Last-Event-ID` / `?after=N` resume
exactly after N, a client that drops and reconnects sees every event once, any number of
subscribers get the same bytes, and a subscriber that stops reading never slows the run."""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

import anyio
import httpx
import pytest
from e2e_support import SSE, TERMINAL, Service, eventually, sse_items

pytestmark = pytest.mark.anyio

SLOW = "openai-chat:fake-slow"  # 50 ms between chunks


async def read_body(
    client: httpx.AsyncClient, method: str, url: str, **kw: Any
) -> tuple[httpx.Response, bytes]:
    async with client.stream(method, url, **kw) as resp:
        body = b"".join([chunk async for chunk in resp.aiter_bytes()])
    return resp, body


def data_lines(body: bytes) -> list[bytes]:
    return [line for line in body.split(b"\n") if line.startswith(b"data:")]


def seqs(body: bytes) -> list[int]:
    return [json.loads(line[5:])["seq"] for line in data_lines(body)]


async def start_background(client: httpx.AsyncClient, worker: str, body: dict[str, Any]) -> str:
    resp = await client.post(f"/workers/{worker}/run", json={**body, "background": True})
    assert resp.status_code == 202, resp.text
    return resp.json()["run_id"]


async def wait_ended(client: httpx.AsyncClient, run_id: str, within: float = 15) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        record = (await client.get(f"/runs/{run_id}")).json()
        return record if record["status"] not in ("running", "waiting_approval") else None

    return await eventually(ended, within=within, what=f"run {run_id} to end")


# ---- replay ----------------------------------------------------------------------------------


async def test_replay_after_completion_equals_the_live_stream(service: Service) -> None:
    marker = uuid.uuid4().hex[:8]
    calls = [
        {"tool": "worker_call", "args": {"worker": "summarizer", "input_data": f"{n} {marker} é✓"}}
        for n in ("first", "second")
    ]
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            resp, live = await read_body(
                client,
                "POST",
                "/workers/orchestrator/run",
                json={"input": {"calls": calls}},
                headers=SSE,
            )
            assert resp.status_code == 200
            run_id = resp.headers["x-run-id"]
            resp, replay = await read_body(client, "GET", f"/runs/{run_id}/events", headers=SSE)

    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert replay.startswith(b"retry: 1000\n\n")  # EventSource reconnects with Last-Event-ID
    live_data = data_lines(live)
    assert len(live_data) > 10
    assert data_lines(replay) == live_data
    assert seqs(replay) == list(range(1, len(live_data) + 1))
    # The replayed frames are the live frames: same id, event and data lines, in order.
    assert replay.removeprefix(b"retry: 1000\n\n") == live


async def test_last_event_id_and_after_replay_exactly_the_events_after_k(
    service: Service,
) -> None:
    text = f"resume {uuid.uuid4().hex[:8]} " + " ".join(f"w{i}" for i in range(12))
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            _, live = await read_body(
                client, "POST", "/workers/plain/run", json={"input": text}, headers=SSE
            )
            run_id = json.loads(data_lines(live)[0][5:])["run_id"]
            url = f"/runs/{run_id}/events"
            full = data_lines(live)
            n = len(full)
            for k in (0, 1, 2, n // 2, n - 1, n, n + 5):
                _, by_header = await read_body(
                    client, "GET", url, headers={**SSE, "Last-Event-ID": str(k)}
                )
                _, by_query = await read_body(client, "GET", f"{url}?after={k}", headers=SSE)
                assert data_lines(by_header) == full[k:], k
                assert data_lines(by_query) == full[k:], k
            # An EventSource reconnects to its original URL: the header wins over ?after=.
            _, both = await read_body(
                client, "GET", f"{url}?after=1", headers={**SSE, "Last-Event-ID": str(n - 2)}
            )
            assert data_lines(both) == full[n - 2 :]
            bad = await client.get(url, headers={"Last-Event-ID": "seven"})
            negative = await client.get(f"{url}?after=-1")
    assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_request"
    assert negative.status_code == 422


async def test_a_client_that_drops_and_reconnects_sees_every_event_once(
    service: Service,
) -> None:
    """A background run on fake-slow, followed over three connections: the first two are
    closed after a few events (as a network drop), each reconnect resumes after the last id
    seen, once with `Last-Event-ID` and once with `?after=`."""
    text = f"drop {uuid.uuid4().hex[:8]} " + " ".join(f"w{i}" for i in range(40))
    seen: list[dict[str, Any]] = []
    ids: list[str] = []

    async def follow(client: httpx.AsyncClient, run_id: str, how: str, take: int | None) -> None:
        url, headers = f"/runs/{run_id}/events", dict(SSE)
        if seen and how == "header":
            headers["Last-Event-ID"] = ids[-1]
        elif seen:
            url += f"?after={ids[-1]}"
        async with client.stream("GET", url, headers=headers) as resp:
            assert resp.status_code == 200
            got = 0
            async for item in sse_items(resp):
                if isinstance(item, str):
                    continue
                seen.append(item.data)
                ids.append(item.id or "")
                got += 1
                if take is not None and got == take:
                    return  # leaving the block closes the connection mid-stream

    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            run_id = await start_background(client, "plain", {"input": text, "model": SLOW})
            await follow(client, run_id, "header", take=5)
            await follow(client, run_id, "header", take=6)
            assert seen[-1]["type"] not in TERMINAL, "the run ended before the reconnects"
            await follow(client, run_id, "query", take=None)
            record = await wait_ended(client, run_id)
            _, replay = await read_body(client, "GET", f"/runs/{run_id}/events", headers=SSE)

    assert [d["seq"] for d in seen] == list(range(1, len(seen) + 1))
    assert ids == [str(d["seq"]) for d in seen]
    assert seen == [json.loads(line[5:]) for line in data_lines(replay)]
    assert seen[-1]["type"] == "run.completed" and seen[-1]["output"] == text
    assert record["status"] == "succeeded"  # following (and dropping) never cancels a run


# ---- many subscribers ------------------------------------------------------------------------


@pytest.mark.parametrize("subscribers", [2, 10])
async def test_concurrent_subscribers_receive_identical_bytes(
    service: Service, subscribers: int
) -> None:
    text = f"fanout {uuid.uuid4().hex[:8]} " + " ".join(f"w{i}" for i in range(16))
    limits = httpx.Limits(max_connections=subscribers + 4)
    with anyio.fail_after(20):
        async with httpx.AsyncClient(base_url=service.url, timeout=10, limits=limits) as client:
            run_id = await start_background(client, "plain", {"input": text, "model": SLOW})
            bodies: list[bytes] = [b""] * subscribers

            async def subscribe(i: int) -> None:
                _, bodies[i] = await read_body(client, "GET", f"/runs/{run_id}/events", headers=SSE)

            async with anyio.create_task_group() as tg:
                for i in range(subscribers):
                    tg.start_soon(subscribe, i)

    assert all(body == bodies[0] for body in bodies)
    events = [json.loads(line[5:]) for line in data_lines(bodies[0])]
    assert [d["seq"] for d in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "run.completed" and events[-1]["output"] == text


def _stalled_subscriber(url: str, path: str) -> socket.socket:
    """A client that sends its request and then reads nothing: a tiny receive buffer, and
    HTTP/1.0 so that the body is the raw stream, ended by the server closing the socket."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    request = f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def _drain(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_a_stalled_subscriber_does_not_delay_the_run(service: Service) -> None:
    """The run's frames total ~10 MB per subscriber, far more than the stalled socket's buffers
    hold, so the server's send to it blocks; the run and the other subscribers finish anyway,
    and the stalled one catches up once it reads."""
    marker = uuid.uuid4().hex[:8]
    words = [f"{marker}{i}" + "x" * 100_000 for i in range(24)]
    text = " ".join(words)
    with anyio.fail_after(40):
        async with httpx.AsyncClient(base_url=service.url, timeout=20) as client:
            run_id = await start_background(client, "plain", {"input": text, "model": SLOW})
            stalled = await anyio.to_thread.run_sync(
                _stalled_subscriber, service.url, f"/runs/{run_id}/events"
            )
            try:
                bodies: list[bytes] = [b"", b""]

                async def subscribe(i: int) -> None:
                    _, bodies[i] = await read_body(
                        client, "GET", f"/runs/{run_id}/events", headers=SSE
                    )

                async with anyio.create_task_group() as tg:
                    for i in range(2):
                        tg.start_soon(subscribe, i)
                record = await wait_ended(client, run_id)
                assert record["status"] == "succeeded" and record["output"] == text

                # The stalled subscriber is still connected (no EOF waiting for it) ...
                peek = stalled.recv(16, socket.MSG_PEEK)
                assert peek.startswith(b"HTTP/1.")
                # ... and, once it reads, gets the same complete stream.
                raw = await anyio.to_thread.run_sync(_drain, stalled)
            finally:
                stalled.close()

    assert bodies[0] == bodies[1]
    assert len(bodies[0]) > 8_000_000
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200"
    assert data_lines(body) == data_lines(bodies[0])
