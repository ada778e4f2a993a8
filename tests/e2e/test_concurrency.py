"""Many streamed runs at once on one server (one process, one event loop): each stream carries
only its own run's events, complete and in order."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import anyio
import httpx
import pytest
from e2e_support import Service, StreamedRun, check_stream, stream_run

pytestmark = pytest.mark.anyio

RUNS = 20


def _request(i: int, marker: str) -> tuple[str, dict[str, Any]]:
    kind = i % 4
    if kind == 0:  # nested, with the deck passed on
        args = {
            "worker": "summarizer",
            "input_data": f"child {marker} words",
            "attachments": ["input/deck.pdf"],
        }
        return "orchestrator", {"input": {"calls": [{"tool": "worker_call", "args": args}]}}
    if kind == 1:  # nested, two children in parallel
        calls = [
            {"tool": "worker_call", "args": {"worker": "summarizer", "input_data": f"{n} {marker}"}}
            for n in ("first", "second")
        ]
        return "orchestrator", {"input": {"calls": calls}}
    if kind == 2:  # plain, paced by the fake
        return "plain", {"input": f"slow {marker} a b c d", "model": "openai-chat:fake-slow"}
    return "plain", {"input": f"fast {marker} x y z", "model": "openai-chat:fake"}


async def test_concurrent_streamed_runs(service: Service) -> None:
    markers = [f"m{i}x{uuid.uuid4().hex[:6]}" for i in range(RUNS)]
    limits = httpx.Limits(max_connections=RUNS + 5)
    with anyio.fail_after(30):
        async with httpx.AsyncClient(base_url=service.url, timeout=20, limits=limits) as client:
            runs: list[StreamedRun] = await asyncio.gather(
                *(stream_run(client, *_request(i, m)) for i, m in enumerate(markers))
            )

    assert len({r.run_id for r in runs}) == RUNS
    for i, (run, marker) in enumerate(zip(runs, markers, strict=True)):
        check_stream(run)  # ids 1..N, run_id everywhere, text of each call == its output
        assert run.terminal["type"] == "run.completed", run.terminal
        output = run.terminal["output"]
        assert marker in output
        others = [m for m in markers if m != marker]
        text = "".join(d["delta"] for d in run.of_type("text.delta"))
        assert not [m for m in others if m in text], f"run {i} got another run's text"
        children = [d for d in run.of_type("worker.started") if d["worker"] == "summarizer"]
        kind = i % 4
        assert len(children) == {0: 1, 1: 2}.get(kind, 0)
        if kind == 0:
            assert "[files: " in output and "(18 bytes)]" in output
        if kind == 1:
            assert output == f"Tool results: first {marker} | second {marker}"
            assert len({c["call_id"] for c in children}) == 2
