"""Sandbox paths: `sandbox_name/relative/path` resolved to a real file inside that sandbox's root.

All containment is `paths.resolve_inside`; this module adds the sandbox-level rules
(known sandbox names, suffixes, size) and says in each refusal what *is* allowed,
because the message goes back to a model that should correct itself.
"""

from __future__ import annotations

import asyncio
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic_ai import FunctionToolset, RunContext
from pydantic_ai.exceptions import ToolFailed

from .approvals import Gating
from .attachments import Attachment
from .context import Invocation
from .definitions import SandboxPath
from .errors import SandboxViolation
from .paths import resolve_inside
from .registry import Worker


def sandbox_root(cfg: SandboxPath, project_root: Path) -> Path:
    root = Path(cfg.root)
    return root if root.is_absolute() else project_root / root


def resolve(worker: Worker, project_root: Path, path: str) -> tuple[SandboxPath, Path]:
    """(the sandbox's config, the real path) for `path`, or SandboxViolation."""
    paths = worker.spec.sandbox.paths if worker.spec.sandbox else {}
    if not paths:
        raise SandboxViolation(f"Worker {worker.name!r} has no sandbox, so it has no files")
    name, _, rest = str(path).partition("/")
    cfg = paths.get(name)
    if cfg is None:
        raise SandboxViolation(
            f"Unknown sandbox {name!r} in {path!r}. Sandboxes: {', '.join(sorted(paths))}; "
            f"write paths as 'sandbox/relative/path'"
        )
    if not rest:
        raise SandboxViolation(f"Path {path!r} names a sandbox but no file in it")
    if cfg.suffixes is not None:
        suffix = PurePosixPath(rest).suffix.lower()
        allowed = {s.lower() for s in cfg.suffixes}
        if suffix not in allowed:
            raise SandboxViolation(
                f"Suffix {suffix or '(none)'!r} of {path!r} is not allowed in sandbox {name!r}. "
                f"Allowed suffixes: {', '.join(sorted(allowed))}"
            )
    return cfg, resolve_inside(sandbox_root(cfg, project_root), rest, label=path)


async def read_attachments(
    worker: Worker, project_root: Path, paths: list[str]
) -> list[Attachment]:
    """Read files from `worker`'s sandbox to pass to another worker (off the event loop)."""
    resolved = [(p, *resolve(worker, project_root, p)) for p in paths]

    def read_all() -> list[Attachment]:
        out = []
        for shown, cfg, real in resolved:
            try:
                size = real.stat().st_size
                if cfg.max_file_bytes is not None and size > cfg.max_file_bytes:
                    raise SandboxViolation(
                        f"File {shown!r} is {size} bytes, over max_file_bytes {cfg.max_file_bytes}"
                    )
                data = real.read_bytes()
            except FileNotFoundError:
                raise SandboxViolation(f"File {shown!r} does not exist") from None
            except IsADirectoryError:
                raise SandboxViolation(f"{shown!r} is a folder, not a file") from None
            except OSError as exc:
                raise SandboxViolation(f"Cannot read {shown!r}: {exc.strerror}") from None
            out.append(Attachment.of(PurePosixPath(shown).name, data))
        return out

    return await asyncio.to_thread(read_all)


# ---- the file tools ---------------------------------------------------------------

MAX_LISTED = 1000


def _paths(worker: Worker) -> dict[str, SandboxPath]:
    return worker.spec.sandbox.paths if worker.spec.sandbox else {}


def _writable(worker: Worker) -> str:
    names = [n for n, cfg in sorted(_paths(worker).items()) if cfg.mode == "rw"]
    return ", ".join(names) if names else "none"


def _fail(exc: SandboxViolation) -> ToolFailed:
    return ToolFailed(exc.message)


async def list_files(
    ctx: RunContext[Invocation], path: str = ".", pattern: str = "**/*"
) -> list[str]:
    """List files in your sandboxes as 'sandbox/relative/path'.

    Args:
        path: '.' for every sandbox, a sandbox name, or 'sandbox/folder'.
        pattern: A glob pattern relative to that folder, e.g. '*.md' or '**/*.pdf'.
    """
    inv = ctx.deps
    worker, project_root = inv.worker, inv.state.registry.project_root
    paths = _paths(worker)
    try:
        if "\x00" in pattern or ".." in pattern.split("/") or pattern.startswith("/"):
            raise SandboxViolation(f"Pattern {pattern!r} must be relative and without '..'")
        if pattern in ("", "."):
            raise SandboxViolation(f"Pattern {pattern!r} matches nothing; try '*' or '**/*'")
        if path in (".", "", "/"):
            targets = [(n, sandbox_root(c, project_root), n) for n, c in sorted(paths.items())]
        else:
            name, _, rest = path.strip("/").partition("/")
            if name not in paths:
                raise SandboxViolation(
                    f"Unknown sandbox {name!r}. Sandboxes: {', '.join(sorted(paths)) or 'none'}"
                )
            root = sandbox_root(paths[name], project_root)
            folder = resolve_inside(root, rest, label=path) if rest else root.resolve()
            targets = [(name, folder, path.strip("/"))]
    except SandboxViolation as exc:
        raise _fail(exc) from None

    def walk() -> list[str]:
        found: list[str] = []
        for name, folder, shown in targets:
            cfg = paths[name]
            real_root = sandbox_root(cfg, project_root).resolve()
            suffixes = {s.lower() for s in cfg.suffixes} if cfg.suffixes is not None else None
            if not folder.is_dir():
                continue
            for p in folder.glob(pattern):
                try:
                    real = p.resolve()
                except (OSError, RuntimeError):  # RuntimeError: a symlink loop on 3.11
                    continue
                if not p.is_file() or not real.is_relative_to(real_root):
                    continue
                if suffixes is not None and p.suffix.lower() not in suffixes:
                    continue
                found.append(f"{shown}/{p.relative_to(folder).as_posix()}")
                if len(found) >= MAX_LISTED:
                    return sorted(found)
        return sorted(found)

    try:
        return await asyncio.to_thread(walk)
    except (ValueError, IndexError) as exc:  # Path.glob's verdict on a malformed pattern
        raise ToolFailed(
            f"Pattern {pattern!r} is not a usable glob pattern ({exc}); try '*.md' or '**/*'"
        ) from None


async def read_file(
    ctx: RunContext[Invocation], path: str, offset: int = 0, max_chars: int = 20000
) -> dict[str, object]:
    """Read a UTF-8 text file from your sandbox, a page at a time.

    Args:
        path: 'sandbox/relative/path'.
        offset: Character offset to start at (use the previous offset + chars_read to go on).
        max_chars: Most characters to return.
    """
    inv = ctx.deps
    try:
        cfg, real = resolve(inv.worker, inv.state.registry.project_root, path)
    except SandboxViolation as exc:
        raise _fail(exc) from None
    offset, max_chars = max(0, offset), max(1, min(max_chars, 200_000))

    def read() -> str:
        size = real.stat().st_size
        if cfg.max_file_bytes is not None and size > cfg.max_file_bytes:
            raise ToolFailed(
                f"Cannot read {path!r}: {size} bytes is over this sandbox's max_file_bytes "
                f"({cfg.max_file_bytes})"
            )
        return real.read_bytes().decode("utf-8")

    try:
        text = await asyncio.to_thread(read)
    except FileNotFoundError:
        raise ToolFailed(
            f"File {path!r} does not exist; use list_files to see what exists"
        ) from None
    except IsADirectoryError:
        raise ToolFailed(f"{path!r} is a folder; use list_files to see its files") from None
    except UnicodeDecodeError:
        raise ToolFailed(
            f"{path!r} is not UTF-8 text; binary files can be passed to a worker as attachments"
        ) from None
    except OSError as exc:
        raise ToolFailed(f"Cannot read {path!r}: {exc.strerror}") from None
    chunk = text[offset : offset + max_chars]
    return {
        "content": chunk,
        "truncated": offset + len(chunk) < len(text),
        "total_chars": len(text),
        "offset": offset,
        "chars_read": len(chunk),
    }


async def write_file(ctx: RunContext[Invocation], path: str, content: str) -> str:
    """Write a text file in a writable sandbox (creates folders; replaces an existing file).

    Args:
        path: 'sandbox/relative/path'.
        content: The complete new content of the file.
    """
    inv = ctx.deps
    try:
        cfg, real = resolve(inv.worker, inv.state.registry.project_root, path)
    except SandboxViolation as exc:
        raise _fail(exc) from None
    if cfg.mode != "rw":
        raise ToolFailed(
            f"Cannot write to {path!r}: path is read-only. Writable paths: {_writable(inv.worker)}"
        )
    data = content.encode("utf-8")
    if cfg.max_file_bytes is not None and len(data) > cfg.max_file_bytes:
        raise ToolFailed(
            f"Cannot write {len(data)} bytes to {path!r}: "
            f"over max_file_bytes ({cfg.max_file_bytes})"
        )

    def write() -> None:
        real.parent.mkdir(parents=True, exist_ok=True)
        real.write_bytes(data)

    try:
        await asyncio.to_thread(write)
    except IsADirectoryError:
        raise ToolFailed(f"{path!r} is a folder; give a file path") from None
    except OSError as exc:
        raise ToolFailed(f"Cannot write {path!r}: {exc.strerror}") from None
    return f"Wrote {len(data)} bytes to {path}"


def gate_rule(inv: Invocation, name: str, args: dict[str, Any]) -> Gating | None:
    """write_file is gated unless its sandbox says write_approval: false; read_file when
    read_approval: true. A path that fails to resolve is not gated: the tool refuses it."""
    if name not in ("write_file", "read_file"):
        return None
    path = str(args.get("path", ""))
    try:
        cfg, _ = resolve(inv.worker, inv.state.registry.project_root, path)
    except SandboxViolation:
        return None
    if name == "write_file" and cfg.write_approval and cfg.mode == "rw":
        content = str(args.get("content", ""))
        return Gating(f"Write {len(content.encode())} bytes to {path}")
    if name == "read_file" and cfg.read_approval:
        return Gating(f"Read {path}")
    return None


def file_toolset() -> FunctionToolset[Invocation]:
    return FunctionToolset([list_files, read_file, write_file])
