"""`ctx`: what a code worker (and a `tools.py` function whose first parameter is `ctx`)
can do, through exactly the paths the model's tools take: `delegation.call_worker` for
the allowlist, depth and policies; the sandbox tool functions for containment; the
run's approval gate (with the worker's own gating rule) for approvals.

Errors are typed (`LlmDoError` subclasses) so code can catch them: `DelegationError`
for a refused or failed child, `ToolCallFailed` for a refused or failed file
operation (the same message the model would see), `ApprovalDenied` for a denial.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import wraps
from typing import Any, get_type_hints

from pydantic_ai import RunContext
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.usage import RunUsage, UsageLimits

from . import delegation, sandbox
from .attachments import Attachment
from .context import Invocation
from .errors import ApprovalDenied, InvalidWorker, LlmDoError, ToolCallFailed
from .events import TextDelta, ToolCall, ToolResult


class _ToolCtx:
    """The little of a PydanticAI RunContext the sandbox tool functions read."""

    __slots__ = ("deps", "tool_call_id")

    def __init__(self, inv: Invocation, tool_call_id: str) -> None:
        self.deps = inv
        self.tool_call_id = tool_call_id


class WorkerContext:
    def __init__(
        self,
        inv: Invocation,
        *,
        usage: RunUsage,
        usage_limits: UsageLimits | None,
        attachments: list[Attachment] | None = None,
        tool_call_id: str | None = None,
    ) -> None:
        self._inv = inv
        self._usage = usage
        self._limits = usage_limits
        self._tool_call_id = tool_call_id
        self._ops = 0
        self.attachments = list(attachments or [])

    @classmethod
    def for_tool(cls, run_ctx: RunContext[Invocation]) -> WorkerContext:
        return cls(
            run_ctx.deps,
            usage=run_ctx.usage,
            usage_limits=run_ctx.usage_limits,
            tool_call_id=run_ctx.tool_call_id,
        )

    @property
    def run_id(self) -> str:
        return self._inv.state.run_id

    @property
    def worker(self) -> str:
        return self._inv.worker_name

    @property
    def path(self) -> tuple[str, ...]:
        return self._inv.path

    def _op_id(self, name: str) -> str:
        self._ops += 1
        base = self._tool_call_id or self._inv.call_id
        return f"{base}:{name}:{self._ops}"

    async def call_worker(
        self, worker: str, input: Any = None, attachments: list[str] | None = None
    ) -> Any:
        """The child's output; raises DelegationError (refused) or the child's error."""
        if self._tool_call_id is not None:  # inside a tool: its own tool events frame this
            return await delegation.call_worker(
                self._inv,
                worker,
                input,
                attachments,
                tool_call_id=self._tool_call_id,
                usage=self._usage,
                usage_limits=self._limits,
            )
        op_id = self._op_id("worker_call")
        args = {"worker": worker, "input_data": input, "attachments": attachments}
        self._tool_event(op_id, "worker_call", args)
        try:
            output = await delegation.call_worker(
                self._inv,
                worker,
                input,
                attachments,
                tool_call_id=op_id,
                usage=self._usage,
                usage_limits=self._limits,
            )
        except LlmDoError as exc:
            self._tool_event(op_id, "worker_call", outcome="failed", content=exc.message)
            raise
        self._tool_event(op_id, "worker_call", outcome="success", content=output)
        return output

    def _tool_event(
        self,
        op_id: str,
        tool: str,
        args: dict[str, Any] | None = None,
        *,
        outcome: str | None = None,
        content: Any = None,
    ) -> None:
        """tool.call / tool.result for what code does through ctx, as for a model's tools,
        so streams, the run record and the web page show both alike."""
        inv = self._inv
        base = {
            "run_id": inv.state.run_id,
            "worker": inv.worker_name,
            "path": inv.path,
            "call_id": inv.call_id,
            "tool_call_id": op_id,
            "tool": tool,
        }
        if outcome is None:
            inv.state.sink.emit(ToolCall(**base, args=args))
        else:
            inv.state.sink.emit(ToolResult(**base, outcome=outcome, content=content))

    async def emit(self, text: str) -> None:
        """Stream a piece of text from this worker (a `text.delta`)."""
        inv = self._inv
        inv.state.sink.emit(
            TextDelta(
                run_id=inv.state.run_id,
                worker=inv.worker_name,
                path=inv.path,
                call_id=inv.call_id,
                delta=text,
            )
        )

    async def list_files(self, path: str = ".", pattern: str = "**/*") -> list[str]:
        return await self._file_op("list_files", {"path": path, "pattern": pattern})

    async def read_file(self, path: str, offset: int = 0, max_chars: int = 20000) -> dict:
        args = {"path": path, "offset": offset, "max_chars": max_chars}
        return await self._file_op("read_file", args)

    async def write_file(self, path: str, content: str) -> str:
        return await self._file_op("write_file", {"path": path, "content": content})

    async def _file_op(self, name: str, args: dict[str, Any]) -> Any:
        from .agents import gating_rule  # the same rule the model's tools are gated by

        inv = self._inv
        if not (inv.worker.spec.sandbox and inv.worker.spec.sandbox.paths):
            raise ToolCallFailed(f"Worker {inv.worker_name!r} has no sandbox, so it has no files")
        op_id = self._op_id(name)
        self._tool_event(op_id, name, args)
        gating = gating_rule(inv.worker)(inv, name, args)
        if gating is not None:
            decision = await inv.state.gate.check(inv, op_id, name, args, gating)
            if not decision.approved:
                message = f"{name} was denied: {decision.reason}"
                self._tool_event(op_id, name, outcome="denied", content=message)
                raise ApprovalDenied(message)
            args = decision.args or args
        try:
            result = await getattr(sandbox, name)(_ToolCtx(inv, op_id), **args)
        except ToolFailed as exc:
            self._tool_event(op_id, name, outcome="failed", content=str(exc))
            raise ToolCallFailed(str(exc)) from None
        self._tool_event(op_id, name, outcome="success", content=result)
        return result


def takes_worker_context(fn: Callable[..., Any]) -> bool:
    params = list(inspect.signature(fn).parameters)
    return bool(params) and params[0] == "ctx"


def with_worker_context(fn: Callable[..., Any], *, source: str) -> Callable[..., Any]:
    """A `tools.py` function `f(ctx, ...)` as a PydanticAI tool taking a RunContext: the
    schema comes from the other parameters; `ctx` is a WorkerContext at call time."""
    if not inspect.iscoroutinefunction(fn):
        raise InvalidWorker(
            f"{source}: tool {fn.__name__!r} takes ctx, so it must be 'async def'",
            path=source,
            field="custom_tools",
        )
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    hints = get_type_hints(fn)

    @wraps(fn)
    async def tool(ctx: RunContext[Invocation], *args: Any, **kwargs: Any) -> Any:
        return await fn(WorkerContext.for_tool(ctx), *args, **kwargs)

    tool.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[params[0].replace(annotation=RunContext), *params[1:]]
    )
    tool.__annotations__ = {**hints, "ctx": RunContext}
    del tool.__wrapped__  # PydanticAI must see this signature, not fn's
    return tool
