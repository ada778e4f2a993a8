"""Build (once per loaded definition) the PydanticAI agent of a worker.

The model is not baked in: it is resolved per invocation (workers.md §5), so one
agent serves every model a worker may run on.
"""

from __future__ import annotations

from typing import Any

from pydantic_ai import Agent, FunctionToolset, RunContext, StructuredDict, WrapperToolset
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, ModelRetry, ToolFailed

from .context import Invocation
from .delegation import worker_call_tool
from .registry import Worker, WorkerRegistry


class FailuresToModel(WrapperToolset[Invocation]):
    """An exception in a custom tool becomes a failed tool call the model sees, not a dead run."""

    async def call_tool(self, name: str, tool_args: dict[str, Any], ctx: RunContext, tool) -> Any:
        try:
            return await super().call_tool(name, tool_args, ctx, tool)
        except (ToolFailed, ModelRetry, ApprovalRequired, CallDeferred):
            raise
        except Exception as exc:  # user code: any exception is reported to the model
            raise ToolFailed(f"Tool {name!r} raised {type(exc).__name__}: {exc}") from exc


def output_type_of(worker: Worker) -> Any:
    schema = worker.spec.output_schema
    if schema is None:
        return str
    return StructuredDict(schema, name="output", description=f"The output of {worker.name}")


def build_agent(worker: Worker, registry: WorkerRegistry) -> Agent[Invocation, Any]:
    agent = worker.cache.get("agent")
    if agent is not None:
        return agent
    toolsets = []
    if worker.tools:
        toolsets.append(FailuresToModel(FunctionToolset(list(worker.tools))))
    tools = []
    if worker.spec.allow_workers:
        tools.append(worker_call_tool(worker, registry))
    agent = Agent(
        None,
        output_type=output_type_of(worker),
        instructions=worker.instructions or None,
        deps_type=Invocation,
        name=worker.name,
        tools=tools,
        toolsets=toolsets,
        model_settings=dict(worker.spec.model_settings) or None,
    )
    worker.cache["agent"] = agent
    return agent
