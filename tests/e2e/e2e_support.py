"""Helpers of the end-to-end tests: the llm-do service as a subprocess, an SSE reader, and the
fake model server's log read over HTTP.

Every wait here is bounded: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[2]
E2E = Path(__file__).resolve().parent
WORKERS = E2E / "workers"
DECK = E2E / "data" / "input" / "deck.pdf"
TERMINAL = ("run.completed", "run.failed", "run.cancelled")
SSE = {"Accept": "text/event-stream"}


# ---- the service as a subprocess -------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def service_env(fake_base_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_DO_", "OPENAI_"))}
    env |= {
        "OPENAI_BASE_URL": fake_base_url,
        "OPENAI_API_KEY": "test-key",
        "LLM_DO_DATA_DIR": str(data_dir),
        "LLM_DO_LOG_LEVEL": "warning",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONUNBUFFERED": "1",
    }
    return env | extra


@contextmanager
def run_service(
    *,
    workers: Path,
    data_dir: Path,
    fake_base_url: str,
    startup_timeout: float = 30,
    **extra_env: str,
) -> Iterator[Service]:
    """`llm-do serve` in a subprocess on a free port; ready (GET /healthz answers) on entry,
    stopped by its PID (terminate, wait, kill) on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        service = _start(workers, data_dir, fake_base_url, extra_env)
        try:
            _wait_healthy(service, startup_timeout)
            break
        except _PortTaken:
            if attempt == 2:
                raise
        except BaseException:
            stop_process(service.proc)
            raise
    try:
        yield service
    finally:
        stop_process(service.proc)


class _PortTaken(RuntimeError):
    """Another process bound the free port between our check and the service's bind."""


def _start(workers: Path, data_dir: Path, fake_base_url: str, extra_env: dict[str, str]) -> Service:
    port = free_port()
    log_path = data_dir / f"service-{port}.log"
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers)]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=service_env(fake_base_url, data_dir, **extra_env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return Service(f"http://127.0.0.1:{port}", proc, log_path)


def _wait_healthy(service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1) as client:
        while True:
            code = service.proc.poll()
            if code is not None:
                if "address already in use" in service.output().lower():
                    raise _PortTaken(service.url)
                raise RuntimeError(
                    f"llm-do serve exited with code {code} while starting:\n{service.output()}"
                )
            try:
                if client.get(service.url + "/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"llm-do serve did not answer /healthz within {timeout} s:\n{service.output()}"
                )
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


# ---- SSE -------------------------------------------------------------------------------------


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: dict[str, Any]


@dataclass
class StreamedRun:
    """What one streamed POST /workers/NAME/run delivered."""

    status_code: int
    headers: httpx.Headers
    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    @property
    def data(self) -> list[dict[str, Any]]:
        return [e.data for e in self.events]

    @property
    def run_id(self) -> str:
        return self.headers["x-run-id"]

    @property
    def terminal(self) -> dict[str, Any]:
        return self.events[-1].data

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.data if d["type"] == kind]

    def text_of(self, call_id: str) -> str:
        return "".join(d["delta"] for d in self.of_type("text.delta") if d["call_id"] == call_id)


BASE_FIELDS = ("run_id", "seq", "worker", "path", "call_id", "type")


def check_stream(run: StreamedRun) -> None:
    """Every rule of the event stream that holds for any run."""
    assert run.status_code == 200
    assert run.headers["content-type"].startswith("text/event-stream")
    run_id = run.headers["x-run-id"]
    assert run.headers["content-location"] == f"/runs/{run_id}"
    assert run.events, "no events"

    assert [e.id for e in run.events] == [str(i) for i in range(1, len(run.events) + 1)]
    for e in run.events:
        d = e.data
        missing = [f for f in BASE_FIELDS if f not in d]
        assert not missing, (missing, d)
        assert e.event == d["type"]
        assert d["seq"] == int(e.id)
        assert d["run_id"] == run_id
        assert isinstance(d["path"], list) and d["path"] and d["path"][-1] == d["worker"]
        assert isinstance(d["call_id"], str) and d["call_id"]

    types = [d["type"] for d in run.data]
    assert types[0] == "run.started"
    assert sum(t in TERMINAL for t in types) == 1
    assert types[-1] in TERMINAL

    # The root's call_id is the run id; every call's text concatenates to its output.
    starts = {d["call_id"]: d for d in run.of_type("worker.started")}
    assert run_id in starts and starts[run_id]["path"] == [starts[run_id]["worker"]]
    for d in run.data:
        if d["type"] not in ("run.started", *TERMINAL):
            assert d["call_id"] in starts, d
            assert d["path"] == starts[d["call_id"]]["path"], d
    # Each invocation's events lie between its worker.started and its worker.finished.
    for call_id in starts:
        seqs = [
            d["seq"] for d in run.data if d["call_id"] == call_id and d["type"] != "run.started"
        ]
        seqs = [s for s in seqs if run.data[s - 1]["type"] not in TERMINAL]
        assert run.data[seqs[0] - 1]["type"] == "worker.started"
        assert run.data[seqs[-1] - 1]["type"] == "worker.finished"
    for finished in run.of_type("worker.finished"):
        if finished["status"] == "succeeded" and isinstance(finished["output"], str):
            assert run.text_of(finished["call_id"]) == finished["output"]
    if run.terminal["type"] == "run.completed":
        assert run.text_of(run_id) == run.terminal["output"]


async def sse_items(response: httpx.Response) -> AsyncIterator[SseEvent | str]:
    """Events (and comments, as str) of an SSE response, parsed per the WHATWG rules."""
    fields: dict[str, str] = {}
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield SseEvent(fields.get("id"), fields.get("event"), json.loads("\n".join(data)))
            fields, data = {}, []
        elif line.startswith(":"):
            yield line[1:].lstrip(" ")
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value


async def stream_run(
    client: httpx.AsyncClient,
    worker: str,
    body: dict[str, Any],
    *,
    until: Callable[[SseEvent], bool] | None = None,
) -> StreamedRun:
    """POST a run with `Accept: text/event-stream` and read its stream to the end (or until
    `until(event)` is true, then close the connection). Bound it with `anyio.fail_after`."""
    async with client.stream("POST", f"/workers/{worker}/run", json=body, headers=SSE) as resp:
        run = StreamedRun(resp.status_code, resp.headers)
        if resp.status_code != 200:
            await resp.aread()
            return run
        async for item in sse_items(resp):
            if isinstance(item, str):
                run.comments.append(item)
                continue
            run.events.append(item)
            if until is not None and until(item):
                break
    return run


# ---- the fake model server's log -------------------------------------------------------------


def fake_log(fake_url: str) -> dict[str, list[dict[str, Any]]]:
    response = httpx.get(fake_url + "/_log", timeout=5)
    response.raise_for_status()
    return response.json()


async def afake_log(fake_url: str) -> dict[str, list[dict[str, Any]]]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(fake_url + "/_log")
    response.raise_for_status()
    return response.json()


def user_content(request_body: dict[str, Any]) -> Any:
    """The content of the last user message of a recorded chat-completions request."""
    for message in reversed(request_body.get("messages") or []):
        if message.get("role") == "user":
            return message.get("content")
    return None


def user_text(request_body: dict[str, Any]) -> str:
    content = user_content(request_body)
    if isinstance(content, str):
        return content
    return "\n".join(
        p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text"
    )


async def eventually(
    check: Callable[[], Awaitable[Any]], *, within: float, what: str, interval: float = 0.05
) -> Any:
    """Poll `await check()` (for an effect seen in another process) until it returns something
    truthy; fail after `within` seconds."""
    try:
        with anyio.fail_after(within):
            while True:
                result = await check()
                if result:
                    return result
                await anyio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {within} s waiting for {what}") from None
