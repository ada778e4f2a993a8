"""Worker files: front matter, validation messages, discovery order, directory form, tools.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_helpers import write_worker

from app.runtime import InvalidWorker, WorkerNotFound, WorkerRegistry


@pytest.fixture
def workers(tmp_path: Path) -> Path:
    folder = tmp_path / "workers"
    folder.mkdir()
    return folder


@pytest.fixture
def registry(workers: Path) -> WorkerRegistry:
    return WorkerRegistry(workers)


def test_front_matter_fields_and_body(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(
        workers,
        "greeter",
        "Say hello.\nBriefly.",
        description="Friendly",
        model="anthropic:claude-haiku-4-5",
        model_settings={"temperature": 0.2},
        allow_workers=["helper"],
        usage_limits={"request_limit": 3},
        timeout_s=12.5,
    )
    worker = registry.get("greeter")
    assert worker.name == "greeter"
    assert worker.spec.description == "Friendly"
    assert worker.spec.model == "anthropic:claude-haiku-4-5"
    assert worker.spec.model_settings == {"temperature": 0.2}
    assert worker.spec.allow_workers == ["helper"]
    assert worker.spec.usage_limits.request_limit == 3
    assert worker.spec.timeout_s == 12.5
    assert worker.instructions == "Say hello.\nBriefly."


def test_defaults_when_only_name_is_given(workers: Path, registry: WorkerRegistry) -> None:
    (workers / "bare.worker").write_text("---\nname: bare\n---\n", encoding="utf-8")
    spec = registry.get("bare").spec
    assert spec.description == ""
    assert spec.model is None
    assert spec.allow_workers == []
    assert spec.custom_tools == []
    assert spec.usage_limits.request_limit == 50
    assert spec.timeout_s == 600
    assert spec.attachment_policy.max_attachments == 4


def test_unknown_key_is_refused_naming_key_and_path(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "typo", allow_worker=["x"])
    with pytest.raises(InvalidWorker) as info:
        registry.get("typo")
    err = info.value
    assert "allow_worker" in err.message
    assert "typo.worker" in err.message
    assert err.field == "allow_worker"
    assert err.path is not None and err.path.endswith("typo.worker")


def test_unknown_nested_key_is_refused(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "nested", usage_limits={"request_limt": 3})
    with pytest.raises(InvalidWorker) as info:
        registry.get("nested")
    assert "request_limt" in info.value.message
    assert info.value.field == "usage_limits.request_limt"


@pytest.mark.parametrize(
    ("front", "field"),
    [
        ({"timeout_s": "soon"}, "timeout_s"),
        ({"allow_workers": "helper"}, "allow_workers"),
        ({"model_settings": [1, 2]}, "model_settings"),
        ({"sandbox": {"paths": {"notes": {"root": "n", "mode": "write"}}}}, "mode"),
        ({"allow_workers": ["Not A Name"]}, "allow_workers"),
    ],
)
def test_wrong_type_names_the_field(
    workers: Path, registry: WorkerRegistry, front: dict, field: str
) -> None:
    write_worker(workers, "bad", **front)
    with pytest.raises(InvalidWorker) as info:
        registry.get("bad")
    assert field in info.value.message
    assert info.value.field is not None and field in info.value.field
    assert "bad.worker" in info.value.message


def test_name_must_match_the_file(workers: Path, registry: WorkerRegistry) -> None:
    (workers / "alpha.worker").write_text("---\nname: beta\n---\nHi\n", encoding="utf-8")
    with pytest.raises(InvalidWorker) as info:
        registry.get("alpha")
    assert info.value.field == "name"
    assert "'beta'" in info.value.message and "'alpha'" in info.value.message


def test_missing_name_is_refused(workers: Path, registry: WorkerRegistry) -> None:
    (workers / "anon.worker").write_text("---\ndescription: x\n---\nHi\n", encoding="utf-8")
    with pytest.raises(InvalidWorker) as info:
        registry.get("anon")
    assert info.value.field == "name"


@pytest.mark.parametrize(
    "text",
    [
        "name: nofence\n---\nHi\n",
        "---\nname: nofence\nHi\n",
        "---\nname: [unclosed\n---\nHi\n",
        "---\n- a list\n---\nHi\n",
    ],
)
def test_malformed_front_matter_names_the_file(
    workers: Path, registry: WorkerRegistry, text: str
) -> None:
    (workers / "nofence.worker").write_text(text, encoding="utf-8")
    with pytest.raises(InvalidWorker) as info:
        registry.get("nofence")
    assert "nofence.worker" in info.value.message


@pytest.mark.parametrize("name", ["UPPER", "-dash", "a b", "../workers/ok", "", "x" * 65, "é"])
def test_invalid_names_are_not_found_without_touching_disk(
    workers: Path, registry: WorkerRegistry, name: str
) -> None:
    write_worker(workers, "ok")
    if name and "/" not in name:
        # Even a file by that name on disk is not a worker.
        (workers / f"{name}.worker").write_text("---\nname: ok\n---\nx\n", encoding="utf-8")
    with pytest.raises(WorkerNotFound):
        registry.get(name)
    assert name not in registry.names()
    assert registry.get("ok").name == "ok"


def test_unknown_worker_is_not_found(registry: WorkerRegistry) -> None:
    with pytest.raises(WorkerNotFound) as info:
        registry.get("ghost")
    assert "ghost" in info.value.message


def test_lookup_order(workers: Path, registry: WorkerRegistry) -> None:
    generated = workers / "generated" / "w.worker"
    generated.parent.mkdir()
    generated.write_text("---\nname: w\n---\nfrom generated\n", encoding="utf-8")
    assert registry.get("w").instructions == "from generated"

    write_worker(workers, "w", "from directory", folder=True)
    assert registry.get("w").instructions == "from directory"

    write_worker(workers, "w", "from file")
    assert registry.get("w").instructions == "from file"
    assert registry.names() == ["w"]

    (workers / "w.worker").unlink()
    assert registry.get("w").instructions == "from directory"


def test_names_lists_every_form(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "single")
    write_worker(workers, "folder", folder=True)
    (workers / "generated").mkdir()
    (workers / "generated" / "made.worker").write_text("---\nname: made\n---\nx\n")
    (workers / "notes.md").write_text("not a worker")
    assert registry.names() == ["folder", "made", "single"]


TOOLS = '''
def shout(text: str) -> str:
    """Upper-case a text.

    Args:
        text: What to shout.
    """
    return text.upper()


async def whisper(text: str) -> str:
    """Lower-case a text."""
    return text.lower()


def helper_not_offered() -> None:
    pass
'''


def test_directory_form_loads_the_named_tools(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "loud", tools=TOOLS, custom_tools=["shout", "whisper"])
    worker = registry.get("loud")
    assert [t.__name__ for t in worker.tools] == ["shout", "whisper"]
    assert worker.tools[0]("hi") == "HI"
    assert worker.folder == workers / "loud"


def test_custom_tools_naming_a_missing_function(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "loud", tools=TOOLS, custom_tools=["shout", "scream"])
    with pytest.raises(InvalidWorker) as info:
        registry.get("loud")
    assert "scream" in info.value.message
    assert info.value.field == "custom_tools"


def test_custom_tools_naming_a_non_function(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "loud", tools="LIMIT = 3\n", custom_tools=["LIMIT"])
    with pytest.raises(InvalidWorker) as info:
        registry.get("loud")
    assert "LIMIT" in info.value.message


def test_custom_tools_without_tools_py(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "loud", folder=True, custom_tools=["shout"])
    with pytest.raises(InvalidWorker) as info:
        registry.get("loud")
    assert "tools.py" in info.value.message
    assert info.value.field == "custom_tools"


def test_custom_tools_in_single_file_form_is_refused(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "flat", custom_tools=["shout"])
    with pytest.raises(InvalidWorker) as info:
        registry.get("flat")
    assert info.value.field == "custom_tools"
    assert "directory form" in info.value.message


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("raise RuntimeError('database offline')\n", "RuntimeError: database offline"),
        ("import module_that_does_not_exist_xyz\n", "module_that_does_not_exist_xyz"),
        ("def broken(:\n", "SyntaxError"),
    ],
)
def test_tools_py_that_fails_to_import_invalidates_only_its_worker(
    workers: Path, registry: WorkerRegistry, source: str, expected: str
) -> None:
    write_worker(workers, "fragile", tools=source, custom_tools=["anything"])
    write_worker(workers, "steady", tools=TOOLS, custom_tools=["shout"])
    write_worker(workers, "plain")
    with pytest.raises(InvalidWorker) as info:
        registry.get("fragile")
    assert expected in info.value.message
    assert "tools.py" in info.value.message
    assert registry.get("steady").tools[0]("a") == "A"
    assert registry.get("plain").name == "plain"
    # Asking again reports the same error (cached), still without breaking anything.
    with pytest.raises(InvalidWorker):
        registry.get("fragile")


def test_tools_py_is_not_imported_when_no_tool_is_named(
    workers: Path, registry: WorkerRegistry
) -> None:
    write_worker(workers, "support", tools="raise RuntimeError('never imported')\n")
    assert registry.get("support").tools == ()


def test_invalid_worker_does_not_hide_the_others(workers: Path, registry: WorkerRegistry) -> None:
    write_worker(workers, "good")
    (workers / "broken.worker").write_text("garbage", encoding="utf-8")
    assert registry.names() == ["broken", "good"]
    with pytest.raises(InvalidWorker):
        registry.get("broken")
    assert registry.get("good").name == "good"
