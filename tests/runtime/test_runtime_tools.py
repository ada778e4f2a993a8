"""Custom tools from tools.py: sync and async tools work, failures go back to the model."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from runtime_helpers import (
    Script,
    ScriptedModels,
    call,
    calls,
    collect,
    of_type,
    terminal,
    tool_returns,
    write_worker,
)

from app.runtime import WorkerRegistry

pytestmark = pytest.mark.anyio

TOOLS = '''
import asyncio
import threading


def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


async def shout(text: str) -> str:
    """Upper-case a text after yielding to the loop."""
    await asyncio.sleep(0)
    return text.upper()


def where_sync() -> int:
    """The thread this sync tool runs in."""
    return threading.get_ident()


async def where_async() -> int:
    """The thread this async tool runs in."""
    return threading.get_ident()


def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


async def explode() -> str:
    """Always fails."""
    raise RuntimeError("the tool blew up")
'''

ALL = ["add", "shout", "where_sync", "where_async", "divide", "explode"]


@pytest.fixture
def registry(tmp_path: Path) -> WorkerRegistry:
    workers = tmp_path / "workers"
    write_worker(workers, "toolbox", tools=TOOLS, custom_tools=ALL, model="script:m")
    return WorkerRegistry(workers)


def summary(messages, info) -> list[str]:
    return ["; ".join(f"{r.tool_name}={r.outcome}:{r.content}" for r in tool_returns(messages))]


async def run_script(registry: WorkerRegistry, script: Script):
    return await collect(
        registry, "toolbox", "go", models=ScriptedModels({"script:m": script.model()})
    )


async def test_tools_are_offered_with_schema_from_signature(registry: WorkerRegistry) -> None:
    script = Script(["ok"])
    await run_script(registry, script)
    tools = {t.name: t for t in script.seen[0][1].function_tools}
    assert sorted(tools) == sorted(ALL)
    add = tools["add"]
    assert add.description is not None and "Add two numbers" in add.description
    props = add.parameters_json_schema["properties"]
    assert props["a"]["type"] == "number"
    assert props["a"].get("description") == "The first number."
    assert add.parameters_json_schema["required"] == ["a", "b"]


async def test_sync_and_async_tools_work(registry: WorkerRegistry) -> None:
    script = Script(
        [calls(("add", {"a": 2, "b": 40}, "c1"), ("shout", {"text": "hey"}, "c2"))], summary
    )
    events = await run_script(registry, script)
    end = terminal(events)
    assert end.type == "run.completed"
    assert end.output == "add=success:42.0; shout=success:HEY"
    tool_calls = of_type(events, "tool.call")
    assert [(c.tool, c.args, c.tool_call_id) for c in tool_calls] == [
        ("add", {"a": 2, "b": 40}, "c1"),
        ("shout", {"text": "hey"}, "c2"),
    ]
    results = {
        r.tool_call_id: (r.tool, r.outcome, r.content) for r in of_type(events, "tool.result")
    }
    assert results == {"c1": ("add", "success", 42.0), "c2": ("shout", "success", "HEY")}
    assert end.usage["tool_calls"] == 2
    assert end.usage["requests"] == 2


async def test_sync_tools_run_off_the_loop_and_async_tools_on_it(
    registry: WorkerRegistry,
) -> None:
    script = Script([calls(("where_sync", {}, "c1"), ("where_async", {}, "c2"))], summary)
    events = await run_script(registry, script)
    assert terminal(events).type == "run.completed"
    threads = {r.tool: r.content for r in of_type(events, "tool.result")}
    loop_thread = threading.get_ident()
    assert threads["where_async"] == loop_thread
    assert threads["where_sync"] != loop_thread


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("explode", {}, "RuntimeError: the tool blew up"),
        ("divide", {"a": 1, "b": 0}, "ZeroDivisionError"),
    ],
)
async def test_a_tool_that_raises_is_a_failed_call_the_model_sees(
    registry: WorkerRegistry, tool: str, args: dict, message: str
) -> None:
    def recover(messages, info) -> list[str]:
        (ret,) = tool_returns(messages)
        assert ret.outcome == "failed"
        assert message in str(ret.content)
        return ["recovered after ", ret.tool_name]

    script = Script([call(tool, args, "c1")], recover)
    events = await run_script(registry, script)
    end = terminal(events)
    assert end.type == "run.completed"
    assert end.output == f"recovered after {tool}"
    (result,) = of_type(events, "tool.result")
    assert (result.tool_call_id, result.tool, result.outcome) == ("c1", tool, "failed")
    assert message in str(result.content)
    assert script.requests == 2


async def test_a_failing_tool_does_not_stop_its_siblings(registry: WorkerRegistry) -> None:
    script = Script([calls(("explode", {}, "c1"), ("add", {"a": 1, "b": 1}, "c2"))], summary)
    events = await run_script(registry, script)
    end = terminal(events)
    assert end.type == "run.completed"
    outcomes = {r.tool_call_id: r.outcome for r in of_type(events, "tool.result")}
    assert outcomes == {"c1": "failed", "c2": "success"}
    assert "add=success:2.0" in end.output


async def test_bad_arguments_are_sent_back_for_a_retry(registry: WorkerRegistry) -> None:
    def fix(messages, info):
        return [call("add", {"a": 1, "b": 2}, "c2")]

    script = Script([call("add", {"a": "one"}, "c1")], fix, summary)
    events = await run_script(registry, script)
    end = terminal(events)
    assert end.type == "run.completed"
    assert end.output == "add=success:3.0"
    outcomes = [r.outcome for r in of_type(events, "tool.result")]
    assert outcomes == ["retried", "success"]
