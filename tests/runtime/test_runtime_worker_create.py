"""worker_create (workers.md §6, §7): always approved first, showing the complete file; writes
workers/generated/NAME.worker; refuses existing and invalid names; the creator may call the new
worker at once, and the registry finds it afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from runtime_helpers import (
    Script,
    ScriptedModels,
    call,
    calls,
    of_type,
    terminal,
    tool_returns,
    user_prompt,
    write_worker,
)

from app.runtime import Event, WorkerRegistry, WorkerRun
from app.runtime.events import TERMINAL_TYPES

pytestmark = pytest.mark.anyio


@pytest.fixture
def workers(tmp_path: Path) -> Path:
    folder = tmp_path / "workers"
    write_worker(folder, "creator", model="script:creator", worker_create=True)
    write_worker(folder, "existing", model="script:existing")
    return folder


@pytest.fixture
def registry(workers: Path) -> WorkerRegistry:
    return WorkerRegistry(workers)


def report(messages, info) -> list[str]:
    return [" || ".join(f"{r.tool_name}={r.outcome}:{r.content}" for r in tool_returns(messages))]


async def drive(
    registry: WorkerRegistry,
    scripts: dict[str, Script],
    *,
    decide: Callable[[Event], tuple[str, dict[str, Any]] | None] | None = None,
    **kwargs: Any,
) -> list[Event]:
    """Run `creator`, answering each approval with `decide(event)` (kind, kwargs)."""
    queue: asyncio.Queue[Event] = asyncio.Queue()
    models = ScriptedModels({f"script:{n}": s.model() for n, s in scripts.items()})
    run = WorkerRun(registry, "creator", "go", on_event=queue.put_nowait, models=models, **kwargs)
    events: list[Event] = []
    with anyio.fail_after(10):
        task = asyncio.create_task(run.execute())
        while True:
            event = await queue.get()
            events.append(event)
            if event.type == "approval.requested" and decide is not None:
                answer = decide(event)
                if answer is not None:
                    run.state.gate.decide(event.approval_id, answer[0], **answer[1])  # type: ignore[arg-type]
            if event.type in TERMINAL_TYPES:
                break
        await task
    return events


def tree(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def approve(event: Event) -> tuple[str, dict[str, Any]]:
    return "approve", {}


POET = {
    "name": "poet",
    "instructions": "Write a short poem about the input.",
    "description": "Writes poems",
    "model": "script:poet",
}


async def test_create_then_call_the_new_worker_in_the_same_run(
    workers: Path, registry: WorkerRegistry
) -> None:
    creator = Script(
        [call("worker_create", POET, "c1")],
        [call("worker_call", {"worker": "poet", "input_data": "the sea"}, "c2")],
        report,
    )
    poet = Script(["Waves ", "again"])
    shown: list[dict[str, Any]] = []

    def check_then_approve(event: Event) -> tuple[str, dict[str, Any]]:
        shown.append(event.details)
        assert not (workers / "generated" / "poet.worker").exists()  # not before the decision
        return "approve", {}

    events = await drive(registry, {"creator": creator, "poet": poet}, decide=check_then_approve)
    end = terminal(events)
    assert end.type == "run.completed", end

    (req,) = of_type(events, "approval.requested")
    assert req.tool == "worker_create"
    assert req.description == "Create worker 'poet' at workers/generated/poet.worker"
    target = workers / "generated" / "poet.worker"
    written = target.read_text(encoding="utf-8")
    # The person saw exactly the file that was written.
    assert shown == [{"path": "workers/generated/poet.worker", "file": written}]
    head, body = written.split("---\n")[1:]
    assert yaml.safe_load(head) == {
        "name": "poet",
        "description": "Writes poems",
        "model": "script:poet",
    }
    assert body == "Write a short poem about the input.\n"

    results = {r.tool_call_id: r for r in of_type(events, "tool.result")}
    assert results["c1"].outcome == "success"
    assert "poet" in results["c1"].content
    assert (results["c2"].outcome, results["c2"].content) == ("success", "Waves again")
    (child,) = [e for e in of_type(events, "worker.started") if e.worker == "poet"]
    assert child.path == ("creator", "poet")
    assert poet.seen[0][1].instructions == "Write a short poem about the input."
    assert poet.seen[0][1].function_tools == []  # no tools, no files, no delegation
    assert user_prompt(poet.seen[0][0]).content == "the sea"

    # Afterwards the registry (a fresh one, as a restarted service would) finds it.
    fresh = WorkerRegistry(workers)
    assert "poet" in fresh.names()
    spec = fresh.get("poet").spec
    assert (spec.description, spec.model) == ("Writes poems", "script:poet")
    assert spec.sandbox is None and spec.allow_workers == [] and not spec.worker_create
    assert registry.get("poet").path == target


async def test_create_with_an_output_schema(workers: Path, registry: WorkerRegistry) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    args = {"name": "counter", "instructions": "Count.", "output_schema": schema}
    creator = Script([call("worker_create", args, "c1")], report)
    events = await drive(registry, {"creator": creator}, decide=approve)
    assert terminal(events).type == "run.completed"
    spec = WorkerRegistry(workers).get("counter").spec
    assert spec.output_schema == schema
    assert spec.model is None  # omitted: it inherits its caller's model


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("existing", "already exists"),
        ("creator", "already exists"),
        ("Bad Name", "must match"),
        ("../escape", "must match"),
        ("", "must match"),
        ("a" * 65, "must match"),
    ],
    ids=["existing", "itself", "space", "dotdot", "empty", "too-long"],
)
async def test_refused_names_are_failed_calls_and_ask_nobody(
    workers: Path, registry: WorkerRegistry, name: str, needle: str
) -> None:
    before = tree(workers)
    args = {"name": name, "instructions": "x"}
    creator = Script([call("worker_create", args, "c1")], report)
    events = await drive(registry, {"creator": creator}, decide=approve)
    assert terminal(events).type == "run.completed"
    assert not of_type(events, "approval.requested")
    (ret,) = tool_returns(creator.seen[1][0])
    assert ret.outcome == "failed"
    assert needle in ret.content
    assert tree(workers) == before


async def test_an_existing_generated_name_is_refused(
    workers: Path, registry: WorkerRegistry
) -> None:
    (workers / "generated").mkdir()
    (workers / "generated" / "poet.worker").write_text("---\nname: poet\n---\nOld.\n")
    creator = Script([call("worker_create", POET, "c1")], report)
    events = await drive(registry, {"creator": creator}, decide=approve)
    assert not of_type(events, "approval.requested")
    (ret,) = tool_returns(creator.seen[1][0])
    assert ret.outcome == "failed" and "already exists" in ret.content
    assert (workers / "generated" / "poet.worker").read_text() == "---\nname: poet\n---\nOld.\n"


async def test_an_invalid_output_schema_is_refused(workers: Path, registry: WorkerRegistry) -> None:
    args = {"name": "broken", "instructions": "x", "output_schema": {"type": "nonsense"}}
    creator = Script([call("worker_create", args, "c1")], report)
    events = await drive(registry, {"creator": creator}, decide=approve)
    assert not of_type(events, "approval.requested")
    (ret,) = tool_returns(creator.seen[1][0])
    assert ret.outcome == "failed" and "would be invalid" in ret.content
    assert not (workers / "generated" / "broken.worker").exists()


@pytest.mark.parametrize("mode", ["deny", "deny_all"])
async def test_denied_create_writes_nothing(
    workers: Path, registry: WorkerRegistry, mode: str
) -> None:
    creator = Script(
        [call("worker_create", POET, "c1")],
        [call("worker_call", {"worker": "poet", "input_data": "x"}, "c2")],
        report,
    )
    kwargs: dict[str, Any] = {"approval": "deny_all"} if mode == "deny_all" else {}
    events = await drive(
        registry, {"creator": creator}, decide=lambda e: ("deny", {"reason": "no"}), **kwargs
    )
    assert terminal(events).type == "run.completed"
    assert not (workers / "generated" / "poet.worker").exists()
    results = {r.tool_call_id: r.outcome for r in of_type(events, "tool.result")}
    assert results == {"c1": "denied", "c2": "failed"}  # and the name is not callable


async def test_approve_all_creates_without_asking(workers: Path, registry: WorkerRegistry) -> None:
    creator = Script([call("worker_create", POET, "c1")], report)
    events = await drive(registry, {"creator": creator}, approval="approve_all")
    assert not of_type(events, "approval.requested")
    assert (workers / "generated" / "poet.worker").is_file()


async def test_two_parallel_creates_of_one_name_write_it_once(
    workers: Path, registry: WorkerRegistry
) -> None:
    other = {**POET, "instructions": "Another poet."}
    creator = Script([calls(("worker_create", POET, "c1"), ("worker_create", other, "c2"))], report)
    events = await drive(registry, {"creator": creator}, decide=approve)
    assert terminal(events).type == "run.completed"
    assert len(of_type(events, "approval.requested")) == 2  # both looked fine when asked
    outcomes = sorted(r.outcome for r in of_type(events, "tool.result"))
    assert outcomes == ["failed", "success"]
    (failed,) = [r for r in of_type(events, "tool.result") if r.outcome == "failed"]
    assert "already exists" in failed.content
    text = (workers / "generated" / "poet.worker").read_text()
    assert text.rstrip().endswith(("Write a short poem about the input.", "Another poet."))


async def test_the_created_worker_is_callable_only_by_its_creator(
    workers: Path, registry: WorkerRegistry
) -> None:
    """Another worker in the same run with its own allowlist does not gain the new name."""
    write_worker(workers, "creator", model="script:creator", worker_create=True,
                 allow_workers=["relay"])  # fmt: skip
    write_worker(workers, "relay", model="script:relay", allow_workers=["existing"])
    creator = Script(
        [call("worker_create", POET, "c1")],
        [call("worker_call", {"worker": "relay", "input_data": "go"}, "c2")],
        report,
    )
    relay = Script([call("worker_call", {"worker": "poet", "input_data": "x"}, "r1")], report)
    events = await drive(registry, {"creator": creator, "relay": relay}, decide=approve)
    assert terminal(events).type == "run.completed"
    (ret,) = tool_returns(relay.seen[1][0])
    assert ret.outcome == "failed"
    assert "may not call 'poet'" in ret.content


async def test_a_created_worker_always_loads(workers: Path, registry: WorkerRegistry) -> None:
    args = {**POET, "instructions": "Answer in the form {{ answer }} please."}
    creator = Script(
        [call("worker_create", args, "c1")],
        [call("worker_call", {"worker": "poet", "input_data": "x"}, "c2")],
        report,
    )
    poet = Script(["fine"])
    events = await drive(registry, {"creator": creator, "poet": poet}, decide=approve)
    results = {r.tool_call_id: r for r in of_type(events, "tool.result")}
    if results["c1"].outcome == "success":  # created: then it must load and answer
        WorkerRegistry(workers).get("poet")
        assert results["c2"].outcome == "success", results["c2"].content
    else:  # or refused up front, before anyone approves a file that cannot work
        assert not of_type(events, "approval.requested")


async def test_a_description_with_a_dashes_line_is_not_a_crash(
    workers: Path, registry: WorkerRegistry
) -> None:
    description = "first line\n---\nsecond line"
    args = {**POET, "description": description}
    creator = Script(
        [call("worker_create", args, "c1")],
        [call("worker_call", {"worker": "poet", "input_data": "x"}, "c2")],
        report,
    )
    events = await drive(registry, {"creator": creator, "poet": Script(["fine"])}, decide=approve)
    assert terminal(events).type == "run.completed", terminal(events)
    results = {r.tool_call_id: r for r in of_type(events, "tool.result")}
    if results["c1"].outcome == "success":
        assert WorkerRegistry(workers).get("poet").spec.description == description
        assert results["c2"].outcome == "success"
