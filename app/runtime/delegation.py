"""`worker_call`: one worker awaiting another, in-process, on the same event loop.

The child is an ordinary invocation (`run.invoke`) sharing the caller's usage
object and limits, so the whole tree is counted and limited together, and its
events go into the same sink with its own `call_id` and a longer `path`. Every
refusal or child failure is a failed tool call that the caller's model sees.
"""

from __future__ import annotations

from typing import Any

from pydantic_ai import RunContext, Tool
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.usage import RunUsage, UsageLimits

from . import run as _run
from . import sandbox
from .attachments import check_policy
from .context import Invocation
from .errors import DelegationError, LlmDoError, WorkerNotFound
from .registry import Worker, WorkerRegistry


def allowed(caller: Worker, name: str) -> bool:
    allow = caller.spec.allow_workers
    return "*" in allow or name in allow


async def call_worker(
    inv: Invocation,
    name: str,
    input_data: Any = None,
    attachments: list[str] | None = None,
    *,
    tool_call_id: str | None,
    usage: RunUsage,
    usage_limits: UsageLimits | None,
) -> Any:
    """Run worker `name` as a child of `inv`; raises an LlmDoError when refused or failed."""
    state = inv.state
    caller = state.registry.get(inv.worker_name)
    if not allowed(caller, name):
        allow = ", ".join(caller.spec.allow_workers) or "none"
        raise DelegationError(
            f"Worker {inv.worker_name!r} may not call {name!r} (allowed: {allow})"
        )
    if inv.depth + 1 > state.config.max_depth:
        raise DelegationError(
            f"Cannot call {name!r}: it would run at depth {inv.depth + 1}, "
            f"deeper than the limit of {state.config.max_depth}"
        )
    try:
        child = state.registry.get(name)
    except WorkerNotFound:
        raise DelegationError(f"No worker named {name!r}") from None
    files = []
    if attachments:
        files = await sandbox.read_attachments(caller, state.registry.project_root, attachments)
        check_policy(caller.spec.attachment_policy, files, worker=caller.name)
        check_policy(child.spec.attachment_policy, files, worker=child.name)
    return await _run.invoke(
        state,
        child,
        input_data,
        files,
        parent=inv,
        tool_call_id=tool_call_id,
        usage=usage,
        usage_limits=usage_limits,
    )


async def _worker_call(
    ctx: RunContext[Invocation],
    worker: str,
    input_data: Any = None,
    attachments: list[str] | None = None,
) -> Any:
    try:
        return await call_worker(
            ctx.deps,
            worker,
            input_data,
            attachments,
            tool_call_id=ctx.tool_call_id,
            usage=ctx.usage,
            usage_limits=ctx.usage_limits,
        )
    except LlmDoError as exc:
        raise ToolFailed(f"worker_call({worker!r}) failed: {exc.message}") from exc


def worker_call_tool(caller: Worker, registry: WorkerRegistry) -> Tool[Invocation]:
    allow = caller.spec.allow_workers
    worker_prop: dict[str, Any] = {"type": "string", "description": "Name of the worker to call"}
    if "*" not in allow:
        worker_prop["enum"] = list(allow)
        lines = []
        for name in allow:
            try:
                desc = registry.get(name).spec.description
            except LlmDoError:
                desc = ""
            lines.append(f"- {name}: {desc}" if desc else f"- {name}")
        listing = "\nWorkers you may call:\n" + "\n".join(lines)
    else:
        listing = ""
    properties: dict[str, Any] = {
        "worker": worker_prop,
        "input_data": {
            "description": "Input for the worker: text, or an object matching its input_schema"
        },
    }
    if caller.spec.sandbox and caller.spec.sandbox.paths:
        properties["attachments"] = {
            "type": "array",
            "items": {"type": "string"},
            "description": "Files from your sandbox to hand to the worker, as 'sandbox/path'",
        }
    schema = {"type": "object", "properties": properties, "required": ["worker"]}
    return Tool.from_schema(
        _worker_call,
        name="worker_call",
        description="Call another worker and wait for its output." + listing,
        json_schema=schema,
        takes_ctx=True,
    )
