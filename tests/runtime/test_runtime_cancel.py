"""Cancelling a run ends the whole tree as cancelled, with one terminal event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest
from pydantic_ai.models.function import FunctionModel
from runtime_helpers import Script, ScriptedModels, call, of_type, terminal, write_worker

from app.runtime import Event, WorkerRegistry, WorkerRun, run_worker

pytestmark = pytest.mark.anyio


class Stuck:
    """A model that streams a first chunk, says so, then waits for an event that never fires."""

    def __init__(self) -> None:
        self.streaming = asyncio.Event()
        self.never = asyncio.Event()
        self.closed = False

    async def __call__(self, messages, info):
        try:
            yield "partial "
            self.streaming.set()
            await self.never.wait()
            yield "never sent"
        finally:
            self.closed = True

    def model(self) -> FunctionModel:
        return FunctionModel(stream_function=self, model_name="stuck")


@pytest.fixture
def registry(tmp_path: Path) -> WorkerRegistry:
    workers = tmp_path / "workers"
    write_worker(workers, "boss", model="script:boss", allow_workers=["slow"])
    write_worker(workers, "slow", model="script:slow")
    return WorkerRegistry(workers)


async def test_cancel_while_a_child_streams(registry: WorkerRegistry) -> None:
    stuck = Stuck()
    boss = Script([call("worker_call", {"worker": "slow", "input_data": "x"}, "c1")], ["after"])
    models = ScriptedModels({"script:boss": boss.model(), "script:slow": stuck.model()})
    events: list[Event] = []
    run = WorkerRun(registry, "boss", "go", on_event=events.append, models=models)
    assert run.cancel("too early") is False  # not running yet

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            results = []

            async def execute() -> None:
                results.append(await run.execute())

            tg.start_soon(execute)
            await stuck.streaming.wait()
            assert run.cancel("stop") is True
            assert run.cancel("again") is False  # one cancellation, one reason
    (result,) = results
    assert result.status == "cancelled"
    assert result.output is None

    end = terminal(events)
    assert end.type == "run.cancelled"
    assert end.reason == "stop"
    assert end.usage is not None and end.usage["requests"] == 2
    finished = {e.worker: e.status for e in of_type(events, "worker.finished")}
    assert finished == {"slow": "cancelled", "boss": "cancelled"}
    assert [e.worker for e in of_type(events, "worker.finished")] == ["slow", "boss"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.delta for e in of_type(events, "text.delta")] == ["partial "]
    assert stuck.closed  # the model stream was closed, not left dangling
    assert boss.requests == 1  # the caller's model was not asked to go on


async def test_cancel_with_no_child(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    write_worker(workers, "solo", model="script:slow")
    stuck = Stuck()
    events: list[Event] = []
    run = WorkerRun(
        WorkerRegistry(workers),
        "solo",
        "x",
        on_event=events.append,
        models=ScriptedModels({"script:slow": stuck.model()}),
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.execute)
            await stuck.streaming.wait()
            run.cancel("user pressed stop")
    end = terminal(events)
    assert (end.type, end.reason) == ("run.cancelled", "user pressed stop")
    assert [e.status for e in of_type(events, "worker.finished")] == ["cancelled"]
    assert run.cancel("late") is False  # already ended


async def test_consumer_going_away_cancels_the_run(registry: WorkerRegistry) -> None:
    stuck = Stuck()
    boss = Script([call("worker_call", {"worker": "slow"}, "c1")], ["after"])
    models = ScriptedModels({"script:boss": boss.model(), "script:slow": stuck.model()})
    seen = []
    with anyio.fail_after(10):
        stream = run_worker(registry, "boss", "go", models=models)
        async for event in stream:
            seen.append(event.type)
            if event.type == "text.delta":
                break
        await stream.aclose()
    assert stuck.closed
    assert "run.cancelled" not in seen  # the consumer left before it
