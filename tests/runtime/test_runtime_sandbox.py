"""The sandbox file tools (workers.md §3): containment through the actual tools, property-based,
and each refusal as a failed tool call whose message says what *is* allowed."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_ai.exceptions import ToolFailed
from runtime_helpers import (
    Script,
    ScriptedModels,
    calls,
    collect,
    of_type,
    terminal,
    tool_returns,
    write_worker,
)

from app.runtime import SandboxViolation, WorkerRegistry
from app.runtime import sandbox as sb

pytestmark = pytest.mark.anyio

SECRET = "TOP-SECRET-d41d8cd9"
SIBLING = "SIBLING-OF-THE-ROOTS-7f3a"
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# ---- a project with two sandboxes, symlinks in and out, and secrets beside them --------------


def build_project(base: Path) -> Path:
    """base/outside (secret), base/project/{workers, notes (rw), input (ro, .md/.txt)}."""
    outside = base / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.md").write_text(SECRET)
    (outside / "dir" / "deep.md").write_text(SECRET)
    project = base / "project"
    notes, inp = project / "notes", project / "input"
    (notes / "sub").mkdir(parents=True)
    (inp / "docs").mkdir(parents=True)
    (project / "sibling.md").write_text(SIBLING)
    (notes / "a.md").write_text("note a")
    (notes / "sub" / "b.md").write_text("note b")
    (notes / "link_in").symlink_to("sub")  # a folder link that stays inside
    (notes / "link_in.md").symlink_to("a.md")  # a file link that stays inside
    (notes / "link_out").symlink_to(outside)  # a folder link leading out
    (notes / "link_out.md").symlink_to(outside / "secret.md")  # a file link leading out
    (notes / "dangling.md").symlink_to(outside / "new.md")  # leads out, to nothing yet
    (notes / "up").symlink_to("..")  # the project folder, holding sibling.md
    (inp / "doc.md").write_text("input doc")
    (inp / "docs" / "c.txt").write_text("input c")
    (inp / "link_out.md").symlink_to(outside / "secret.md")
    sandbox = {
        "paths": {
            "notes": {"root": "notes", "mode": "rw", "write_approval": False},
            "input": {"root": "input", "mode": "ro", "suffixes": [".md", ".TXT"]},
        }
    }
    write_worker(project / "workers", "boxed", model="script:boxed", sandbox=sandbox)
    return project


def snapshot(base: Path, skip: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under `base` outside the folder `skip`, with its content or link target."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for folder, dirs, files in os.walk(base, followlinks=False):
        here = Path(folder)
        if here == skip or skip in here.parents:
            continue
        for name in dirs + files:
            p = here / name
            if p == skip:
                continue
            rel = str(p.relative_to(base))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                out[rel] = ("file", p.read_bytes())
            else:
                out[rel] = ("dir", "")
    return out


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("sandbox")
    project = build_project(base)
    registry = WorkerRegistry(project / "workers")
    worker = registry.get("boxed")
    # What the tools read from their RunContext: ctx.deps.worker and the project root.
    ctx = SimpleNamespace(
        deps=SimpleNamespace(worker=worker, state=SimpleNamespace(registry=registry))
    )
    return SimpleNamespace(
        base=base,
        project=project,
        notes=(project / "notes").resolve(),
        input=(project / "input").resolve(),
        worker=worker,
        ctx=ctx,
    )


# ---- generated paths -------------------------------------------------------------------------

OUTSIDE_ABS = "{outside}"  # replaced by the absolute path of base/outside at test time
NAMES = st.sampled_from(
    ["notes", "input", "NOTES", "Notes", "INPUT", "outside", "", ".", "..", "~", "notes\x00"]
)
SEGMENTS = st.one_of(
    st.sampled_from(
        ["..", ".", "", "a.md", "A.MD", "sub", "b.md", "doc.md", "DOC.MD", "docs", "c.txt"]
    ),
    st.sampled_from(
        ["link_in", "link_in.md", "link_out", "link_out.md", "dangling.md", "up", "sibling.md"]
    ),
    st.sampled_from(["secret.md", "dir", "deep.md", OUTSIDE_ABS, "..\\..", "%2e%2e", "\x00"]),
    st.sampled_from(["é.md", "日本.md", "\u202e", "\uff21.md", "\ufb01le.md", " ", "~"]),
    st.sampled_from(["x.md\x00.txt", "a.md/", "sub//b.md", "./a.md", "a.md/.", "..."]),
    st.text(min_size=1, max_size=8),
)
LEADS = st.sampled_from(["", "", "", "/", "./", "//", "../"])
PATHS = st.builds(
    lambda lead, name, rest: lead + "/".join([name, *rest]),
    LEADS,
    NAMES,
    st.lists(SEGMENTS, max_size=5),
) | st.text(max_size=20)


def concrete(path: str, box: SimpleNamespace) -> str:
    return path.replace(OUTSIDE_ABS, str(box.base / "outside"))


def assert_inside(box: SimpleNamespace, shown: str) -> None:
    """`shown` (as a tool accepted it) resolves inside the root of its own sandbox."""
    cfg, real = sb.resolve(box.worker, box.project, shown)
    root = box.notes if cfg.root == "notes" else box.input
    assert real == root or real.is_relative_to(root), (shown, real)


@PROPERTY
@given(path=PATHS)
async def test_read_file_never_reads_outside_its_root(box: SimpleNamespace, path: str) -> None:
    path = concrete(path, box)
    try:
        result = await sb.read_file(box.ctx, path)  # type: ignore[arg-type]
    except ToolFailed as exc:
        assert str(exc)
        assert SECRET not in str(exc) and SIBLING not in str(exc)
        return
    assert SECRET not in result["content"] and SIBLING not in result["content"]
    assert_inside(box, path)
    assert "\x00" not in path and ".." not in path.split("/") and not path.startswith("/")


@PROPERTY
@given(path=PATHS, content=st.text(max_size=20))
async def test_write_file_never_writes_outside_its_root(
    box: SimpleNamespace, path: str, content: str
) -> None:
    path = concrete(path, box)
    before = snapshot(box.base, skip=box.notes)
    try:
        message = await sb.write_file(box.ctx, path, content)  # type: ignore[arg-type]
    except ToolFailed as exc:
        assert str(exc)
        written = False
    else:
        written = True
        assert message.startswith("Wrote ")
    assert snapshot(box.base, skip=box.notes) == before  # nothing outside notes/ changed
    if written:
        cfg, real = sb.resolve(box.worker, box.project, path)
        assert cfg.mode == "rw"
        assert real.is_relative_to(box.notes)
        assert real.read_bytes() == content.encode()
    # the links themselves survive every write
    assert os.readlink(box.notes / "link_out.md") == str(box.base / "outside" / "secret.md")
    assert not (box.base / "outside" / "new.md").exists()
    assert (box.base / "outside" / "secret.md").read_text() == SECRET


PATTERNS = st.sampled_from(
    [
        "**/*",
        "*",
        "*.md",
        "**/*.md",
        "sub/*",
        "link_out/*",
        "link_out/**/*",
        "up/*",
        "up/**/*.md",
        "../*",
        "/etc/*",
        "**/../*",
        "x\x00",
        "*/*/*",
        "[a-z]*",
        "link_in/*",
    ]
)


@PROPERTY
@given(path=PATHS | NAMES, pattern=PATTERNS)
async def test_list_files_never_lists_outside_its_root(
    box: SimpleNamespace, path: str, pattern: str
) -> None:
    path = concrete(path, box)
    try:
        found = await sb.list_files(box.ctx, path, pattern)  # type: ignore[arg-type]
    except ToolFailed as exc:
        assert str(exc)
        return
    assert found == sorted(found)
    for shown in found:
        assert_inside(box, shown)
        _, real = sb.resolve(box.worker, box.project, shown)
        data = real.read_bytes()
        assert SECRET.encode() not in data and SIBLING.encode() not in data, shown


LEGIT_NAME = st.text(alphabet=st.sampled_from("abcXYZ019-_ éü日"), min_size=1, max_size=10).filter(
    lambda s: s.strip() == s
)


@settings(PROPERTY, max_examples=40)
@given(parts=st.lists(LEGIT_NAME, min_size=1, max_size=3), content=st.text(max_size=50))
async def test_legitimate_paths_round_trip(
    box: SimpleNamespace, parts: list[str], content: str
) -> None:
    path = "notes/legit/" + "/".join(parts) + ".md"
    assert (await sb.write_file(box.ctx, path, content)).startswith("Wrote ")  # type: ignore[arg-type]
    result = await sb.read_file(box.ctx, path)  # type: ignore[arg-type]
    assert result["content"] == content
    assert result["total_chars"] == len(content)
    assert path in await sb.list_files(box.ctx, "notes/legit")  # type: ignore[arg-type]
    on_disk = box.notes / "legit" / Path(*parts[:-1]) / f"{parts[-1]}.md"
    assert on_disk.read_bytes() == content.encode()


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("notes/../sibling.md", "contains '..'"),
        ("notes//etc/passwd", "is absolute"),
        ("notes/link_out.md", "leads outside"),
        ("notes/link_out/secret.md", "leads outside"),
        ("notes/up/sibling.md", "leads outside"),
        ("notes/a\x00.md", "NUL"),
        ("notes/..\\sibling.md", "backslash"),
        ("NOTES/a.md", "Unknown sandbox 'NOTES'"),
        ("secret.md", "Unknown sandbox 'secret.md'"),
        ("notes", "names a sandbox but no file"),
        ("input/link_out.md", "leads outside"),
        ("input/doc.pdf", "Allowed suffixes: .md, .txt"),
    ],
)
async def test_escapes_are_refused_with_a_message(
    box: SimpleNamespace, path: str, needle: str
) -> None:
    with pytest.raises(ToolFailed) as info:
        await sb.read_file(box.ctx, path)  # type: ignore[arg-type]
    assert needle in str(info.value)
    with pytest.raises(SandboxViolation):
        sb.resolve(box.worker, box.project, path)


async def test_links_that_stay_inside_work(box: SimpleNamespace) -> None:
    assert (await sb.read_file(box.ctx, "notes/link_in/b.md"))["content"] == "note b"  # type: ignore[arg-type]
    assert (await sb.read_file(box.ctx, "notes/link_in.md"))["content"] == "note a"  # type: ignore[arg-type]
    assert (await sb.read_file(box.ctx, "input/docs/c.txt"))["content"] == "input c"  # type: ignore[arg-type]
    # suffixes are case-insensitive (the sandbox says .TXT, the file is .txt)
    assert "input/docs/c.txt" in await sb.list_files(box.ctx, "input")  # type: ignore[arg-type]


# ---- through a run: refusals are failed tool calls the model sees ----------------------------


def report(messages, info) -> list[str]:
    return [" || ".join(f"{r.tool_name}={r.outcome}:{r.content}" for r in tool_returns(messages))]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return build_project(tmp_path)


@pytest.fixture
def registry(project: Path) -> WorkerRegistry:
    return WorkerRegistry(project / "workers")


async def run_calls(
    registry: WorkerRegistry, *specs: tuple[str, dict[str, Any], str], worker: str = "boxed"
) -> tuple[list, dict[str, Any]]:
    """One model turn making `specs` in parallel; returns the events and {call id: return part}."""
    script = Script([calls(*specs)], report)
    models = ScriptedModels({f"script:{worker}": script.model()})
    events = await collect(registry, worker, "go", models=models)
    assert terminal(events).type == "run.completed", terminal(events)
    assert script.requests == 2
    return events, {r.tool_call_id: r for r in tool_returns(script.seen[1][0])}


async def test_refusals_reach_the_model_and_the_run_goes_on(
    project: Path, registry: WorkerRegistry
) -> None:
    events, ret = await run_calls(
        registry,
        ("write_file", {"path": "input/x.md", "content": "x"}, "ro"),
        ("write_file", {"path": "notes/../x.md", "content": "x"}, "dotdot"),
        ("read_file", {"path": "input/doc.pdf"}, "suffix"),
        ("read_file", {"path": "nowhere/a.md"}, "unknown"),
        ("read_file", {"path": "notes/missing.md"}, "missing"),
        ("read_file", {"path": "notes/sub"}, "folder"),
        ("read_file", {"path": "notes/link_out.md"}, "link"),
    )
    assert {cid: r.outcome for cid, r in ret.items()} == dict.fromkeys(ret, "failed")
    assert ret["ro"].content == (
        "Cannot write to 'input/x.md': path is read-only. Writable paths: notes"
    )
    assert "contains '..'" in ret["dotdot"].content
    assert "Allowed suffixes: .md, .txt" in ret["suffix"].content
    assert "Sandboxes: input, notes" in ret["unknown"].content
    assert "does not exist" in ret["missing"].content and "list_files" in ret["missing"].content
    assert "is a folder" in ret["folder"].content
    assert "leads outside" in ret["link"].content
    results = {r.tool_call_id: r for r in of_type(events, "tool.result")}
    assert {r.outcome for r in results.values()} == {"failed"}
    assert not (project / "input" / "x.md").exists() and not (project / "x.md").exists()


async def test_read_only_refusal_when_nothing_is_writable(tmp_path: Path) -> None:
    sandbox = {"paths": {"input": {"root": "input"}, "more": {"root": "more", "mode": "ro"}}}
    write_worker(tmp_path / "workers", "reader", model="script:reader", sandbox=sandbox)
    registry = WorkerRegistry(tmp_path / "workers")
    _, ret = await run_calls(
        registry, ("write_file", {"path": "more/x.md", "content": "x"}, "w"), worker="reader"
    )
    assert ret["w"].content.endswith("path is read-only. Writable paths: none")


async def test_suffix_refusal_on_write_lists_allowed_suffixes(tmp_path: Path) -> None:
    sandbox = {"paths": {"out": {"root": "out", "mode": "rw", "suffixes": [".md", ".log"]}}}
    write_worker(tmp_path / "workers", "logger", model="script:logger", sandbox=sandbox)
    registry = WorkerRegistry(tmp_path / "workers")
    events, ret = await run_calls(
        registry,
        ("write_file", {"path": "out/x.py", "content": "x"}, "py"),
        ("write_file", {"path": "out/noext", "content": "x"}, "none"),
        worker="logger",
    )
    assert "Suffix '.py' of 'out/x.py' is not allowed" in ret["py"].content
    assert "Allowed suffixes: .log, .md" in ret["py"].content
    assert "'(none)'" in ret["none"].content
    assert not of_type(events, "approval.requested")  # refused before anyone is asked
    assert not (tmp_path / "out").exists()


async def test_max_file_bytes_limits_read_and_write(tmp_path: Path) -> None:
    sandbox = {"paths": {"box": {"root": "box", "mode": "rw", "max_file_bytes": 10}}}
    sandbox["paths"]["box"]["write_approval"] = False
    write_worker(tmp_path / "workers", "small", model="script:small", sandbox=sandbox)
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "big.md").write_text("x" * 11)
    (tmp_path / "box" / "ok.md").write_text("é" * 5)  # 10 bytes, 5 chars
    registry = WorkerRegistry(tmp_path / "workers")
    _, ret = await run_calls(
        registry,
        ("read_file", {"path": "box/big.md"}, "rbig"),
        ("read_file", {"path": "box/ok.md"}, "rok"),
        ("write_file", {"path": "box/w.md", "content": "é" * 6}, "wbig"),
        ("write_file", {"path": "box/w2.md", "content": "0123456789"}, "wok"),
        worker="small",
    )
    assert ret["rbig"].outcome == "failed"
    assert "11 bytes is over this sandbox's max_file_bytes (10)" in ret["rbig"].content
    assert ret["rok"].outcome == "success" and ret["rok"].content["content"] == "é" * 5
    assert ret["wbig"].outcome == "failed"
    assert "Cannot write 12 bytes to 'box/w.md': over max_file_bytes (10)" in ret["wbig"].content
    assert not (tmp_path / "box" / "w.md").exists()
    assert ret["wok"].outcome == "success"
    assert (tmp_path / "box" / "w2.md").read_text() == "0123456789"


async def test_read_file_pages(project: Path, registry: WorkerRegistry) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(50)) + "ü" * 10
    (project / "notes" / "long.md").write_text(text)
    _, ret = await run_calls(
        registry,
        ("read_file", {"path": "notes/long.md", "max_chars": 20}, "p1"),
        ("read_file", {"path": "notes/long.md", "offset": 20, "max_chars": 20}, "p2"),
        ("read_file", {"path": "notes/long.md", "offset": 40, "max_chars": 100}, "p3"),
        ("read_file", {"path": "notes/long.md", "offset": 500}, "past"),
        ("read_file", {"path": "notes/long.md"}, "all"),
    )
    pages = {cid: r.content for cid, r in ret.items()}
    assert pages["p1"] == {
        "content": text[:20],
        "truncated": True,
        "total_chars": 60,
        "offset": 0,
        "chars_read": 20,
    }
    assert (pages["p2"]["content"], pages["p2"]["truncated"]) == (text[20:40], True)
    assert pages["p3"] == {
        "content": text[40:],
        "truncated": False,
        "total_chars": 60,
        "offset": 40,
        "chars_read": 20,
    }
    assert pages["p1"]["content"] + pages["p2"]["content"] + pages["p3"]["content"] == text
    assert (pages["past"]["content"], pages["past"]["truncated"]) == ("", False)
    assert pages["all"]["content"] == text and pages["all"]["truncated"] is False


async def test_list_files_dot_lists_every_sandbox(project: Path, registry: WorkerRegistry) -> None:
    (project / "input" / "skipped.pdf").write_bytes(b"%PDF")  # not an allowed suffix of input
    _, ret = await run_calls(
        registry,
        ("list_files", {}, "all"),
        ("list_files", {"path": "notes", "pattern": "*.md"}, "top"),
        ("list_files", {"path": "input/docs"}, "sub"),
        ("list_files", {"path": "nowhere"}, "unknown"),
    )
    assert ret["all"].content == [
        "input/doc.md",
        "input/docs/c.txt",
        "notes/a.md",
        "notes/link_in.md",
        "notes/sub/b.md",
    ]
    assert ret["top"].content == ["notes/a.md", "notes/link_in.md"]
    assert ret["sub"].content == ["input/docs/c.txt"]
    assert ret["unknown"].outcome == "failed"
    assert "Sandboxes: input, notes" in ret["unknown"].content


async def test_binary_file_read_is_refused_helpfully(
    project: Path, registry: WorkerRegistry
) -> None:
    (project / "notes" / "deck.md").write_bytes(b"%PDF-1.4\xff\xfe\x00binary")
    _, ret = await run_calls(registry, ("read_file", {"path": "notes/deck.md"}, "bin"))
    assert ret["bin"].outcome == "failed"
    assert ret["bin"].content == (
        "'notes/deck.md' is not UTF-8 text; binary files can be passed to a worker as attachments"
    )


async def test_write_creates_parent_folders(project: Path, registry: WorkerRegistry) -> None:
    _, ret = await run_calls(
        registry,
        ("write_file", {"path": "notes/new/deeper/still/n.md", "content": "deep"}, "w"),
    )
    assert ret["w"].outcome == "success"
    assert ret["w"].content == "Wrote 4 bytes to notes/new/deeper/still/n.md"
    assert (project / "notes" / "new" / "deeper" / "still" / "n.md").read_text() == "deep"


async def test_no_sandbox_means_no_file_tools(tmp_path: Path) -> None:
    write_worker(tmp_path / "workers", "bare", model="script:bare")
    script = Script(["hi"])
    models = ScriptedModels({"script:bare": script.model()})
    await collect(WorkerRegistry(tmp_path / "workers"), "bare", "go", models=models)
    assert script.seen[0][1].function_tools == []


async def test_file_tools_are_offered_with_a_sandbox(registry: WorkerRegistry) -> None:
    script = Script(["hi"])
    await collect(registry, "boxed", "go", models=ScriptedModels({"script:boxed": script.model()}))
    names = sorted(t.name for t in script.seen[0][1].function_tools)
    assert names == ["list_files", "read_file", "write_file"]


# ---- symlink loops and odd glob patterns: failed tool calls, not dead runs --------------------


async def test_symlink_loop_is_a_failed_tool_call(project: Path, registry: WorkerRegistry) -> None:
    (project / "notes" / "loop.md").symlink_to("loop.md")
    _, ret = await run_calls(registry, ("read_file", {"path": "notes/loop.md"}, "r"))
    assert ret["r"].outcome == "failed"


async def test_list_files_skips_a_symlink_loop(project: Path, registry: WorkerRegistry) -> None:
    (project / "notes" / "loop.md").symlink_to("loop.md")
    _, ret = await run_calls(registry, ("list_files", {"path": "notes"}, "l"))
    assert ret["l"].outcome == "success"
    assert "notes/a.md" in ret["l"].content and "notes/loop.md" not in ret["l"].content


@pytest.mark.parametrize("pattern", ["", ".", "x**", "a/**b"])
async def test_bad_glob_pattern_is_a_failed_tool_call(
    registry: WorkerRegistry, pattern: str
) -> None:
    _, ret = await run_calls(registry, ("list_files", {"path": "notes", "pattern": pattern}, "l"))
    assert ret["l"].outcome == "failed"
