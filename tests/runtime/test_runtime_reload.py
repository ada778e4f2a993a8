"""Editing files on disk takes effect on the next registry.get, without a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_helpers import (
    Script,
    ScriptedModels,
    call,
    collect,
    rewrite,
    terminal,
    tool_returns,
    worker_text,
    write_worker,
)

from app.runtime import InvalidWorker, WorkerNotFound, WorkerRegistry

pytestmark = pytest.mark.anyio


@pytest.fixture
def workers(tmp_path: Path) -> Path:
    folder = tmp_path / "workers"
    folder.mkdir()
    return folder


def test_unchanged_worker_is_served_from_cache(workers: Path) -> None:
    write_worker(workers, "w", "v1")
    registry = WorkerRegistry(workers)
    assert registry.get("w") is registry.get("w")


def test_editing_the_worker_file_takes_effect(workers: Path) -> None:
    path = write_worker(workers, "w", "v1", description="first")
    registry = WorkerRegistry(workers)
    first = registry.get("w")
    assert (first.instructions, first.spec.description) == ("v1", "first")
    # Same size on purpose: only the mtime tells the edit apart.
    rewrite(path, worker_text("w", "v2", description="secnd"))
    second = registry.get("w")
    assert (second.instructions, second.spec.description) == ("v2", "secnd")
    assert second is not first


def test_breaking_and_fixing_a_worker(workers: Path) -> None:
    path = write_worker(workers, "w", "v1")
    registry = WorkerRegistry(workers)
    registry.get("w")
    rewrite(path, worker_text("w", "v2", colour="red"))
    with pytest.raises(InvalidWorker) as info:
        registry.get("w")
    assert "colour" in info.value.message
    rewrite(path, worker_text("w", "v3"))
    assert registry.get("w").instructions == "v3"


def test_deleting_a_worker(workers: Path) -> None:
    path = write_worker(workers, "w")
    registry = WorkerRegistry(workers)
    registry.get("w")
    path.unlink()
    with pytest.raises(WorkerNotFound):
        registry.get("w")


def test_editing_an_included_file_takes_effect(workers: Path) -> None:
    write_worker(workers, "judge", "A {{ file('r.md') }} {% include 'p.md' %}", folder=True)
    rubric = workers / "judge" / "r.md"
    part = workers / "judge" / "p.md"
    rubric.write_text("r1", encoding="utf-8")
    part.write_text("p1", encoding="utf-8")
    registry = WorkerRegistry(workers)
    assert registry.get("judge").instructions == "A r1 p1"
    rewrite(rubric, "r2")
    assert registry.get("judge").instructions == "A r2 p1"
    rewrite(part, "p2")
    assert registry.get("judge").instructions == "A r2 p2"
    part.unlink()
    with pytest.raises(InvalidWorker) as info:
        registry.get("judge")
    assert "p.md" in info.value.message


async def test_editing_tools_py_takes_effect(workers: Path) -> None:
    tools = "def version() -> str:\n    return 'one'\n"
    path = write_worker(workers, "tooly", tools=tools, custom_tools=["version"], model="script:m")
    registry = WorkerRegistry(workers)

    def report(messages, info):
        return [f"version={tool_returns(messages)[0].content}"]

    async def run() -> str:
        script = Script([call("version", {}, "c1")], report)
        models = ScriptedModels({"script:m": script.model()})
        events = await collect(registry, "tooly", "go", models=models)
        end = terminal(events)
        assert end.type == "run.completed", end
        return end.output

    assert await run() == "version=one"
    rewrite(path.parent / "tools.py", tools.replace("'one'", "'two'"))
    assert await run() == "version=two"
    rewrite(path.parent / "tools.py", "raise ImportError('half-saved file')\n")
    events = await collect(registry, "tooly", "go")
    end = terminal(events)
    assert end.type == "run.failed"
    assert end.error["type"] == "invalid_worker"
    assert "half-saved file" in end.error["message"]


def test_moving_a_worker_between_forms(workers: Path) -> None:
    write_worker(workers, "w", "from directory", folder=True)
    registry = WorkerRegistry(workers)
    assert registry.get("w").instructions == "from directory"
    write_worker(workers, "w", "from file")
    assert registry.get("w").instructions == "from file"
