"""Code workers and tools with `ctx` (workers.md §10): the same interface, the same events,
the same guardrails as model workers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from app.runtime import (
    DelegationError,
    InvalidWorker,
    WorkerRegistry,
    WorkerRun,
    run_worker,
)
from app.runtime.events import Event

pytestmark = pytest.mark.anyio


def write(folder: Path, name: str, front: str, code: str | None = None, tools: str | None = None):
    d = folder / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "worker.worker").write_text(f"---\nname: {name}\n{front}---\nDocs.\n")
    if code is not None:
        (d / "main.py").write_text(code)
    if tools is not None:
        (d / "tools.py").write_text(tools)


@pytest.fixture
def workers(tmp_path: Path) -> Path:
    return tmp_path / "workers"


async def events_of(registry: WorkerRegistry, name: str, input: Any = None, **kw) -> list[Event]:
    out = []
    with anyio.fail_after(15):
        async for ev in run_worker(registry, name, input, **kw):
            out.append(ev)
    return out


def shape(events: list[Event]) -> list[tuple[str, tuple[str, ...]]]:
    """The structure of a stream: event types and paths, runs of text collapsed."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for ev in events:
        key = (ev.type, ev.path)
        if not (ev.type == "text.delta" and out and out[-1] == key):
            out.append(key)
    return out


async def test_a_code_worker_can_replace_a_model_worker_of_the_same_name(tmp_path: Path):
    model_dir, code_dir = tmp_path / "a" / "workers", tmp_path / "b" / "workers"
    write(model_dir, "twin", "model: echo\n")
    write(
        code_dir,
        "twin",
        "code: main.py:run\n",
        "async def run(ctx, input):\n    await ctx.emit(input)\n    return input\n",
    )
    for folder in (model_dir, code_dir):
        write(folder, "boss", "model: demo\nallow_workers: [twin]\n")
    outputs, shapes = [], []
    for folder in (model_dir, code_dir):
        registry = WorkerRegistry(folder)
        direct = await events_of(registry, "twin", "same words")
        nested = await events_of(registry, "boss", "same words")
        outputs.append((direct[-1].output, nested[-1].output))
        shapes.append((shape(direct), shape(nested)))
    assert outputs[0] == outputs[1] == ("same words", "Results:\nworker_call: same words")
    assert shapes[0] == shapes[1]


async def test_code_to_model_to_code_nesting_has_paths_and_usage(workers: Path):
    write(
        workers,
        "outer",
        "code: main.py:run\nallow_workers: [middle]\n",
        "async def run(ctx, input):\n    return await ctx.call_worker('middle', input)\n",
    )
    write(workers, "middle", "model: demo\nallow_workers: [inner]\n")
    write(
        workers,
        "inner",
        "code: main.py:run\n",
        "async def run(ctx, input):\n"
        "    await ctx.emit('inner got ' + str(input))\n"
        "    return {'path': list(ctx.path), 'input': input}\n",
    )
    events = await events_of(WorkerRegistry(workers), "outer", "hello", model="demo")
    end = events[-1]
    assert end.type == "run.completed", end
    inner_text = [e for e in events if e.type == "text.delta" and e.path[-1] == "inner"]
    assert inner_text and inner_text[0].path == ("outer", "middle", "inner")
    starts = {e.worker: e for e in events if e.type == "worker.started"}
    assert starts["inner"].parent_call_id == starts["middle"].call_id
    assert starts["middle"].parent_call_id == starts["outer"].call_id
    assert end.usage["requests"] == 2  # the model worker's two turns; code costs none
    assert "outer" in end.output and "inner" in end.output


async def test_parallel_call_worker_runs_concurrently(workers: Path):
    # each child waits until the other has started: only concurrent calls can finish
    code = (
        "import asyncio\n"
        "STARTED = {}\n"
        "async def run(ctx, input):\n"
        "    STARTED.setdefault(input, asyncio.Event()).set()\n"
        "    other = 'b' if input == 'a' else 'a'\n"
        "    await asyncio.wait_for(STARTED.setdefault(other, asyncio.Event()).wait(), 5)\n"
        "    return input\n"
    )
    write(workers, "child", "", code)
    write(
        workers,
        "fan",
        "code: main.py:run\nallow_workers: [child]\n",
        "import asyncio\n"
        "async def run(ctx, input):\n"
        "    return list(await asyncio.gather(ctx.call_worker('child', 'a'),"
        " ctx.call_worker('child', 'b')))\n",
    )
    (workers / "child" / "worker.worker").write_text(
        "---\nname: child\ncode: main.py:run\n---\nDocs.\n"
    )
    events = await events_of(WorkerRegistry(workers), "fan")
    assert events[-1].type == "run.completed" and events[-1].output == ["a", "b"]


SANDBOXED = (
    "sandbox:\n  paths:\n    notes: {root: notes, mode: rw, suffixes: [.md]}\n"
    "allow_workers: [other]\n"
)


async def test_ctx_write_file_waits_for_approval_and_refuses_escapes(workers: Path):
    write(
        workers,
        "scribe",
        f"code: main.py:run\n{SANDBOXED}",
        "from app.runtime import ToolCallFailed, DelegationError\n"
        "async def run(ctx, input):\n"
        "    out = []\n"
        "    for bad in ('notes/../x.md', '/etc/passwd', 'nope/a.md'):\n"
        "        try:\n"
        "            await ctx.write_file(bad, 'x')\n"
        "        except ToolCallFailed as exc:\n"
        "            out.append(str(exc))\n"
        "    try:\n"
        "        await ctx.call_worker('stranger')\n"
        "    except DelegationError as exc:\n"
        "        out.append(str(exc))\n"
        "    out.append(await ctx.write_file('notes/ok.md', '# ok'))\n"
        "    return out\n",
    )
    seen: list[Event] = []
    run: WorkerRun

    def deliver(ev: Event) -> None:
        seen.append(ev)
        if ev.type == "approval.requested":
            asyncio.get_running_loop().call_soon(run.state.gate.decide, ev.approval_id, "approve")

    run = WorkerRun(WorkerRegistry(workers), "scribe", on_event=deliver)
    with anyio.fail_after(10):
        result = await run.execute()
    assert result.status == "succeeded", result
    out = result.output
    # the same messages the model's write_file gives
    assert "contains '..'" in out[0]
    assert "Unknown sandbox ''" in out[1] and "Unknown sandbox 'nope'" in out[2]
    assert "may not call 'stranger'" in out[3]
    assert out[4] == "Wrote 4 bytes to notes/ok.md"
    asked = [e for e in seen if e.type == "approval.requested"]
    assert [a.tool for a in asked] == ["write_file"]  # the refused writes asked nobody
    assert (workers.parent / "notes" / "ok.md").read_text() == "# ok"


async def test_a_denied_ctx_write_raises_approval_denied(workers: Path):
    write(
        workers,
        "scribe",
        f"code: main.py:run\n{SANDBOXED}",
        "from app.runtime import ApprovalDenied\n"
        "async def run(ctx, input):\n"
        "    try:\n"
        "        await ctx.write_file('notes/a.md', 'x')\n"
        "    except ApprovalDenied as exc:\n"
        "        return 'denied: ' + str(exc)\n",
    )
    events = await events_of(WorkerRegistry(workers), "scribe", approval="deny_all")
    assert events[-1].output.startswith("denied: write_file was denied")
    assert not (workers.parent / "notes" / "a.md").exists()


async def test_cancel_during_call_worker_ends_both(workers: Path):
    write(
        workers,
        "waiter",
        "code: main.py:run\n",
        "import asyncio\nasync def run(ctx, input):\n    await asyncio.Event().wait()\n",
    )
    write(
        workers,
        "caller",
        "code: main.py:run\nallow_workers: [waiter]\n",
        "async def run(ctx, input):\n    return await ctx.call_worker('waiter')\n",
    )
    seen: list[Event] = []
    started = asyncio.Event()

    def deliver(ev: Event) -> None:
        seen.append(ev)
        if ev.type == "worker.started" and ev.worker == "waiter":
            started.set()

    run = WorkerRun(WorkerRegistry(workers), "caller", on_event=deliver)
    task = asyncio.create_task(run.execute())
    with anyio.fail_after(10):
        await started.wait()
        run.cancel("stop")
        result = await task
    assert result.status == "cancelled"
    finished = {e.worker: e.status for e in seen if e.type == "worker.finished"}
    assert finished == {"waiter": "cancelled", "caller": "cancelled"}
    assert seen[-1].type == "run.cancelled"


async def test_a_tool_with_ctx_calls_a_worker_whose_text_streams_in_the_root(workers: Path):
    write(
        workers,
        "tooly",
        "model: demo\ncustom_tools: [ask_echo]\nallow_workers: [echoer]\n",
        tools=(
            "async def ask_echo(ctx, text: str) -> str:\n"
            '    """Ask the echo worker.\n\n    Args:\n        text: What to send.\n    """\n'
            "    return 'echoer said: ' + await ctx.call_worker('echoer', text)\n"
        ),
    )
    write(workers, "echoer", "model: echo\n")
    call = {"calls": [{"tool": "ask_echo", "args": {"text": "grand child words"}}]}
    events = await events_of(WorkerRegistry(workers), "tooly", json.dumps(call))
    assert events[-1].type == "run.completed", events[-1]
    grand = [e for e in events if e.type == "text.delta" and e.worker == "echoer"]
    assert "".join(e.delta for e in grand) == "grand child words"
    assert grand[0].path == ("tooly", "echoer")
    tool_call = next(e for e in events if e.type == "tool.call")
    child_start = next(e for e in events if e.type == "worker.started" and e.worker == "echoer")
    assert child_start.tool_call_id == tool_call.tool_call_id  # nested under the tool call
    assert "echoer said: grand child words" in events[-1].output


@pytest.mark.parametrize(
    ("front", "code", "needle"),
    [
        ("code: missing.py:run\n", None, "does not exist"),
        ("code: main.py:run\n", "def run(ctx, input):\n    return 1\n", "must be 'async def"),
        ("code: main.py:nope\n", "async def run(ctx, input):\n    pass\n", "no function 'nope'"),
        ("code: main.py:run\n", "import not_a_module\n", "failed to import"),
        ("code: ../x.py:run\n", None, "'..'"),
        ("code: main.py\n", None, "FILE.py:FUNCTION"),
    ],
)
async def test_a_broken_code_worker_is_invalid_and_others_still_load(
    workers: Path, front: str, code: str | None, needle: str
):
    write(workers, "broken", front, code)
    write(workers, "fine", "model: echo\n")
    registry = WorkerRegistry(workers)
    with pytest.raises(InvalidWorker, match=needle.replace("(", r"\(")):
        registry.get("broken")
    assert registry.get("fine").name == "fine"


async def test_output_schema_is_enforced_for_code(workers: Path):
    write(
        workers,
        "typed",
        "code: main.py:run\noutput_schema: {type: object, required: [n],"
        " properties: {n: {type: integer}}}\n",
        "async def run(ctx, input):\n    return {'n': input}\n",
    )
    registry = WorkerRegistry(workers)
    good = await events_of(registry, "typed", 3)
    assert good[-1].output == {"n": 3}
    bad = await events_of(registry, "typed", "three")
    assert bad[-1].type == "run.failed" and bad[-1].error["type"] == "invalid_output"


def test_delegation_error_is_exported():
    assert issubclass(DelegationError, Exception)
