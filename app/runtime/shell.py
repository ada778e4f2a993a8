"""The optional `shell` tool (workers.md §8): prefix rules, no shell, bounded time and output.

The command is split with shlex and executed directly (never through a shell);
shell metacharacters are refused outright, so a rule for `git status` cannot be
stretched into `git status; rm -rf ~`. The first rule whose prefix matches the
command's leading words decides; no match falls to `default` (not allowed unless set).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from pathlib import Path
from typing import Any

from pydantic_ai import FunctionToolset, RunContext
from pydantic_ai.exceptions import ToolFailed

from .approvals import Gating
from .context import Invocation
from .definitions import ShellConfig, ShellRule
from .errors import SandboxViolation
from .paths import resolve_inside

MAX_OUTPUT = 50_000
MAX_TIMEOUT_S = 600
METACHARACTERS = ("|", ">", "<", ";", "&", "`", "$(", "\n")


def _argv(command: str) -> list[str]:
    for meta in METACHARACTERS:
        if meta in command:
            raise ToolFailed(
                f"Shell metacharacter {meta!r} is not allowed: commands run without a shell, "
                f"one program with its arguments"
            )
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ToolFailed(f"Cannot parse the command: {exc}") from None
    if not argv:
        raise ToolFailed("The command is empty")
    return argv


def match(config: ShellConfig, argv: list[str]) -> ShellRule:
    """The rule that decides `argv`: the first whose prefix words lead the command, else default."""
    for rule in config.rules:
        words = shlex.split(rule.prefix)
        if words and argv[: len(words)] == words:
            return rule
    return config.default


# Commands see only these variables: never the service's provider keys or its API token.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "TERM")


def _environment() -> dict[str, str]:
    return {k: v for k in PASSED_ENV if (v := os.environ.get(k)) is not None}


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _cwd(inv: Invocation) -> Path:
    root = inv.state.registry.project_root
    cfg = inv.worker.spec.shell
    if cfg is None or not cfg.cwd:
        return root
    try:
        return resolve_inside(root, cfg.cwd)
    except SandboxViolation as exc:
        raise ToolFailed(f"The worker's shell cwd is not usable: {exc.message}") from None


def gate_rule(inv: Invocation, name: str, args: dict[str, Any]) -> Gating | None:
    cfg = inv.worker.spec.shell
    if name != "shell" or cfg is None:
        return None
    try:
        rule = match(cfg, _argv(str(args.get("command", ""))))
    except ToolFailed:
        return None  # the tool refuses it without running anything
    if rule.allowed and rule.approval:
        return Gating(f"Run shell command: {args.get('command')}")
    return None


async def _read_capped(stream: asyncio.StreamReader) -> tuple[bytes, bool]:
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(65536):
        room = MAX_OUTPUT - len(kept)
        if room > 0:
            kept += chunk[:room]
        if len(chunk) > max(room, 0):
            truncated = True
    return bytes(kept), truncated


async def shell(ctx: RunContext[Invocation], command: str, timeout_s: float = 30) -> dict[str, Any]:
    """Run a command (no shell features: no pipes, redirects or ';').

    Args:
        command: The program and its arguments, e.g. 'git status'.
        timeout_s: Seconds before the command is killed.
    """
    inv = ctx.deps
    cfg = inv.worker.spec.shell
    assert cfg is not None
    argv = _argv(command)
    rule = match(cfg, argv)
    if not rule.allowed:
        allowed = [r.prefix for r in cfg.rules if r.allowed]
        raise ToolFailed(
            f"Command {command!r} is not allowed. Allowed command prefixes: "
            f"{', '.join(allowed) or 'none'}"
        )
    timeout = max(0.1, min(float(timeout_s), MAX_TIMEOUT_S))
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=_cwd(inv),
            env=_environment(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, so a timeout kills it all
        )
    except FileNotFoundError:
        raise ToolFailed(f"Command not found: {argv[0]!r}") from None
    except OSError as exc:
        raise ToolFailed(f"Cannot run {argv[0]!r}: {exc.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(timeout):
            (out, out_cut), (err, err_cut) = await asyncio.gather(
                _read_capped(proc.stdout), _read_capped(proc.stderr)
            )
            code = await proc.wait()
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        raise ToolFailed(
            f"Command {command!r} timed out after {timeout:g} s and was killed"
        ) from None
    except asyncio.CancelledError:
        _kill_group(proc)
        await asyncio.shield(proc.wait())
        raise
    return {
        "exit_code": code,
        "stdout": out.decode("utf-8", "replace"),
        "stderr": err.decode("utf-8", "replace"),
        "truncated": out_cut or err_cut,
    }


def shell_toolset() -> FunctionToolset[Invocation]:
    return FunctionToolset([shell])
