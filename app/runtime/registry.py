"""Find, load and cache workers; reload a worker when any file it was built from changes.

A worker NAME is found at (first hit wins) `NAME.worker`, `NAME/worker.worker`,
`generated/NAME.worker` under the workers folder. Each cache entry remembers the
(mtime, size) of every file that went into it (the worker file, `tools.py`, files
the instructions template read), so an edit takes effect on the next run without a
restart and an unchanged worker costs a few `stat` calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .custom_tools import load_code, load_tools
from .definitions import WorkerSpec, is_valid_name, parse_spec, split_front_matter
from .errors import InvalidWorker, WorkerNotFound
from .prompts import render_instructions
from .schemas import check_schema

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(eq=False)
class Worker:
    """A loaded, valid worker definition. Immutable once loaded; replaced on reload."""

    spec: WorkerSpec
    instructions: str
    source: str
    path: Path
    tools: tuple[Callable[..., Any], ...] = ()
    code: Callable[..., Any] | None = None  # the async function of a code worker
    cache: dict[str, Any] = field(default_factory=dict)  # built agents, keyed by the builder

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def folder(self) -> Path:
        return self.path.parent


@dataclass
class _Entry:
    fingerprint: Fingerprint
    result: Worker | InvalidWorker


def _fingerprint(paths: list[Path]) -> Fingerprint:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), -1, -1))
    return tuple(out)


def parse_worker_text(
    text: str, *, name: str, folder: Path, source: str
) -> tuple[WorkerSpec, str, str, list[Path]]:
    """Validate a worker file's text: (spec, body, rendered instructions, files read).
    Raises InvalidWorker naming `source` and the field at fault."""
    data, body = split_front_matter(text, path=source)
    spec = parse_spec(data, path=source, expected_name=name)
    check_schema(spec.input_schema, field="input_schema", source=source)
    check_schema(spec.output_schema, field="output_schema", source=source)
    instructions, used = render_instructions(body, folder=folder, source=source)
    return spec, body, instructions, used


class WorkerRegistry:
    def __init__(self, workers_dir: Path | str, *, project_root: Path | str | None = None):
        self.workers_dir = Path(workers_dir).resolve()
        self.project_root = (
            Path(project_root).resolve() if project_root is not None else self.workers_dir.parent
        )
        self._cache: dict[str, _Entry] = {}

    def locate(self, name: str) -> Path | None:
        if not is_valid_name(name):
            return None
        d = self.workers_dir
        for candidate in (d / f"{name}.worker", d / name / "worker.worker"):
            if candidate.is_file():
                return candidate
        generated = d / "generated" / f"{name}.worker"
        return generated if generated.is_file() else None

    def names(self) -> list[str]:
        """Every worker name present on disk (valid or not), sorted."""
        found: set[str] = set()
        d = self.workers_dir
        if d.is_dir():
            for p in d.glob("*.worker"):
                found.add(p.stem)
            for p in d.glob("*/worker.worker"):
                found.add(p.parent.name)
            for p in (d / "generated").glob("*.worker"):
                found.add(p.stem)
        return sorted(n for n in found if is_valid_name(n))

    def get(self, name: str) -> Worker:
        """The current definition of `name`; raises WorkerNotFound or InvalidWorker."""
        path = self.locate(name)
        if path is None:
            self._cache.pop(name, None)
            raise WorkerNotFound(f"No worker named {name!r}")
        entry = self._cache.get(name)
        if (
            entry is not None
            and entry.fingerprint[0][0] == str(path)
            and _fingerprint([Path(p) for p, _, _ in entry.fingerprint]) == entry.fingerprint
        ):
            return self._unwrap(entry)
        entry = self._load(name, path)
        self._cache[name] = entry
        return self._unwrap(entry)

    @staticmethod
    def _unwrap(entry: _Entry) -> Worker:
        if isinstance(entry.result, InvalidWorker):
            raise entry.result
        return entry.result

    def _load(self, name: str, path: Path) -> _Entry:
        tools_py = path.parent / "tools.py" if path.name == "worker.worker" else None
        deps = [path] + ([tools_py] if tools_py else [])
        fingerprint = _fingerprint(deps)  # taken before reading: a concurrent edit reloads again
        source = (
            str(path.relative_to(self.workers_dir.parent))
            if path.is_relative_to(self.workers_dir.parent)
            else str(path)
        )
        try:
            text = path.read_text(encoding="utf-8")
            spec, body, instructions, used = parse_worker_text(
                text, name=name, folder=path.parent, source=source
            )
            if spec.custom_tools and tools_py is None:
                raise InvalidWorker(
                    f"{source}: field 'custom_tools' needs the directory form "
                    f"(workers/{name}/worker.worker with tools.py beside it)",
                    path=source,
                    field="custom_tools",
                )
            tools = load_tools(tools_py, spec.custom_tools, source=source) if tools_py else []
            code = None
            if spec.code:
                code, code_file = load_code(path.parent, spec.code, source=source)
                used = [*used, code_file]
        except InvalidWorker as exc:
            return _Entry(fingerprint, exc)
        except (OSError, UnicodeDecodeError) as exc:
            return _Entry(fingerprint, InvalidWorker(f"{source}: cannot read: {exc}", path=source))
        fingerprint = fingerprint + _fingerprint(used)
        worker = Worker(
            spec=spec,
            instructions=instructions,
            source=body,
            path=path,
            tools=tuple(tools),
            code=code,
        )
        return _Entry(fingerprint, worker)
