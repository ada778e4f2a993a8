"""Sandbox paths: `sandbox_name/relative/path` resolved to a real file inside that sandbox's root.

All containment is `paths.resolve_inside`; this module adds the sandbox-level rules
(known sandbox names, suffixes, size) and says in each refusal what *is* allowed,
because the message goes back to a model that should correct itself.
"""

from __future__ import annotations

import asyncio
from pathlib import Path, PurePosixPath

from .attachments import Attachment
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
