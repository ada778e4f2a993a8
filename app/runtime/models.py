"""Model strings to PydanticAI models, including the two built-in offline models.

- `echo` (the default with no LLM_DO_MODEL): replies with the user input, one text
  delta per word; `model_settings: {delay_ms: N}` paces it like a remote model. It
  calls no tools. With a structured output it returns the input object as the output.
- `demo`: an offline stand-in for a tool-using model, so the examples can show
  tools, approvals and delegation without a key. An object input may script it:
  `{"calls": [{"tool": T, "args": {...}}, ...]}` makes those calls (in parallel),
  `{"turns": [[...], [...]]}` one list per model turn; after the script it reports
  the last results. Otherwise, on its first turn it calls every tool it is offered
  once, with arguments taken from the input (matching keys of an object input,
  numbers found in a text input, the text for string parameters, the first allowed
  worker for `worker`), then reports the results. With no tool it can fill, it
  behaves like `echo`.

Anything else goes to PydanticAI's `infer_model` (`openai-chat:...`, `anthropic:...`,
`ollama:...`, `test`); a string that cannot be built is a ModelError naming the model
and what is missing.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from pydantic_ai.messages import (
    BinaryContent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import Model, infer_model
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel
from pydantic_ai.tools import ToolDefinition

from .errors import ModelError

DEFAULT_MODEL = "echo"
BUILTIN_MODELS = ("echo", "demo")
_WORD = re.compile(r"\S+\s*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _user_text(messages: list[ModelMessage]) -> str:
    """The text of the latest user prompt; attachments appear as `[file: name, type, N bytes]`."""
    for message in reversed(messages):
        if not isinstance(message, ModelRequest):
            continue
        for part in reversed(message.parts):
            if isinstance(part, UserPromptPart):
                if isinstance(part.content, str):
                    return part.content
                pieces = []
                for item in part.content:
                    if isinstance(item, str):
                        pieces.append(item)
                    elif isinstance(item, BinaryContent):
                        pieces.append(
                            f"[file: {item.identifier}, {item.media_type}, {len(item.data)} bytes]"
                        )
                return "\n".join(pieces)
    return ""


def _words(text: str) -> list[str]:
    words = _WORD.findall(text)
    if not words:
        return [text] if text else []
    lead = len(text) - len(text.lstrip())
    if lead:
        words[0] = text[:lead] + words[0]
    return words


def _delay(info: AgentInfo) -> float:
    settings = info.model_settings or {}
    return float(settings.get("delay_ms", 0) or 0) / 1000  # type: ignore[arg-type]


def _structured_output(info: AgentInfo, text: str) -> ToolCallPart | None:
    if info.allow_text_output or not info.output_tools:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    args = value if isinstance(value, dict) else {}
    return ToolCallPart(info.output_tools[0].name, args, tool_call_id="echo-output")


# ---- echo -------------------------------------------------------------------------


def _echo(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    text = _user_text(messages)
    call = _structured_output(info, text)
    return ModelResponse(parts=[call] if call else [TextPart(text)], model_name="echo")


async def _echo_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
    text = _user_text(messages)
    call = _structured_output(info, text)
    if call is not None:
        yield {0: DeltaToolCall(name=call.tool_name, json_args=json.dumps(call.args))}
        return
    delay = _delay(info)
    for word in _words(text) or [""]:
        if delay:
            await asyncio.sleep(delay)
        yield word


# ---- demo -------------------------------------------------------------------------


def _demo_args(tool: ToolDefinition, text: str) -> dict[str, Any] | None:
    """Arguments for `tool` taken from the input, or None when a required one cannot be found."""
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    numbers = [float(n) if "." in n else int(n) for n in _NUMBER.findall(text)]
    schema = tool.parameters_json_schema
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    args: dict[str, Any] = {}
    for name, prop in props.items():
        kind = prop.get("type")
        if isinstance(obj, dict) and name in obj:
            args[name] = obj[name]
        elif "enum" in prop:
            args[name] = prop["enum"][0]
        elif name == "input_data":
            args[name] = obj if obj is not None else text
        elif kind in ("number", "integer") and numbers:
            args[name] = numbers.pop(0)
        elif kind == "string" and name in required:
            args[name] = text
        elif name in required:
            return None
    return args


def _demo_script(text: str) -> list[list[dict[str, Any]]] | None:
    """`{"calls": [...]}` (one turn) or `{"turns": [[...], [...]]}` in an object input."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("turns"), list):
        return [t if isinstance(t, list) else [] for t in obj["turns"]]
    if isinstance(obj.get("calls"), list):
        return [obj["calls"]]
    return None


def _demo_plan(messages: list[ModelMessage], info: AgentInfo) -> list[ToolCallPart] | str:
    last = messages[-1]
    returns = [p for p in getattr(last, "parts", []) if isinstance(p, ToolReturnPart)]
    text = _user_text(messages)
    script = _demo_script(text)
    turn = sum(isinstance(m, ModelResponse) for m in messages)
    if script is not None and turn < len(script):
        return [
            ToolCallPart(str(c.get("tool")), c.get("args") or {}, tool_call_id=f"demo-{turn}-{i}")
            for i, c in enumerate(script[turn])
            if isinstance(c, dict)
        ]
    if returns:
        lines = [f"{p.tool_name}: {p.model_response_str()}" for p in returns]
        return "Results:\n" + "\n".join(lines)
    if script is not None:
        return "Done."
    calls = []
    for i, tool in enumerate(info.function_tools):
        args = _demo_args(tool, text)
        if args is not None:
            calls.append(ToolCallPart(tool.name, args, tool_call_id=f"demo-{turn}-{i}"))
    return calls or text


def _demo(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    plan = _demo_plan(messages, info)
    if isinstance(plan, str):
        return _echo([ModelRequest.user_text_prompt(plan)], info)
    return ModelResponse(parts=list(plan), model_name="demo")


async def _demo_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
    plan = _demo_plan(messages, info)
    if isinstance(plan, str):
        async for item in _echo_stream([ModelRequest.user_text_prompt(plan)], info):
            yield item
        return
    for i, call in enumerate(plan):
        yield {
            i: DeltaToolCall(
                name=call.tool_name, json_args=json.dumps(call.args), tool_call_id=call.tool_call_id
            )
        }


_BUILTINS = {
    "echo": lambda: FunctionModel(_echo, stream_function=_echo_stream, model_name="echo"),
    "demo": lambda: FunctionModel(_demo, stream_function=_demo_stream, model_name="demo"),
}


class ModelResolver:
    """Builds each model string once per process; providers keep their HTTP clients."""

    def __init__(self) -> None:
        self._cache: dict[str, Model] = {}

    def get(self, name: str) -> Model:
        model = self._cache.get(name)
        if model is None:
            model = self._cache[name] = self._build(name)
        return model

    @staticmethod
    def _build(name: str) -> Model:
        builtin = _BUILTINS.get(name)
        if builtin is not None:
            return builtin()
        if ":" not in name and name != "test":
            raise ModelError(
                f"Model {name!r} is not known: use 'provider:model' "
                f"(e.g. 'openai-chat:gpt-4o-mini', 'anthropic:claude-haiku-4-5') "
                f"or a built-in offline model ({', '.join(BUILTIN_MODELS)})"
            )
        try:
            return infer_model(name)
        except Exception as exc:  # UserError (missing key/provider), ImportError (missing extra)
            raise ModelError(f"Model {name!r} cannot be used: {exc}") from exc
