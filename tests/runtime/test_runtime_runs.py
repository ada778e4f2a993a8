"""One worker run: the event stream, the echo model, model resolution, schemas."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest
from pydantic_ai.models.function import DeltaThinkingPart, FunctionModel
from runtime_helpers import (
    Script,
    ScriptedModels,
    call,
    calls,
    collect,
    of_type,
    terminal,
    text_of,
    tool_returns,
    write_worker,
)

from app.runtime import InvalidInput, RuntimeConfig, WorkerRegistry, WorkerRun

pytestmark = pytest.mark.anyio


@pytest.fixture
def workers(tmp_path: Path) -> Path:
    folder = tmp_path / "workers"
    folder.mkdir()
    return folder


@pytest.fixture
def registry(workers: Path) -> WorkerRegistry:
    return WorkerRegistry(workers)


# ---- the event stream ----------------------------------------------------------------------


async def test_streamed_run_event_sequence(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "talker", model="script:m")
    script = Script(["Hel", "lo", " wor", "ld!"])
    models = ScriptedModels({"script:m": script.model()})
    events = await collect(registry, "talker", "hi", models=models)

    kinds = [e.type for e in events]
    assert kinds == [
        "run.started",
        "worker.started",
        "text.delta",
        "text.delta",
        "text.delta",
        "text.delta",
        "worker.finished",
        "run.completed",
    ]
    # The first chunk arrives in PartStartEvent and must not be lost.
    assert [e.delta for e in of_type(events, "text.delta")] == ["Hel", "lo", " wor", "ld!"]
    end = terminal(events)
    assert end.output == "Hello world!" == text_of(events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    run_id = events[0].run_id
    for e in events:
        assert (e.run_id, e.worker, e.path, e.call_id) == (run_id, "talker", ("talker",), run_id)
    started = events[0]
    assert (started.model, started.input) == ("script:m", "hi")
    ws = events[1]
    assert (ws.model, ws.parent_call_id, ws.tool_call_id) == ("script:m", None, None)
    finished = of_type(events, "worker.finished")[0]
    assert (finished.status, finished.output) == ("succeeded", "Hello world!")
    assert finished.usage["requests"] == 1
    assert end.usage["requests"] == 1
    assert end.usage["output_tokens"] > 0


async def test_first_chunk_of_every_response_is_kept(
    workers: Path, registry: WorkerRegistry
) -> None:
    tools = "def ping() -> str:\n    return 'pong'\n"
    write_worker(workers, "tooly", tools=tools, custom_tools=["ping"], model="script:m")
    script = Script(
        [call("ping", {}, "c1")],
        lambda messages, info: ["Got ", tool_returns(messages)[0].content, "."],
    )
    events = await collect(
        registry, "tooly", "x", models=ScriptedModels({"script:m": script.model()})
    )
    end = terminal(events)
    assert end.output == "Got pong."
    assert text_of(events) == "Got pong."
    kinds = [e.type for e in events]
    assert kinds.index("tool.result") < kinds.index("text.delta")


async def test_thinking_is_streamed_apart_from_text(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "thinker", model="script:m")

    async def think_then_answer(messages, info):
        yield {0: DeltaThinkingPart(content="Let me ")}
        yield {0: DeltaThinkingPart(content="think.")}
        yield "The "
        yield "answer"

    models = ScriptedModels({"script:m": FunctionModel(stream_function=think_then_answer)})
    events = await collect(registry, "thinker", "?", models=models)
    assert [e.delta for e in of_type(events, "thinking.delta")] == ["Let me ", "think."]
    assert text_of(events) == "The answer" == terminal(events).output


async def test_run_id_can_be_chosen(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "echoer")
    seen = []
    run = WorkerRun(registry, "echoer", "a b", on_event=seen.append, run_id="run-42")
    with anyio.fail_after(10):
        result = await run.execute()
    assert (result.run_id, result.status, result.output) == ("run-42", "succeeded", "a b")
    assert {e.run_id for e in seen} == {"run-42"}
    assert seen[-1].type == "run.completed"


async def test_unknown_worker_fails_the_run(registry: WorkerRegistry) -> None:
    events = await collect(registry, "ghost", "x")
    end = terminal(events)
    assert end.type == "run.failed"
    assert end.error["type"] == "worker_not_found"
    assert "ghost" in end.error["message"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_invalid_worker_fails_the_run(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "bad", colour="red")
    end = terminal(await collect(registry, "bad", "x"))
    assert end.type == "run.failed"
    assert end.error["type"] == "invalid_worker"
    assert "colour" in end.error["message"]


async def test_model_exception_fails_the_run_with_one_terminal_event(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "flaky", model="script:m")

    def boom(messages, info):
        raise RuntimeError("the model exploded")

    events = await collect(
        registry, "flaky", "x", models=ScriptedModels({"script:m": Script(boom).model()})
    )
    end = terminal(events)
    assert end.type == "run.failed"
    assert "the model exploded" in end.error["message"]
    (finished,) = of_type(events, "worker.finished")
    assert finished.status == "failed"
    assert "the model exploded" in finished.error["message"]


# ---- the echo model ------------------------------------------------------------------------


async def test_echo_streams_one_delta_per_word(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "parrot")
    events = await collect(registry, "parrot", "hello there  big\nworld")
    assert [e.delta for e in of_type(events, "text.delta")] == [
        "hello ",
        "there  ",
        "big\n",
        "world",
    ]
    assert terminal(events).output == "hello there  big\nworld"


async def test_echo_object_input_is_its_json(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "parrot")
    value = {"city": "Oslo", "days": 3}
    events = await collect(registry, "parrot", value)
    output = terminal(events).output
    assert json.loads(output) == value
    assert text_of(events) == output
    assert events[0].input == value


async def test_echo_delay_ms_paces_the_stream(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "slow", model_settings={"delay_ms": 40})
    start = time.monotonic()
    events = await collect(registry, "slow", "one two three")
    elapsed = time.monotonic() - start
    assert terminal(events).output == "one two three"
    assert len(of_type(events, "text.delta")) == 3
    assert elapsed >= 0.1  # 3 words x 40 ms, minus clock slack


async def test_default_model_is_echo(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "plain")
    events = await collect(registry, "plain", "ping")
    assert events[0].model == "echo"
    assert of_type(events, "worker.started")[0].model == "echo"
    assert terminal(events).output == "ping"


# ---- model resolution ----------------------------------------------------------------------


def _echoing(tag: str) -> Script:
    return Script(lambda messages, info: [f"{tag}"])


async def test_worker_model_beats_request_and_default(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "pinned", model="script:worker")
    models = ScriptedModels(
        {"script:worker": _echoing("W").model(), "script:req": _echoing("R").model()}
    )
    events = await collect(
        registry,
        "pinned",
        "x",
        models=models,
        model="script:req",
        config=RuntimeConfig(default_model="script:req"),
    )
    assert of_type(events, "worker.started")[0].model == "script:worker"
    assert terminal(events).output == "W"


async def test_request_model_beats_default(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "free")
    models = ScriptedModels(
        {"script:req": _echoing("R").model(), "script:default": _echoing("D").model()}
    )
    events = await collect(
        registry,
        "free",
        "x",
        models=models,
        model="script:req",
        config=RuntimeConfig(default_model="script:default"),
    )
    assert events[0].model == "script:req"
    assert of_type(events, "worker.started")[0].model == "script:req"
    assert terminal(events).output == "R"


async def test_configured_default_model(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "free")
    models = ScriptedModels({"script:default": _echoing("D").model()})
    events = await collect(
        registry, "free", "x", models=models, config=RuntimeConfig(default_model="script:default")
    )
    assert of_type(events, "worker.started")[0].model == "script:default"
    assert terminal(events).output == "D"


async def test_callers_model_beats_request_model(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "boss", model="script:boss", allow_workers=["free", "pinned"])
    write_worker(workers, "free")
    write_worker(workers, "pinned", model="script:own")

    def boss_model(messages, info):
        if not info.function_tools:  # a child running on the boss's model
            return ["on the boss model"]
        if not tool_returns(messages):
            return [
                calls(
                    ("worker_call", {"worker": "free"}, "c1"),
                    ("worker_call", {"worker": "pinned"}, "c2"),
                )
            ]
        return ["done"]

    models = ScriptedModels(
        {
            "script:boss": Script(boss_model).model(),
            "script:own": _echoing("own model").model(),
            "script:req": _echoing("request model").model(),
        }
    )
    events = await collect(registry, "boss", "x", models=models, model="script:req")
    assert terminal(events).output == "done"
    started = {e.worker: e.model for e in of_type(events, "worker.started")}
    assert started == {"boss": "script:boss", "free": "script:boss", "pinned": "script:own"}
    results = {e.tool_call_id: e.content for e in of_type(events, "tool.result")}
    assert results == {"c1": "on the boss model", "c2": "own model"}


# ---- model errors --------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["nonsense", "bogus-provider:thing"])
async def test_unknown_model_is_a_model_error(
    workers: Path, registry: WorkerRegistry, model: str
) -> None:
    write_worker(workers, "w", model=model)
    events = await collect(registry, "w", "x")
    end = terminal(events)
    assert end.type == "run.failed"
    assert end.error["type"] == "model_error"
    assert repr(model) in end.error["message"]


async def test_request_model_that_cannot_be_built(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "w")
    end = terminal(await collect(registry, "w", "x", model="nonsense"))
    assert end.error["type"] == "model_error"
    assert "'nonsense'" in end.error["message"]


async def test_provider_without_key_names_the_missing_variable(
    workers: Path, registry: WorkerRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    write_worker(workers, "w", model="anthropic:claude-x")
    end = terminal(await collect(registry, "w", "x"))
    assert end.type == "run.failed"
    assert end.error["type"] == "model_error"
    assert "anthropic:claude-x" in end.error["message"]
    assert "ANTHROPIC_API_KEY" in end.error["message"]


# ---- input and output schemas --------------------------------------------------------------

INPUT_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
    "additionalProperties": False,
}


async def test_valid_input_passes_the_schema(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "trip", input_schema=INPUT_SCHEMA)
    events = await collect(registry, "trip", {"city": "Oslo", "days": 2})
    assert json.loads(terminal(events).output) == {"city": "Oslo", "days": 2}


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"days": 2}, "city"),
        ({"city": "Oslo", "days": 0}, "days"),
        ({"city": "Oslo", "days": "two"}, "days"),
        ({"city": "Oslo", "extra": True}, "extra"),
        ("Oslo for two days", "object"),
        (None, "object"),
    ],
)
async def test_invalid_input_is_refused_before_the_run(
    workers: Path, registry: WorkerRegistry, value: object, where: str
) -> None:
    write_worker(workers, "trip", input_schema=INPUT_SCHEMA, model="script:m")
    script = Script(["never"])
    models = ScriptedModels({"script:m": script.model()})
    seen = []
    run = WorkerRun(registry, "trip", value, on_event=seen.append, models=models)
    with pytest.raises(InvalidInput) as info:
        run.prepare()
    assert "trip" in info.value.message
    assert where in info.value.message
    with anyio.fail_after(10):
        result = await run.execute()
    assert result.status == "failed"
    assert result.error["type"] == "invalid_input"
    assert script.requests == 0
    assert seen[-1].type == "run.failed"


OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "why": {"type": "string"}},
    "required": ["answer"],
}


async def test_output_schema_gives_structured_output(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "oracle", output_schema=OUTPUT_SCHEMA, model="script:m")

    def answer(messages, info):
        assert not info.allow_text_output
        (tool,) = info.output_tools
        assert tool.parameters_json_schema["properties"] == OUTPUT_SCHEMA["properties"]
        return [call(tool.name, {"answer": 42, "why": "because"}, "out-1")]

    script = Script(answer)
    events = await collect(
        registry, "oracle", "?", models=ScriptedModels({"script:m": script.model()})
    )
    end = terminal(events)
    assert end.type == "run.completed"
    assert end.output == {"answer": 42, "why": "because"}
    assert of_type(events, "worker.finished")[0].output == {"answer": 42, "why": "because"}


async def test_output_not_matching_schema_is_sent_back_to_the_model(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "oracle", output_schema=OUTPUT_SCHEMA, model="script:m")

    def first(messages, info):
        return [call(info.output_tools[0].name, {"answer": "many"}, "out-1")]

    def second(messages, info):
        feedback = str(messages[-1].parts[0].content)
        assert "answer" in feedback and "integer" in feedback
        return [call(info.output_tools[0].name, {"answer": 7}, "out-2")]

    script = Script(first, second)
    events = await collect(
        registry, "oracle", "?", models=ScriptedModels({"script:m": script.model()})
    )
    assert terminal(events).output == {"answer": 7}
    assert script.requests == 2


async def test_output_never_matching_schema_fails_the_run(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "oracle", output_schema=OUTPUT_SCHEMA, model="script:m")
    script = Script(lambda m, info: [call(info.output_tools[0].name, {"why": "no answer"}, "o")])
    events = await collect(
        registry, "oracle", "?", models=ScriptedModels({"script:m": script.model()})
    )
    end = terminal(events)
    assert end.type == "run.failed"
    assert end.error["type"] == "model_behavior_error"
    assert not of_type(events, "run.completed")


async def test_echo_with_output_schema_returns_the_input_object(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "mirror", output_schema=OUTPUT_SCHEMA)
    events = await collect(registry, "mirror", {"answer": 5, "why": "w"})
    assert terminal(events).output == {"answer": 5, "why": "w"}
