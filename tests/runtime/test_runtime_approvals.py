"""Approvals (workers.md §7) at the runtime level: the gate's modes, decisions, remembered
approvals across nested workers, timeouts, cancels, and which tools are gated."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
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

from app.runtime import (
    ApprovalAlreadyDecided,
    ApprovalNotFound,
    Event,
    InvalidInput,
    InvalidWorker,
    RuntimeConfig,
    WorkerRegistry,
    WorkerRun,
)
from app.runtime.approvals import ApprovalGate, Gating
from app.runtime.events import TERMINAL_TYPES, EventSink

pytestmark = pytest.mark.anyio

OnEvent = Callable[[Event, WorkerRun], None]


async def drive(
    registry: WorkerRegistry,
    name: str,
    input: Any = "go",
    *,
    on_event: OnEvent | None = None,
    within: float = 10,
    **kwargs: Any,
) -> tuple[list[Event], WorkerRun]:
    """Run a worker to its end, calling `on_event(event, run)` for each event as it arrives
    (outside the emitter, so it may decide approvals or cancel the run)."""
    queue: asyncio.Queue[Event] = asyncio.Queue()
    run = WorkerRun(registry, name, input, on_event=queue.put_nowait, **kwargs)
    events: list[Event] = []
    with anyio.fail_after(within):
        task = asyncio.create_task(run.execute())
        try:
            while True:
                event = await queue.get()
                events.append(event)
                if on_event is not None:
                    on_event(event, run)
                if event.type in TERMINAL_TYPES:
                    break
            await task
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    return events, run


def decide_each(kind: str, **kwargs: Any) -> OnEvent:
    """Answer every approval.requested with the same decision."""

    def on_event(event: Event, run: WorkerRun) -> None:
        if event.type == "approval.requested":
            run.state.gate.decide(event.approval_id, kind, **kwargs)

    return on_event


def report(messages, info) -> list[str]:
    return ["; ".join(f"{r.tool_name}={r.outcome}:{r.content}" for r in tool_returns(messages))]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "workers").mkdir()
    (tmp_path / "notes").mkdir()
    return tmp_path


@pytest.fixture
def workers(project: Path) -> Path:
    return project / "workers"


@pytest.fixture
def registry(workers: Path) -> WorkerRegistry:
    return WorkerRegistry(workers)


NOTES = {"paths": {"notes": {"root": "notes", "mode": "rw"}}}


def writer(workers: Path, name: str = "writer", **front: Any) -> None:
    write_worker(workers, name, model=f"script:{name}", sandbox=NOTES, **front)


def write_call(content: str = "hello", path: str = "notes/a.md", cid: str = "w1") -> dict:
    return call("write_file", {"path": path, "content": content}, cid)


def models(**scripts: Script) -> ScriptedModels:
    return ScriptedModels({f"script:{name}": s.model() for name, s in scripts.items()})


# ---- prompt mode -----------------------------------------------------------------------------


async def test_prompt_mode_waits_for_approve(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers)
    script = Script([write_call()], report)
    seen: dict[str, Any] = {}

    def on_event(event: Event, run: WorkerRun) -> None:
        if event.type == "approval.requested":
            # the call waits in place: nothing written, the run lists it as pending
            seen["exists"] = (project / "notes" / "a.md").exists()
            seen["pending"] = [p.public() for p in run.state.gate.pending]
            run.state.gate.decide(event.approval_id, "approve")

    events, run = await drive(registry, "writer", on_event=on_event, models=models(writer=script))
    end = terminal(events)
    assert end.type == "run.completed"
    assert (project / "notes" / "a.md").read_text() == "hello"
    assert seen["exists"] is False

    (req,) = of_type(events, "approval.requested")
    assert (req.tool, req.tool_call_id, req.args) == (
        "write_file",
        "w1",
        {"path": "notes/a.md", "content": "hello"},
    )
    assert req.description == "Write 5 bytes to notes/a.md"
    assert req.path == ("writer",) and req.call_id == run.run_id
    assert req.expires_at - req.created_at == pytest.approx(600)
    (pending,) = seen["pending"]
    assert pending["approval_id"] == req.approval_id
    assert (pending["tool"], pending["worker"], pending["path"]) == (
        "write_file",
        "writer",
        ["writer"],
    )

    (res,) = of_type(events, "approval.resolved")
    assert (res.approval_id, res.decision, res.tool_call_id) == (req.approval_id, "approve", "w1")
    (result,) = of_type(events, "tool.result")
    assert result.outcome == "success"
    types = [e.type for e in events]
    assert (
        types.index("tool.call")
        < types.index("approval.requested")
        < types.index("approval.resolved")
        < types.index("tool.result")
    )
    assert run.state.gate.pending == []
    assert end.output == "write_file=success:Wrote 5 bytes to notes/a.md"


async def test_approve_with_edited_args_runs_the_edited_call(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers)
    script = Script([write_call("original")], report)
    edited = {"path": "notes/a.md", "content": "edited by a person"}
    events, _ = await drive(
        registry,
        "writer",
        on_event=decide_each("approve", args=edited),
        models=models(writer=script),
    )
    assert terminal(events).type == "run.completed"
    assert (project / "notes" / "a.md").read_text() == "edited by a person"
    (ret,) = tool_returns(script.seen[1][0])
    assert ret.outcome == "success"
    assert ret.content == "Wrote 18 bytes to notes/a.md"


async def test_deny_returns_a_denied_tool_result_with_the_reason(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers)
    script = Script([write_call()], report)
    events, _ = await drive(
        registry,
        "writer",
        on_event=decide_each("deny", reason="not in my notes, please"),
        models=models(writer=script),
    )
    end = terminal(events)
    assert end.type == "run.completed"  # the run goes on
    assert not (project / "notes" / "a.md").exists()
    (ret,) = tool_returns(script.seen[1][0])
    assert ret.outcome == "denied"
    assert "not in my notes, please" in str(ret.content)
    (res,) = of_type(events, "approval.resolved")
    assert (res.decision, res.reason) == ("deny", "not in my notes, please")
    (result,) = of_type(events, "tool.result")
    assert result.outcome == "denied"
    assert "not in my notes, please" in str(result.content)
    assert script.requests == 2


async def test_deny_without_a_reason_still_tells_the_model(
    workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers)
    script = Script([write_call()], report)
    events, _ = await drive(
        registry, "writer", on_event=decide_each("deny"), models=models(writer=script)
    )
    assert terminal(events).type == "run.completed"
    (ret,) = tool_returns(script.seen[1][0])
    assert ret.outcome == "denied"
    assert "denied" in str(ret.content)
    (res,) = of_type(events, "approval.resolved")
    assert res.reason


async def test_sibling_calls_run_while_one_waits(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers)
    (project / "notes" / "b.md").write_text("bee")
    script = Script(
        [
            calls(
                ("write_file", {"path": "notes/a.md", "content": "x"}, "w1"),
                ("read_file", {"path": "notes/b.md"}, "r1"),
            )
        ],
        report,
    )
    order: list[str] = []

    def on_event(event: Event, run: WorkerRun) -> None:
        if event.type == "approval.requested":
            order.append("requested")
        elif event.type == "tool.result" and event.tool == "read_file":
            order.append("sibling result")
            (pending,) = run.state.gate.pending  # still waiting
            run.state.gate.decide(pending.approval_id, "approve")

    events, _ = await drive(registry, "writer", on_event=on_event, models=models(writer=script))
    assert terminal(events).type == "run.completed"
    assert order == ["requested", "sibling result"]
    assert (project / "notes" / "a.md").read_text() == "x"


# ---- modes -----------------------------------------------------------------------------------


async def test_approve_all_runs_gated_calls_without_asking(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers)
    script = Script([write_call()], report)
    events, _ = await drive(
        registry, "writer", approval="approve_all", models=models(writer=script)
    )
    assert terminal(events).type == "run.completed"
    assert not of_type(events, "approval.requested")
    assert not of_type(events, "approval.resolved")
    assert (project / "notes" / "a.md").read_text() == "hello"


async def test_deny_all_denies_gated_calls_without_asking(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers)
    script = Script([write_call()], report)
    events, _ = await drive(registry, "writer", approval="deny_all", models=models(writer=script))
    assert terminal(events).type == "run.completed"
    assert not of_type(events, "approval.requested")
    assert not (project / "notes" / "a.md").exists()
    (ret,) = tool_returns(script.seen[1][0])
    assert ret.outcome == "denied"
    assert "deny_all" in str(ret.content)


async def test_deny_all_still_runs_ungated_tools(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers)
    (project / "notes" / "b.md").write_text("bee")
    script = Script([call("read_file", {"path": "notes/b.md"}, "r1")], report)
    events, _ = await drive(registry, "writer", approval="deny_all", models=models(writer=script))
    assert terminal(events).type == "run.completed"
    (ret,) = tool_returns(script.seen[1][0])
    assert ret.outcome == "success"
    assert ret.content["content"] == "bee"


# ---- approve_for_run -------------------------------------------------------------------------


async def test_approve_for_run_covers_the_same_call_in_a_later_turn(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers)
    script = Script(
        [write_call("same", cid="w1")],
        [write_call("same", cid="w2")],
        [write_call("different", cid="w3")],
        report,
    )
    events, _ = await drive(
        registry, "writer", on_event=decide_each("approve_for_run"), models=models(writer=script)
    )
    assert terminal(events).type == "run.completed"
    requested = of_type(events, "approval.requested")
    # w2 repeats w1 exactly and is not asked; w3 has other args and is
    assert [r.tool_call_id for r in requested] == ["w1", "w3"]
    results = {r.tool_call_id: r.outcome for r in of_type(events, "tool.result")}
    assert results == {"w1": "success", "w2": "success", "w3": "success"}
    assert (project / "notes" / "a.md").read_text() == "different"


async def test_approve_for_run_covers_nested_workers(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers, "boss", allow_workers=["helper"])
    writer(workers, "helper")
    boss = Script(
        [write_call("shared", cid="b1")],
        [call("worker_call", {"worker": "helper", "input_data": "write it"}, "b2")],
        report,
    )
    helper = Script([write_call("shared", cid="h1")], report)
    events, _ = await drive(
        registry,
        "boss",
        on_event=decide_each("approve_for_run"),
        models=models(boss=boss, helper=helper),
    )
    assert terminal(events).type == "run.completed"
    requested = of_type(events, "approval.requested")
    assert [(r.path, r.tool_call_id) for r in requested] == [(("boss",), "b1")]
    child_results = [r for r in of_type(events, "tool.result") if r.path == ("boss", "helper")]
    assert [(r.tool_call_id, r.outcome) for r in child_results] == [("h1", "success")]


async def test_approve_for_run_in_a_child_covers_its_caller(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers, "boss", allow_workers=["helper"])
    writer(workers, "helper")
    boss = Script(
        [call("worker_call", {"worker": "helper", "input_data": "write it"}, "b1")],
        [write_call("shared", cid="b2")],
        report,
    )
    helper = Script([write_call("shared", cid="h1")], report)
    events, _ = await drive(
        registry,
        "boss",
        on_event=decide_each("approve_for_run"),
        models=models(boss=boss, helper=helper),
    )
    assert terminal(events).type == "run.completed"
    requested = of_type(events, "approval.requested")
    assert [(r.path, r.tool_call_id) for r in requested] == [(("boss", "helper"), "h1")]


async def test_plain_approve_is_not_remembered(workers: Path, registry: WorkerRegistry) -> None:
    writer(workers)
    script = Script([write_call(cid="w1")], [write_call(cid="w2")], report)
    events, _ = await drive(
        registry, "writer", on_event=decide_each("approve"), models=models(writer=script)
    )
    assert terminal(events).type == "run.completed"
    assert [r.tool_call_id for r in of_type(events, "approval.requested")] == ["w1", "w2"]


async def test_approve_for_run_is_not_shared_between_runs(
    workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers)
    for _ in range(2):
        script = Script([write_call()], report)
        events, _ = await drive(
            registry,
            "writer",
            on_event=decide_each("approve_for_run"),
            models=models(writer=script),
        )
        assert len(of_type(events, "approval.requested")) == 1


# ---- timeout and cancel ----------------------------------------------------------------------


async def test_unanswered_approval_times_out_as_denied(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers)
    script = Script([write_call()], report)
    events, run = await drive(
        registry,
        "writer",
        models=models(writer=script),
        config=RuntimeConfig(approval_timeout_s=0.2),
    )
    end = terminal(events)
    assert end.type == "run.completed"
    (req,) = of_type(events, "approval.requested")
    assert req.expires_at - req.created_at == pytest.approx(0.2)
    (res,) = of_type(events, "approval.resolved")
    assert (res.approval_id, res.decision, res.reason) == (req.approval_id, "deny", "timed out")
    (ret,) = tool_returns(script.seen[1][0])
    assert ret.outcome == "denied"
    assert "timed out" in str(ret.content)
    assert not (project / "notes" / "a.md").exists()
    with pytest.raises(ApprovalAlreadyDecided):
        run.state.gate.decide(req.approval_id, "approve")


async def test_cancel_while_waiting_resolves_the_approval_as_cancelled(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    writer(workers)
    script = Script([write_call()], report)
    holder: list[WorkerRun] = []
    changes: list[int] = []

    def on_event(event: Event, run: WorkerRun) -> None:
        holder[:] = [run]
        if event.type == "approval.requested":
            assert run.cancel("the user gave up")

    def changed() -> None:
        changes.append(len(holder[0].state.gate.pending))

    events, run = await drive(
        registry,
        "writer",
        on_event=on_event,
        on_approvals_changed=changed,
        models=models(writer=script),
    )
    end = terminal(events)
    assert end.type == "run.cancelled"
    assert end.reason == "the user gave up"
    (req,) = of_type(events, "approval.requested")
    (res,) = of_type(events, "approval.resolved")
    assert (res.approval_id, res.decision) == (req.approval_id, "cancelled")
    assert run.state.gate.pending == []
    assert changes == [1, 0]  # waiting_approval, then back
    assert not (project / "notes" / "a.md").exists()
    assert script.requests == 1
    with pytest.raises(ApprovalAlreadyDecided):
        run.state.gate.decide(req.approval_id, "approve")


# ---- decide() errors -------------------------------------------------------------------------


async def test_decide_errors(workers: Path, registry: WorkerRegistry) -> None:
    writer(workers)
    script = Script([write_call()], report)
    errors: list[tuple[str, type[BaseException], str]] = []

    def expect(label: str, exc_type: type[BaseException], fn: Callable[[], Any]) -> None:
        try:
            fn()
        except exc_type as exc:
            errors.append((label, exc_type, str(exc)))
        else:
            raise AssertionError(f"{label}: no {exc_type.__name__}")

    def on_event(event: Event, run: WorkerRun) -> None:
        if event.type != "approval.requested":
            return
        gate, aid = run.state.gate, event.approval_id
        expect("unknown id", ApprovalNotFound, lambda: gate.decide("nope", "approve"))
        expect("bad kind", InvalidInput, lambda: gate.decide(aid, "maybe"))  # type: ignore[arg-type]
        expect("bad args", InvalidInput, lambda: gate.decide(aid, "approve", args=[1]))  # type: ignore[arg-type]
        assert len(gate.pending) == 1  # the failed decisions changed nothing
        gate.decide(aid, "deny", reason="first")
        expect("second", ApprovalAlreadyDecided, lambda: gate.decide(aid, "approve"))
        expect("third", ApprovalAlreadyDecided, lambda: gate.decide(aid, "deny"))

    events, run = await drive(registry, "writer", on_event=on_event, models=models(writer=script))
    assert terminal(events).type == "run.completed"
    assert [label for label, _, _ in errors] == [
        "unknown id",
        "bad kind",
        "bad args",
        "second",
        "third",
    ]
    assert "'nope'" in errors[0][2]
    assert "deny" in errors[3][2]  # names the decision already taken
    (res,) = of_type(events, "approval.resolved")
    assert (res.decision, res.reason) == ("deny", "first")
    # after the run, the gate still knows what it decided and what it never had
    with pytest.raises(ApprovalAlreadyDecided):
        run.state.gate.decide(res.approval_id, "approve")
    with pytest.raises(ApprovalNotFound):
        run.state.gate.decide("never-existed", "deny")


class _Inv:
    """The little of an Invocation the gate reads."""

    worker_name, path, call_id = "w", ("w",), "c"


async def test_gate_alone_modes_and_remembered_args() -> None:
    emitted: list[Event] = []
    for mode, approved in (("approve_all", True), ("deny_all", False)):
        gate = ApprovalGate("r", EventSink("r", emitted.append), mode=mode)
        decision = await gate.check(_Inv(), "t1", "write_file", {}, Gating("x"))  # type: ignore[arg-type]
        assert decision.approved is approved
        assert gate.pending == []
    assert emitted == []  # nobody is asked, nothing is shown

    asked = asyncio.Event()

    def deliver(event: Event) -> None:
        emitted.append(event)
        if event.type == "approval.requested":
            asked.set()

    gate = ApprovalGate("r", EventSink("r", deliver))
    first = asyncio.create_task(
        gate.check(_Inv(), "t1", "tool", {"b": 1, "a": [1, 2]}, Gating("x"))  # type: ignore[arg-type]
    )
    with anyio.fail_after(5):
        await asked.wait()
        asked.clear()
        gate.decide(gate.pending[0].approval_id, "approve_for_run")
        assert (await first).approved
        # the same tool with the same args (in any key order) is remembered...
        again = await gate.check(_Inv(), "t2", "tool", {"a": [1, 2], "b": 1}, Gating("x"))  # type: ignore[arg-type]
    assert (again.approved, again.kind) == (True, "approve_for_run")
    assert [e.type for e in emitted] == ["approval.requested", "approval.resolved"]
    # ...another tool or other args are not
    other = asyncio.create_task(gate.check(_Inv(), "t3", "other", {"b": 1}, Gating("x")))  # type: ignore[arg-type]
    with anyio.fail_after(5):
        await asked.wait()
    assert gate.pending[0].tool == "other"
    other.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other
    assert emitted[-1].type == "approval.resolved" and emitted[-1].decision == "cancelled"
    assert gate.pending == []


# ---- which calls are gated -------------------------------------------------------------------


async def test_write_approval_false_and_read_approval_true(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    sandbox = {
        "paths": {
            "free": {"root": "free", "mode": "rw", "write_approval": False},
            "secret": {"root": "secret", "mode": "ro", "read_approval": True},
        }
    }
    write_worker(workers, "mixed", model="script:mixed", sandbox=sandbox)
    (project / "secret").mkdir()
    (project / "secret" / "s.md").write_text("classified")
    script = Script(
        [
            calls(
                ("write_file", {"path": "free/f.md", "content": "ok"}, "w1"),
                ("read_file", {"path": "secret/s.md"}, "r1"),
            )
        ],
        report,
    )
    events, _ = await drive(
        registry, "mixed", on_event=decide_each("deny", reason="no"), models=models(mixed=script)
    )
    assert terminal(events).type == "run.completed"
    (req,) = of_type(events, "approval.requested")
    assert (req.tool, req.description) == ("read_file", "Read secret/s.md")
    results = {r.tool_call_id: r.outcome for r in of_type(events, "tool.result")}
    assert results == {"w1": "success", "r1": "denied"}
    assert (project / "free" / "f.md").read_text() == "ok"


async def test_a_refused_write_is_not_put_to_a_person(
    workers: Path, registry: WorkerRegistry
) -> None:
    """A write the tool refuses anyway (read-only, unknown sandbox, '..') asks nobody."""
    sandbox = {"paths": {"notes": {"root": "notes", "mode": "rw"}, "ro": {"root": "ro"}}}
    write_worker(workers, "writer", model="script:writer", sandbox=sandbox)
    script = Script(
        [
            calls(
                ("write_file", {"path": "ro/x.md", "content": "x"}, "w1"),
                ("write_file", {"path": "nope/x.md", "content": "x"}, "w2"),
                ("write_file", {"path": "notes/../x.md", "content": "x"}, "w3"),
            )
        ],
        report,
    )
    events, _ = await drive(registry, "writer", models=models(writer=script))
    assert terminal(events).type == "run.completed"
    assert not of_type(events, "approval.requested")
    assert {r.outcome for r in of_type(events, "tool.result")} == {"failed"}


TOOLS = '''
from pathlib import Path


def stamp(text: str) -> str:
    """Stamp a text (leaves a trace on disk so the test can see it ran)."""
    Path(__file__).with_name("stamped.txt").write_text(text)
    return "stamped " + text


def free(text: str) -> str:
    """Not gated."""
    return "free " + text
'''


async def test_require_approval_on_a_custom_tool(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(
        workers,
        "stamper",
        tools=TOOLS,
        custom_tools=["stamp", "free"],
        require_approval=["stamp"],
        model="script:stamper",
    )
    trace = workers / "stamper" / "stamped.txt"

    script = Script([calls(("stamp", {"text": "a"}, "s1"), ("free", {"text": "b"}, "f1"))], report)
    events, _ = await drive(
        registry, "stamper", on_event=decide_each("deny"), models=models(stamper=script)
    )
    (req,) = of_type(events, "approval.requested")
    assert (req.tool, req.args, req.description) == ("stamp", {"text": "a"}, "Call stamp")
    results = {r.tool_call_id: r.outcome for r in of_type(events, "tool.result")}
    assert results == {"s1": "denied", "f1": "success"}
    assert not trace.exists()

    script = Script([call("stamp", {"text": "a"}, "s1")], report)
    events, _ = await drive(
        registry, "stamper", on_event=decide_each("approve"), models=models(stamper=script)
    )
    assert terminal(events).output == "stamp=success:stamped a"
    assert trace.read_text() == "a"


async def test_require_approval_on_worker_call_shows_attachments_with_sizes(
    project: Path, workers: Path, registry: WorkerRegistry
) -> None:
    (project / "input").mkdir()
    (project / "input" / "deck.pdf").write_bytes(b"%PDF-1.4 twelve")
    sandbox = {"paths": {"input": {"root": "input", "mode": "ro"}}}
    write_worker(
        workers,
        "boss",
        model="script:boss",
        allow_workers=["helper"],
        sandbox=sandbox,
        require_approval=["worker_call"],
    )
    write_worker(workers, "helper", model="script:helper")
    args = {"worker": "helper", "input_data": "read", "attachments": ["input/deck.pdf"]}
    boss = Script([call("worker_call", args, "b1")], report)
    helper = Script(["seen"])
    started_when_asked: list[list[str]] = []
    so_far: list[Event] = []

    def on_event(event: Event, run: WorkerRun) -> None:
        so_far.append(event)
        if event.type == "approval.requested":
            started_when_asked.append([e.worker for e in of_type(so_far, "worker.started")])
            run.state.gate.decide(event.approval_id, "approve")

    events, _ = await drive(
        registry, "boss", on_event=on_event, models=models(boss=boss, helper=helper)
    )
    assert terminal(events).type == "run.completed"
    (req,) = of_type(events, "approval.requested")
    assert req.tool == "worker_call"
    assert req.description == "Call worker 'helper' with 1 attachment(s)"
    assert req.details == {"attachments": [{"path": "input/deck.pdf", "bytes": 15}]}
    assert started_when_asked == [["boss"]]  # the child starts only once approved
    (part,) = [p for p in user_prompt(helper.seen[0][0]).content if not isinstance(p, str)]
    assert part.data == b"%PDF-1.4 twelve"
    assert terminal(events).output == "worker_call=success:seen"


async def test_gated_worker_call_denied_never_starts_the_child(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(
        workers,
        "boss",
        model="script:boss",
        allow_workers=["helper"],
        require_approval=["worker_call"],
    )
    write_worker(workers, "helper", model="script:helper")
    boss = Script([call("worker_call", {"worker": "helper"}, "b1")], report)
    helper = Script(["never"])
    events, _ = await drive(
        registry,
        "boss",
        on_event=decide_each("deny", reason="not now"),
        models=models(boss=boss, helper=helper),
    )
    assert terminal(events).type == "run.completed"
    (req,) = of_type(events, "approval.requested")
    assert req.details == {"attachments": []}
    assert [e.worker for e in of_type(events, "worker.started")] == ["boss"]
    assert helper.requests == 0
    assert "not now" in terminal(events).output


async def test_require_approval_naming_an_unknown_tool_makes_the_worker_invalid(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "typo", model="script:typo", require_approval=["wrte_file"])
    write_worker(workers, "fine", model="script:fine", require_approval=["worker_call"])
    with pytest.raises(InvalidWorker) as info:
        registry.get("typo")
    assert "workers/typo.worker" in info.value.message
    assert "require_approval" in info.value.message and "'wrte_file'" in info.value.message
    assert registry.get("fine").spec.require_approval == ["worker_call"]  # others keep working
    events, _ = await drive(registry, "typo", models=models(typo=Script(["x"])))
    end = terminal(events)
    assert end.type == "run.failed"
    assert end.error["type"] == "invalid_worker"


async def test_require_approval_error_names_the_field(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "typo", model="script:typo", require_approval=["wrte_file"])
    with pytest.raises(InvalidWorker) as info:
        registry.get("typo")
    assert info.value.field == "require_approval"


async def test_approve_for_run_also_resolves_identical_calls_already_waiting() -> None:
    emitted: list[Event] = []
    changed = asyncio.Event()
    gate = ApprovalGate("r", EventSink("r", emitted.append), on_change=changed.set)
    args = {"path": "notes/a.md", "content": "x"}
    first = asyncio.create_task(gate.check(_Inv(), "t1", "write_file", args, Gating("x")))  # type: ignore[arg-type]
    twin = asyncio.create_task(gate.check(_Inv(), "t2", "write_file", dict(args), Gating("x")))  # type: ignore[arg-type]
    other = asyncio.create_task(
        gate.check(_Inv(), "t3", "write_file", {**args, "content": "y"}, Gating("x"))  # type: ignore[arg-type]
    )
    with anyio.fail_after(5):
        while len(gate.pending) < 3:
            changed.clear()
            await changed.wait()
        gate.decide(gate.pending[0].approval_id, "approve_for_run")
        assert (await first).approved and (await twin).approved
    assert [p.tool_call_id for p in gate.pending] == ["t3"]  # other args still wait
    other.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other


async def test_edited_args_that_do_not_fit_the_tool_are_refused_and_the_call_keeps_waiting() -> (
    None
):
    from pydantic import TypeAdapter

    adapter = TypeAdapter(dict[str, int])
    changed = asyncio.Event()
    gate = ApprovalGate("r", EventSink("r", lambda e: None), on_change=changed.set)
    call = asyncio.create_task(
        gate.check(_Inv(), "t1", "add", {"a": 1}, Gating("x"), validate=adapter.validate_python)  # type: ignore[arg-type]
    )
    with anyio.fail_after(5):
        await changed.wait()
        aid = gate.pending[0].approval_id
        with pytest.raises(InvalidInput, match="Edited args do not fit tool 'add'"):
            gate.decide(aid, "approve", args={"a": "many"})
        assert not call.done() and gate.pending  # still waiting for a usable decision
        gate.decide(aid, "approve", args={"a": "2"})
        decision = await call
    assert decision.args == {"a": 2}  # validated (and coerced) when it arrived
