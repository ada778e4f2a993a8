"""The one path-containment check. Every file the runtime opens on behalf of a
worker or a model (Jinja includes, sandbox files, attachments) is resolved here.

A relative path is refused outright when it is absolute, holds a NUL byte, a
backslash or a `..` component; what remains is joined to the root, resolved
(following symlinks) and must still lie inside the resolved root. Refusing `..`
even when it would stay inside keeps the rule easy to state to a model.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from .errors import SandboxViolation


def resolve_inside(root: Path, relative: str, *, label: str | None = None) -> Path:
    """Return the real path of `relative` under `root`, or raise SandboxViolation.

    `label` is how the path is named in messages (e.g. `notes/a.md`); defaults to `relative`.
    """
    shown = label if label is not None else relative
    if not isinstance(relative, str) or relative == "":
        raise SandboxViolation(f"Path {shown!r} is empty")
    if "\x00" in relative:
        raise SandboxViolation(f"Path {shown!r} contains a NUL byte")
    if "\\" in relative:
        raise SandboxViolation(f"Path {shown!r} contains a backslash; use '/' between folders")
    pure = PurePosixPath(relative)
    if pure.is_absolute():
        raise SandboxViolation(f"Path {shown!r} is absolute; give a path relative to its folder")
    if ".." in pure.parts:
        raise SandboxViolation(f"Path {shown!r} contains '..'; paths may not leave their folder")
    try:
        real_root = root.resolve()
        candidate = (real_root / pure).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError on 3.11)
        raise SandboxViolation(f"Path {shown!r} cannot be resolved: {exc}") from None
    if candidate != real_root and not candidate.is_relative_to(real_root):
        raise SandboxViolation(f"Path {shown!r} leads outside its folder (through a symlink)")
    return candidate
