"""Instructions templates: file() and include, rooted at the worker's folder, never outside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_helpers import Script, ScriptedModels, collect, terminal, write_worker

from app.runtime import InvalidWorker, WorkerRegistry

pytestmark = pytest.mark.anyio


@pytest.fixture
def workers(tmp_path: Path) -> Path:
    folder = tmp_path / "workers"
    folder.mkdir()
    return folder


def test_file_and_include_inline_files(workers: Path) -> None:
    folder = workers / "judge"
    write_worker(
        workers,
        "judge",
        "Rubric:\n{{ file('RUBRIC.md') }}\n{% include 'parts/tone.md' %}",
        folder=True,
    )
    (folder / "RUBRIC.md").write_text("- be exact ✓\n", encoding="utf-8")
    (folder / "parts").mkdir()
    (folder / "parts" / "tone.md").write_text("Tone: {{ 'dry' }}", encoding="utf-8")
    instructions = WorkerRegistry(workers).get("judge").instructions
    assert instructions == "Rubric:\n- be exact ✓\n\nTone: dry"


def test_single_file_worker_templates_are_rooted_at_the_workers_folder(workers: Path) -> None:
    write_worker(workers, "flat", "{{ file('shared.md') }}")
    (workers / "shared.md").write_text("shared text", encoding="utf-8")
    assert WorkerRegistry(workers).get("flat").instructions == "shared text"


async def test_the_model_receives_the_rendered_instructions(workers: Path) -> None:
    write_worker(workers, "judge", "Use: {{ file('r.md') }}", folder=True, model="script:m")
    (workers / "judge" / "r.md").write_text("the rubric", encoding="utf-8")
    script = Script(["ok"])
    events = await collect(
        WorkerRegistry(workers), "judge", "x", models=ScriptedModels({"script:m": script.model()})
    )
    assert terminal(events).type == "run.completed"
    assert script.seen[0][1].instructions == "Use: the rubric"


def test_plain_body_is_untouched(workers: Path) -> None:
    body = (
        "Use {braces} and { { spaced } }, $vars, <b>tags</b>, % signs and #{ruby}.\n\n  Indented."
    )
    write_worker(workers, "plain", body)
    assert WorkerRegistry(workers).get("plain").instructions == body


def test_template_comment_marks_a_template(workers: Path) -> None:
    write_worker(workers, "commented", "Hello{# a note for maintainers #} world")
    assert WorkerRegistry(workers).get("commented").instructions == "Hello world"


@pytest.mark.parametrize(
    "ref",
    [
        "{{ file('../secret.txt') }}",
        "{% include '../secret.txt' %}",
        "{{ file('sub/../../secret.txt') }}",
    ],
)
def test_dotdot_is_refused_naming_the_path(workers: Path, ref: str) -> None:
    (workers / "secret.txt").write_text("TOP SECRET", encoding="utf-8")
    write_worker(workers, "sneaky", ref, folder=True)
    (workers / "sneaky" / "sub").mkdir()
    with pytest.raises(InvalidWorker) as info:
        WorkerRegistry(workers).get("sneaky")
    assert "secret.txt" in info.value.message
    assert "sneaky/worker.worker" in info.value.message
    assert "TOP SECRET" not in info.value.message


@pytest.mark.parametrize("tag", ["file", "include"])
def test_absolute_path_is_refused(workers: Path, tmp_path: Path, tag: str) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("outside", encoding="utf-8")
    ref = f"{{{{ file('{outside}') }}}}" if tag == "file" else f"{{% include '{outside}' %}}"
    write_worker(workers, "abs", ref)
    with pytest.raises(InvalidWorker) as info:
        WorkerRegistry(workers).get("abs")
    assert str(outside) in info.value.message


@pytest.mark.parametrize("tag", ["file", "include"])
def test_symlink_leading_out_is_refused(workers: Path, tmp_path: Path, tag: str) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("outside", encoding="utf-8")
    ref = "{{ file('notes.md') }}" if tag == "file" else "{% include 'notes.md' %}"
    write_worker(workers, "linked", ref, folder=True)
    (workers / "linked" / "notes.md").symlink_to(outside)
    with pytest.raises(InvalidWorker) as info:
        WorkerRegistry(workers).get("linked")
    assert "notes.md" in info.value.message
    assert "outside" in info.value.message  # "leads outside its folder"


def test_symlink_staying_inside_is_followed(workers: Path) -> None:
    write_worker(workers, "linked", "{{ file('alias.md') }}", folder=True)
    (workers / "linked" / "real.md").write_text("real content", encoding="utf-8")
    (workers / "linked" / "alias.md").symlink_to(workers / "linked" / "real.md")
    assert WorkerRegistry(workers).get("linked").instructions == "real content"


@pytest.mark.parametrize("tag", ["file", "include"])
def test_missing_file_names_the_path(workers: Path, tag: str) -> None:
    ref = "{{ file('gone/RUBRIC.md') }}" if tag == "file" else "{% include 'gone/RUBRIC.md' %}"
    write_worker(workers, "lost", ref)
    with pytest.raises(InvalidWorker) as info:
        WorkerRegistry(workers).get("lost")
    assert "gone/RUBRIC.md" in info.value.message
    assert "lost.worker" in info.value.message


@pytest.mark.parametrize("body", ["{{ undefined_name }}", "{% if %}", "{{ file('a.md') "])
def test_template_errors_make_the_worker_invalid(workers: Path, body: str) -> None:
    write_worker(workers, "broken", body)
    write_worker(workers, "fine")
    registry = WorkerRegistry(workers)
    with pytest.raises(InvalidWorker) as info:
        registry.get("broken")
    assert "broken.worker" in info.value.message
    assert registry.get("fine").name == "fine"
