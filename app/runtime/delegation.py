"""Delegation: `worker_call` (one worker awaiting another, in-process, on the same event
loop) and `worker_create` (a worker writing a new worker file, after approval).

The child is an ordinary invocation (`run.invoke`) sharing the caller's usage
object and limits, so the whole tree is counted and limited together, and its
events go into the same sink with its own `call_id` and a longer `path`. Every
refusal or child failure is a failed tool call that the caller's model sees.
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from pydantic_ai import RunContext, Tool
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.usage import RunUsage, UsageLimits

from . import run as _run
from . import sandbox
from .approvals import Gating
from .attachments import check_policy
from .context import Invocation
from .definitions import is_valid_name
from .errors import DelegationError, InvalidWorker, LlmDoError, SandboxViolation, WorkerNotFound
from .registry import Worker, WorkerRegistry, parse_worker_text


def allowed(inv: Invocation, name: str) -> bool:
    allow = inv.worker.spec.allow_workers
    return "*" in allow or name in allow or (inv.worker_name, name) in inv.state.created


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
    state, caller = inv.state, inv.worker
    if not allowed(inv, name):
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
    listing = ""
    if "*" not in allow and allow:
        if not caller.spec.worker_create:  # workers it creates are callable too
            worker_prop["enum"] = list(allow)
        lines = []
        for name in allow:
            try:
                desc = registry.get(name).spec.description
            except LlmDoError:
                desc = ""
            lines.append(f"- {name}: {desc}" if desc else f"- {name}")
        listing = "\nWorkers you may call:\n" + "\n".join(lines)
    if caller.spec.worker_create:
        listing += "\nWorkers you create with worker_create may be called too."
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


def worker_call_gating(inv: Invocation, args: dict[str, Any]) -> Gating:
    """What a person sees before a gated worker_call: the worker and each attachment's size."""
    files = []
    for path in args.get("attachments") or []:
        try:
            _, real = sandbox.resolve(inv.worker, inv.state.registry.project_root, str(path))
            size: int | None = real.stat().st_size
        except (SandboxViolation, OSError):
            size = None
        files.append({"path": path, "bytes": size})
    shown = f" with {len(files)} attachment(s)" if files else ""
    return Gating(f"Call worker {args.get('worker')!r}{shown}", {"attachments": files})


# ---- worker_create ----------------------------------------------------------------


def render_worker_file(
    name: str,
    instructions: str,
    description: str = "",
    model: str | None = None,
    output_schema: dict[str, Any] | None = None,
) -> str:
    """The complete text of a generated worker: no sandbox, no tools, no delegation."""
    front: dict[str, Any] = {"name": name, "description": description}
    if model:
        front["model"] = model
    if output_schema is not None:
        front["output_schema"] = output_schema
    head = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
    return f"---\n{head}---\n{instructions.strip()}\n"


def _check_new_worker(registry: WorkerRegistry, args: dict[str, Any]) -> str:
    """Validate a worker_create call; returns the file text. Raises ToolFailed."""
    name = str(args.get("name", ""))
    if not is_valid_name(name):
        raise ToolFailed(f"Worker name {name!r} must match ^[a-z0-9][a-z0-9_-]{{0,63}}$")
    existing = registry.locate(name)
    if existing is not None:
        raise ToolFailed(f"A worker named {name!r} already exists; choose another name")
    text = render_worker_file(
        name,
        str(args.get("instructions", "")),
        str(args.get("description") or ""),
        args.get("model"),
        args.get("output_schema"),
    )
    source = f"workers/generated/{name}.worker"
    try:
        spec, _, _, _ = parse_worker_text(
            text, name=name, folder=registry.workers_dir / "generated", source=source
        )
    except InvalidWorker as exc:
        raise ToolFailed(f"The new worker would be invalid: {exc.message}") from None
    if spec.description != str(args.get("description") or ""):
        raise ToolFailed("The description does not survive the file format; use one plain line")
    return text


async def _worker_create(
    ctx: RunContext[Invocation],
    name: str,
    instructions: str,
    description: str = "",
    model: str | None = None,
    output_schema: dict[str, Any] | None = None,
) -> str:
    """Create a new worker (a prompt-only worker: no tools, no files, no delegation).
    It can be called with worker_call for the rest of this run, and is an endpoint afterwards.

    Args:
        name: Lowercase name: letters, digits, '-' and '_'.
        instructions: The new worker's instructions.
        description: One line saying what it does.
        model: Model string, or omit to inherit the caller's.
        output_schema: JSON Schema of a structured output, or omit for text.
    """
    inv = ctx.deps
    registry = inv.state.registry
    args = {"name": name, "instructions": instructions, "description": description}
    args |= {"model": model, "output_schema": output_schema}
    text = _check_new_worker(registry, args)
    target = registry.workers_dir / "generated" / f"{name}.worker"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ToolFailed(f"A worker named {name!r} already exists; choose another name") from None
    except OSError as exc:
        raise ToolFailed(f"Cannot write the worker file: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    inv.state.created.add((inv.worker_name, name))
    return f"Created worker {name!r} (workers/generated/{name}.worker); call it with worker_call"


def worker_create_gating(inv: Invocation, args: dict[str, Any]) -> Gating | None:
    """Always gated; the person sees the complete file that would be written. A call the
    tool will refuse anyway is not put to a person."""
    try:
        text = _check_new_worker(inv.state.registry, args)
    except ToolFailed:
        return None
    path = f"workers/generated/{args.get('name')}.worker"
    return Gating(f"Create worker {args.get('name')!r} at {path}", {"path": path, "file": text})


worker_create_tool = Tool(_worker_create, name="worker_create", takes_ctx=True)
