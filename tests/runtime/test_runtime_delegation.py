"""worker_call: nested events, refusals as failed tool calls, concurrency, usage, attachments."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest
from pydantic_ai.models.function import FunctionModel
from runtime_helpers import (
    Script,
    ScriptedModels,
    binary_parts,
    call,
    calls,
    collect,
    of_type,
    terminal,
    text_of,
    tool_returns,
    user_prompt,
    write_worker,
)

from app.runtime import RuntimeConfig, WorkerRegistry

pytestmark = pytest.mark.anyio


@pytest.fixture
def workers(tmp_path: Path) -> Path:
    folder = tmp_path / "workers"
    folder.mkdir()
    return folder


@pytest.fixture
def registry(workers: Path) -> WorkerRegistry:
    return WorkerRegistry(workers)


def report(messages, info) -> list[str]:
    """The caller's second turn: say what each tool call returned, and how."""
    return [
        "; ".join(f"{r.outcome}: {r.content}" for r in tool_returns(messages)),
    ]


def delegate(worker: str, input_data: object = None, call_id: str = "call-1", **extra) -> Script:
    args = {"worker": worker, "input_data": input_data, **extra}
    return Script([call("worker_call", args, call_id)], report)


# ---- the nested event stream ---------------------------------------------------------------


async def test_child_events_are_nested_under_the_caller(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "boss", model="script:boss", allow_workers=["helper"])
    write_worker(workers, "helper", model="script:helper")
    boss = delegate("helper", "summarize this", "tc-7")
    helper = Script(["Sum", "mary", " here"])
    models = ScriptedModels({"script:boss": boss.model(), "script:helper": helper.model()})
    events = await collect(registry, "boss", "go", models=models)

    end = terminal(events)
    assert end.type == "run.completed"
    assert end.output == "success: Summary here"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    run_id = events[0].run_id
    assert {e.run_id for e in events} == {run_id}

    child = [e for e in events if e.path == ("boss", "helper")]
    root = [e for e in events if e.path == ("boss",)]
    assert len(child) + len(root) == len(events)
    assert {e.worker for e in child} == {"helper"}
    assert {e.call_id for e in root} == {run_id}
    (child_call_id,) = {e.call_id for e in child}
    assert child_call_id != run_id

    started = child[0]
    assert started.type == "worker.started"
    assert (started.parent_call_id, started.tool_call_id) == (run_id, "tc-7")
    assert started.model == "script:helper"
    assert child[-1].type == "worker.finished"
    assert (child[-1].status, child[-1].output) == ("succeeded", "Summary here")
    assert text_of(child) == "Summary here"
    assert [e.delta for e in child if e.type == "text.delta"] == ["Sum", "mary", " here"]

    kinds = [(e.type, e.path) for e in events]
    tool_call_at = kinds.index(("tool.call", ("boss",)))
    result_at = kinds.index(("tool.result", ("boss",)))
    assert tool_call_at < events.index(child[0])
    assert events.index(child[-1]) < result_at  # the child streams before the caller's result
    result = events[result_at]
    assert (result.tool, result.tool_call_id, result.outcome) == ("worker_call", "tc-7", "success")
    assert result.content == "Summary here"
    assert user_prompt(helper.seen[0][0]).content == "summarize this"


async def test_child_with_output_schema_returns_json(
    workers: Path, registry: WorkerRegistry
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    write_worker(workers, "boss", model="script:boss", allow_workers=["counter"])
    write_worker(workers, "counter", model="script:counter", output_schema=schema)
    counter = Script(lambda m, info: [call(info.output_tools[0].name, {"n": 3}, "o1")])
    boss = delegate("counter", {"text": "a b c"})
    models = ScriptedModels({"script:boss": boss.model(), "script:counter": counter.model()})
    events = await collect(registry, "boss", "go", models=models)
    assert terminal(events).type == "run.completed"
    (result,) = of_type(events, "tool.result")
    assert result.content == {"n": 3}
    (ret,) = tool_returns(boss.seen[1][0])
    assert ret.content == {"n": 3}


# ---- the tool offered ----------------------------------------------------------------------


async def test_allow_list_is_an_enum_in_the_tool_schema(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "boss", model="script:boss", allow_workers=["alpha", "beta"])
    write_worker(workers, "alpha", description="Knows the alphabet")
    write_worker(workers, "beta")
    boss = Script(["no calls"])
    await collect(registry, "boss", "x", models=ScriptedModels({"script:boss": boss.model()}))
    (tool,) = boss.seen[0][1].function_tools
    assert tool.name == "worker_call"
    props = tool.parameters_json_schema["properties"]
    assert props["worker"]["enum"] == ["alpha", "beta"]
    assert "attachments" not in props  # no sandbox, nothing to attach
    assert tool.parameters_json_schema["required"] == ["worker"]
    assert "alpha: Knows the alphabet" in (tool.description or "")


async def test_wildcard_allow_list_has_no_enum(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "boss", model="script:boss", allow_workers=["*"])
    boss = Script(["no calls"])
    await collect(registry, "boss", "x", models=ScriptedModels({"script:boss": boss.model()}))
    (tool,) = boss.seen[0][1].function_tools
    assert "enum" not in tool.parameters_json_schema["properties"]["worker"]


async def test_no_allow_list_no_tool(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "loner", model="script:m")
    script = Script(["alone"])
    await collect(registry, "loner", "x", models=ScriptedModels({"script:m": script.model()}))
    assert script.seen[0][1].function_tools == []


# ---- refusals and failures: failed tool calls the caller's model sees -----------------------


async def _refused(registry: WorkerRegistry, boss: Script, models: dict) -> str:
    """Run `boss`; assert the call failed, the model saw it and the run still succeeded."""
    scripted = ScriptedModels({"script:boss": boss.model(), **models})
    events = await collect(registry, "boss", "go", models=scripted)
    end = terminal(events)
    assert end.type == "run.completed", end
    results = of_type(events, "tool.result")
    assert [r.outcome for r in results] == ["failed"]
    (seen,) = tool_returns(boss.seen[1][0])
    assert seen.outcome == "failed"
    assert end.output.startswith("failed: ")
    return str(results[0].content)


async def test_disallowed_worker_is_a_failed_call(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "boss", model="script:boss", allow_workers=["helper"])
    write_worker(workers, "helper", model="script:helper")
    write_worker(workers, "secret", model="script:secret")
    secret = Script(["classified"])
    message = await _refused(registry, delegate("secret"), {"script:secret": secret.model()})
    assert "secret" in message
    assert "helper" in message  # says what is allowed
    assert secret.requests == 0


async def test_unknown_worker_is_a_failed_call(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "boss", model="script:boss", allow_workers=["*"])
    message = await _refused(registry, delegate("ghost"), {})
    assert "ghost" in message


async def test_invalid_child_definition_is_a_failed_call(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "boss", model="script:boss", allow_workers=["*"])
    write_worker(workers, "broken", colour="red")
    message = await _refused(registry, delegate("broken"), {})
    assert "colour" in message


async def test_child_input_not_matching_its_schema_is_a_failed_call(
    workers: Path, registry: WorkerRegistry
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    write_worker(workers, "boss", model="script:boss", allow_workers=["strict"])
    write_worker(workers, "strict", model="script:strict", input_schema=schema)
    strict = Script(["never"])
    message = await _refused(
        registry, delegate("strict", {"n": "x"}), {"script:strict": strict.model()}
    )
    assert "input_schema" in message
    assert strict.requests == 0


async def test_child_with_unusable_model_is_a_failed_call(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "boss", model="script:boss", allow_workers=["*"])
    write_worker(workers, "odd", model="nonsense")
    message = await _refused(registry, delegate("odd"), {})
    assert "nonsense" in message


async def test_child_whose_model_crashes_is_a_failed_call(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "boss", model="script:boss", allow_workers=["*"])
    write_worker(workers, "fragile", model="script:fragile")

    def crash(messages, info):
        raise RuntimeError("provider SDK bug")

    boss = delegate("fragile")
    models = ScriptedModels({"script:boss": boss.model(), "script:fragile": Script(crash).model()})
    events = await collect(registry, "boss", "go", models=models)
    end = terminal(events)
    assert end.type == "run.completed"
    (result,) = of_type(events, "tool.result")
    assert result.outcome == "failed"
    assert "provider SDK bug" in result.content
    assert tool_returns(boss.seen[1][0])[0].outcome == "failed"
    # The child's node in the tree is closed, not left running.
    child_end = [e for e in of_type(events, "worker.finished") if e.worker == "fragile"]
    assert [e.status for e in child_end] == ["failed"]
    assert "provider SDK bug" in child_end[0].error["message"]


async def test_depth_limit(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "top", model="script:top", allow_workers=["mid"])
    write_worker(workers, "mid", model="script:mid", allow_workers=["leaf"])
    write_worker(workers, "leaf", model="script:leaf")
    top = delegate("mid", "go on")
    mid = delegate("leaf", "go deeper")
    leaf = Script(["too deep"])
    models = ScriptedModels(
        {"script:top": top.model(), "script:mid": mid.model(), "script:leaf": leaf.model()}
    )
    events = await collect(registry, "top", "go", models=models, config=RuntimeConfig(max_depth=1))
    end = terminal(events)
    assert end.type == "run.completed"
    assert leaf.requests == 0
    assert not [e for e in events if e.worker == "leaf"]
    results = {e.worker: e for e in of_type(events, "tool.result")}
    assert results["mid"].outcome == "failed"
    assert "depth" in results["mid"].content
    assert results["top"].outcome == "success"
    assert results["top"].content.startswith("failed: ")  # mid reported the refusal
    assert end.output == f"success: {results['top'].content}"


async def test_depth_limit_allows_the_last_level(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "top", model="script:top", allow_workers=["mid"])
    write_worker(workers, "mid", model="script:mid", allow_workers=["leaf"])
    write_worker(workers, "leaf", model="script:leaf")
    models = ScriptedModels(
        {
            "script:top": delegate("mid").model(),
            "script:mid": delegate("leaf").model(),
            "script:leaf": Script(["bottom"]).model(),
        }
    )
    events = await collect(registry, "top", "go", models=models, config=RuntimeConfig(max_depth=2))
    assert terminal(events).output == "success: success: bottom"
    leaf_events = [e for e in events if e.worker == "leaf"]
    assert leaf_events[0].path == ("top", "mid", "leaf")


# ---- concurrency and usage -----------------------------------------------------------------


async def test_parallel_worker_calls_run_concurrently(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "boss", model="script:boss", allow_workers=["sub"])
    write_worker(workers, "sub", model="script:sub")
    a_started = asyncio.Event()
    b_released_a = asyncio.Event()

    async def sub_model(messages, info):
        prompt = user_prompt(messages).content
        if prompt == "A":
            a_started.set()
            with anyio.fail_after(5):  # only B, running at the same time, can set it
                await b_released_a.wait()
            yield "A "
            yield "done"
        else:
            with anyio.fail_after(5):
                await a_started.wait()
            b_released_a.set()
            yield "B "
            yield "done"

    boss = Script(
        [
            calls(
                ("worker_call", {"worker": "sub", "input_data": "A"}, "ca"),
                ("worker_call", {"worker": "sub", "input_data": "B"}, "cb"),
            )
        ],
        report,
    )
    models = ScriptedModels(
        {"script:boss": boss.model(), "script:sub": FunctionModel(stream_function=sub_model)}
    )
    events = await collect(registry, "boss", "go", models=models)
    end = terminal(events)
    assert end.type == "run.completed"
    results = {r.tool_call_id: (r.outcome, r.content) for r in of_type(events, "tool.result")}
    assert results == {"ca": ("success", "A done"), "cb": ("success", "B done")}
    # Two calls of the same worker are told apart by call_id.
    starts = {
        e.tool_call_id: e.call_id for e in of_type(events, "worker.started") if e.tool_call_id
    }
    assert len(set(starts.values())) == 2
    for tool_call_id, letter in (("ca", "A"), ("cb", "B")):
        mine = [e for e in events if e.call_id == starts[tool_call_id]]
        assert text_of(mine) == f"{letter} done"


async def test_usage_is_summed_over_the_tree(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "boss", model="script:boss", allow_workers=["helper"])
    write_worker(workers, "helper", model="script:helper")
    models = ScriptedModels(
        {
            "script:boss": delegate("helper", "x").model(),
            "script:helper": Script(["one two three"]).model(),
        }
    )
    events = await collect(registry, "boss", "go", models=models)
    end = terminal(events)
    finished = {e.worker: e.usage for e in of_type(events, "worker.finished")}
    assert finished["helper"]["requests"] == 1
    assert finished["boss"]["requests"] == 2
    assert end.usage["requests"] == 3
    assert end.usage["tool_calls"] == 1
    for key in ("input_tokens", "output_tokens"):
        assert end.usage[key] == finished["boss"][key] + finished["helper"][key]
        assert finished["helper"][key] > 0


async def test_usage_limit_is_shared_by_the_tree(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(
        workers,
        "boss",
        model="script:boss",
        allow_workers=["busy"],
        usage_limits={"request_limit": 2},
    )
    write_worker(
        workers,
        "busy",
        model="script:busy",
        tools="def step() -> str:\n    return 'stepped'\n",
        custom_tools=["step"],
    )
    busy = Script([call("step", {}, "s1")], ["never reached"])
    boss = delegate("busy")
    models = ScriptedModels({"script:boss": boss.model(), "script:busy": busy.model()})
    events = await collect(registry, "boss", "go", models=models)
    end = terminal(events)
    assert end.type == "run.failed"
    assert end.error["type"] == "usage_limit_exceeded"
    assert end.usage["requests"] == 2
    # The child made the tree's second request, then was stopped before a third.
    assert busy.requests == 1
    assert boss.requests == 1
    child_end = [e for e in of_type(events, "worker.finished") if e.worker == "busy"]
    assert child_end[0].status == "failed"
    assert child_end[0].error["type"] == "usage_limit_exceeded"
    call_result = [r for r in of_type(events, "tool.result") if r.tool == "worker_call"]
    assert call_result[0].outcome == "failed"


# ---- attachments from the caller's sandbox -------------------------------------------------

PDF = b"%PDF-1.4\n% not really a pdf\n\x00\x01\x02"


@pytest.fixture
def sandboxed(workers: Path, tmp_path: Path) -> Path:
    """boss has a sandbox `input` (tmp/input, read-only) holding deck.pdf and notes.md."""
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "deck.pdf").write_bytes(PDF)
    (tmp_path / "input" / "notes.md").write_text("# notes", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("outside the sandbox", encoding="utf-8")
    write_worker(
        workers,
        "boss",
        model="script:boss",
        allow_workers=["reader"],
        sandbox={"paths": {"input": {"root": "./input", "mode": "ro"}}},
    )
    write_worker(workers, "reader", model="script:reader", attachment_policy={"max_attachments": 1})
    return tmp_path


async def test_attachments_reach_the_child_model(sandboxed: Path, registry: WorkerRegistry) -> None:
    def read(messages, info):
        return [f"{f.identifier} {f.media_type} {len(f.data)}" for f in binary_parts(messages)]

    reader = Script(read)
    boss = delegate("reader", "summarize", attachments=["input/deck.pdf"])
    models = ScriptedModels({"script:boss": boss.model(), "script:reader": reader.model()})
    events = await collect(registry, "boss", "go", models=models)
    assert terminal(events).type == "run.completed"
    (result,) = of_type(events, "tool.result")
    assert result.outcome == "success"
    assert result.content == f"deck.pdf application/pdf {len(PDF)}"

    (attached,) = binary_parts(reader.seen[0][0])
    assert attached.data == PDF
    assert attached.media_type == "application/pdf"
    assert "summarize" in user_prompt(reader.seen[0][0]).content
    tools = {t.name: t for t in boss.seen[0][1].function_tools}
    props = tools["worker_call"].parameters_json_schema["properties"]
    assert props["attachments"]["type"] == "array"


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["input/../secret.txt"], ".."),
        (["input/sub/../../secret.txt"], ".."),
        (["nosuch/deck.pdf"], "nosuch"),
        (["/etc/passwd"], "Unknown sandbox"),
        (["input//etc/passwd"], "absolute"),
        (["input/missing.pdf"], "does not exist"),
        (["input/deck.pdf", "input/notes.md"], "Too many attachments"),
        (["input"], "no file"),
    ],
)
async def test_bad_attachments_fail_the_call_before_the_child_runs(
    sandboxed: Path, registry: WorkerRegistry, paths: list[str], expected: str
) -> None:
    reader = Script(["should not run"])
    boss = delegate("reader", "summarize", attachments=paths)
    message = await _refused(registry, boss, {"script:reader": reader.model()})
    assert expected in message
    assert "outside the sandbox" not in message
    assert reader.requests == 0


async def test_symlink_out_of_the_sandbox_is_refused(
    sandboxed: Path, registry: WorkerRegistry
) -> None:
    (sandboxed / "input" / "leak.pdf").symlink_to(sandboxed / "secret.txt")
    reader = Script(["should not run"])
    boss = delegate("reader", "x", attachments=["input/leak.pdf"])
    message = await _refused(registry, boss, {"script:reader": reader.model()})
    assert "leak.pdf" in message
    assert reader.requests == 0


async def test_attachments_without_a_sandbox_are_refused(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "boss", model="script:boss", allow_workers=["reader"])
    write_worker(workers, "reader", model="script:reader")
    reader = Script(["should not run"])
    boss = delegate("reader", "x", attachments=["input/deck.pdf"])
    message = await _refused(registry, boss, {"script:reader": reader.model()})
    assert "sandbox" in message
    assert reader.requests == 0
