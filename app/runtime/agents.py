"""Build (once per loaded definition) the PydanticAI agent of a worker.

The model is not baked in: it is resolved per invocation (workers.md §5), so one
agent serves every model a worker may run on. Every tool of the worker sits behind
one `ApprovalGated` wrapper whose rule (`gating_rule`) says which calls need a
decision; the gate in `approvals.py` decides what happens to them.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from pydantic_ai import (
    Agent,
    CombinedToolset,
    FunctionToolset,
    RunContext,
    StructuredDict,
    WrapperToolset,
)
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, ModelRetry, ToolFailed

from . import delegation, sandbox, shell
from .approvals import ApprovalGated, GateRule, Gating
from .context import Invocation
from .registry import Worker, WorkerRegistry
from .worker_context import takes_worker_context, with_worker_context


class FailuresToModel(WrapperToolset[Invocation]):
    """An exception in a custom tool becomes a failed tool call the model sees, not a dead run."""

    async def call_tool(self, name: str, tool_args: dict[str, Any], ctx: RunContext, tool) -> Any:
        try:
            return await super().call_tool(name, tool_args, ctx, tool)
        except (ToolFailed, ModelRetry, ApprovalRequired, CallDeferred):
            raise
        except Exception as exc:  # user code: any exception is reported to the model
            raise ToolFailed(f"Tool {name!r} raised {type(exc).__name__}: {exc}") from exc


def gating_rule(worker: Worker) -> GateRule:
    """Which calls of this worker's tools need approval (workers.md §7)."""
    required = set(worker.spec.require_approval)

    def rule(inv: Invocation, name: str, args: dict[str, Any]) -> Gating | None:
        if name == "worker_create":
            return delegation.worker_create_gating(inv, args)
        if name in ("read_file", "write_file") and name not in required:
            return sandbox.gate_rule(inv, name, args)
        if name == "shell" and name not in required:
            return shell.gate_rule(inv, name, args)
        if name in required:
            if name == "worker_call":
                return delegation.worker_call_gating(inv, args)
            return Gating(f"Call {name}")
        return None

    return rule


def output_type_of(worker: Worker) -> Any:
    schema = worker.spec.output_schema
    if schema is None:
        return str
    return StructuredDict(schema, name="output", description=f"The output of {worker.name}")


def _output_check(schema: dict[str, Any]):
    """StructuredDict only checks "is an object": validate the output against the schema itself,
    sending a violation back to the model as a retry (workers.md §2: output is validated)."""
    validator = Draft202012Validator(schema)

    async def check(ctx: RunContext[Invocation], output: Any) -> Any:
        error = None if ctx.partial_output else best_match(validator.iter_errors(output))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(the output)"
            raise ModelRetry(f"The output does not match output_schema at {where}: {error.message}")
        return output

    return check


def build_agent(worker: Worker, registry: WorkerRegistry) -> Agent[Invocation, Any]:
    agent = worker.cache.get("agent")
    if agent is not None:
        return agent
    spec = worker.spec
    toolsets: list[Any] = []
    if worker.tools:
        tools = [
            with_worker_context(f, source=str(worker.path)) if takes_worker_context(f) else f
            for f in worker.tools
        ]
        toolsets.append(FailuresToModel(FunctionToolset(tools)))
    if spec.sandbox and spec.sandbox.paths:
        toolsets.append(sandbox.file_toolset())
    if spec.shell is not None:
        toolsets.append(shell.shell_toolset())
    builtin = []
    if spec.allow_workers or spec.worker_create:
        builtin.append(delegation.worker_call_tool(worker, registry))
    if spec.worker_create:
        builtin.append(delegation.worker_create_tool)
    if builtin:
        toolsets.append(FunctionToolset(builtin))
    gated = [ApprovalGated(CombinedToolset(toolsets), rule=gating_rule(worker))] if toolsets else []
    agent = Agent(
        None,
        output_type=output_type_of(worker),
        instructions=worker.instructions or None,
        deps_type=Invocation,
        name=worker.name,
        toolsets=gated,
        model_settings=dict(spec.model_settings) or None,
    )
    if spec.output_schema is not None:
        agent.output_validator(_output_check(spec.output_schema))
    worker.cache["agent"] = agent
    worker.cache["has_tools"] = bool(toolsets)
    return agent
