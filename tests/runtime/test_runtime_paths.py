"""paths.resolve_inside: whatever the relative path, the result stays inside the root."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.runtime import SandboxViolation
from app.runtime.paths import resolve_inside

SEGMENTS = st.one_of(
    st.sampled_from(["..", ".", "", "a", "b.md", "sub", "link_out", "link_in", "...", "..a"]),
    st.sampled_from(["/", "\\", "\x00", "..\\..", "C:", "~", "é", "日本", "\u202e", " "]),
    st.text(min_size=1, max_size=8),
)
PATHS = st.lists(SEGMENTS, min_size=1, max_size=6).map("/".join) | st.text(max_size=30)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("paths")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "b.md").write_text("inside", encoding="utf-8")
    (base / "outside.md").write_text("outside", encoding="utf-8")
    (root / "link_out").symlink_to(base)
    (root / "link_in").symlink_to(root / "sub")
    (root / "sub" / "up").symlink_to(root.parent)
    return root


@settings(max_examples=250, deadline=None, database=None)
@given(relative=PATHS)
def test_result_is_always_inside_the_root(root: Path, relative: str) -> None:
    try:
        result = resolve_inside(root, relative)
    except SandboxViolation as exc:
        assert exc.message  # refused, with a message
        return
    real_root = root.resolve()
    assert result == real_root or result.is_relative_to(real_root)
    assert result == result.resolve()  # symlinks already followed
    assert "\x00" not in relative
    assert "\\" not in relative
    assert not relative.startswith("/")
    assert ".." not in relative.split("/")


@pytest.mark.parametrize(
    ("relative", "reason"),
    [
        ("", "empty"),
        ("../outside.md", ".."),
        ("sub/../b.md", ".."),
        ("sub/../../outside.md", ".."),
        ("/etc/passwd", "absolute"),
        ("//etc/passwd", "absolute"),
        ("b.md\x00.txt", "NUL"),
        ("..\\outside.md", "backslash"),
        ("sub\\b.md", "backslash"),
        ("link_out/outside.md", "symlink"),
        ("link_out", "symlink"),
        ("sub/up/outside.md", "symlink"),
        ("link_in/up/outside.md", "symlink"),
    ],
)
def test_refusals_say_why(root: Path, relative: str, reason: str) -> None:
    with pytest.raises(SandboxViolation) as info:
        resolve_inside(root, relative)
    assert reason in info.value.message


def test_label_names_the_path_in_messages(root: Path) -> None:
    with pytest.raises(SandboxViolation) as info:
        resolve_inside(root, "../x", label="notes/../x")
    assert "'notes/../x'" in info.value.message


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("b.md", "b.md"),
        ("./b.md", "b.md"),
        ("sub//new.md", "sub/new.md"),
        ("link_in/new.md", "sub/new.md"),  # a symlink that stays inside is followed
        ("dir with spaces/é.md", "dir with spaces/é.md"),  # need not exist yet
        ("...", "..."),
        (".", "."),
    ],
)
def test_paths_inside_are_resolved(root: Path, relative: str, expected: str) -> None:
    assert resolve_inside(root, relative) == (root / expected).resolve()


def test_symlinked_root_is_fine(root: Path) -> None:
    alias = root.parent / "alias"
    if not alias.exists():
        alias.symlink_to(root)
    assert resolve_inside(alias, "b.md") == (root / "b.md").resolve()
    with pytest.raises(SandboxViolation):
        resolve_inside(alias, "link_out/outside.md")
