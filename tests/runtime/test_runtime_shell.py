"""The optional `shell` tool (workers.md §8): prefix rules on whole words, no shell features,
default deny, approvals, a timeout that kills, capped output, and the llm-do CLI's keys."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from runtime_helpers import (
    Script,
    ScriptedModels,
    calls,
    of_type,
    terminal,
    tool_returns,
    write_worker,
)

from app.runtime import Event, InvalidWorker, WorkerRegistry, WorkerRun
from app.runtime.events import TERMINAL_TYPES
from app.runtime.shell import MAX_OUTPUT

pytestmark = pytest.mark.anyio

RULES = {
    "rules": [
        {"prefix": "git push", "allowed": False},
        {"prefix": "git status", "approval": False},
        {"prefix": "python3 -c", "approval": False},
        {"prefix": "python3 gated.py", "approval": True},
    ]
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp/workers with shell workers; `python3` on PATH is this interpreter (fast to start)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    project = tmp_path / "project"
    workers = project / "workers"
    write_worker(workers, "sh", model="script:sh", shell=RULES)
    (project / "gated.py").write_text("open('gated-ran', 'w').write('yes'); print('gated ok')")
    return project


@pytest.fixture
def registry(project: Path) -> WorkerRegistry:
    return WorkerRegistry(project / "workers")


def real(path: Path) -> str:
    return os.path.realpath(path)


def report(messages, info) -> list[str]:
    return ["ok"]


async def run_shell(
    registry: WorkerRegistry,
    *commands: str | tuple[str, float],
    worker: str = "sh",
    decide: str | None = None,
) -> tuple[list[Event], dict[str, Any]]:
    """One model turn running `commands` in parallel (ids c0, c1, ...); returns the events and
    {id: ToolReturnPart}. Every approval is answered with `decide` (when given)."""
    specs = []
    for i, command in enumerate(commands):
        args = {"command": command} if isinstance(command, str) else {}
        if isinstance(command, tuple):
            args = {"command": command[0], "timeout_s": command[1]}
        specs.append(("shell", args, f"c{i}"))
    script = Script([calls(*specs)], report)
    queue: asyncio.Queue[Event] = asyncio.Queue()
    run = WorkerRun(
        registry,
        worker,
        "go",
        on_event=queue.put_nowait,
        models=ScriptedModels({f"script:{worker}": script.model()}),
    )
    events: list[Event] = []
    with anyio.fail_after(15):
        task = asyncio.create_task(run.execute())
        while True:
            event = await queue.get()
            events.append(event)
            if event.type == "approval.requested" and decide is not None:
                run.state.gate.decide(event.approval_id, decide)  # type: ignore[arg-type]
            if event.type in TERMINAL_TYPES:
                break
        await task
    assert terminal(events).type == "run.completed", terminal(events)
    return events, {r.tool_call_id: r for r in tool_returns(script.seen[1][0])}


async def test_an_allowed_command_runs_in_the_project_root(
    project: Path, registry: WorkerRegistry
) -> None:
    cwd_and_stderr = (
        "python3 -c \"print(__import__('os').getcwd()), "
        "print('to stderr', file=__import__('sys').stderr)\""
    )
    _, ret = await run_shell(registry, cwd_and_stderr, "python3 -c 'raise SystemExit(3)'")
    assert ret["c0"].outcome == "success"
    assert ret["c0"].content == {
        "exit_code": 0,
        "stdout": f"{real(project)}\n",
        "stderr": "to stderr\n",
        "truncated": False,
    }
    assert ret["c1"].outcome == "success"  # a non-zero exit is a result, not a refusal
    assert ret["c1"].content["exit_code"] == 3


@pytest.mark.parametrize(
    "command",
    [
        "python3 -c \"open('ran', 'w')\" | cat",
        "python3 -c \"open('ran', 'w')\" > out.txt",
        "python3 -c \"open('ran', 'w')\" < in.txt",
        "python3 -c \"open('ran', 'w')\"; ls",
        "python3 -c \"open('ran', 'w')\" & ls",
        "python3 -c \"open('ran', 'w')\" `ls`",
        "python3 -c \"open('ran', 'w')\" $(ls)",
        "python3 -c \"open('ran', 'w')\"\nls",
    ],
    ids=[
        "pipe",
        "redirect-out",
        "redirect-in",
        "semicolon",
        "ampersand",
        "backtick",
        "subst",
        "nl",
    ],
)
async def test_shell_metacharacters_are_refused(
    project: Path, registry: WorkerRegistry, command: str
) -> None:
    events, ret = await run_shell(registry, command)
    assert ret["c0"].outcome == "failed"
    assert "metacharacter" in ret["c0"].content
    assert not (project / "ran").exists()  # nothing ran
    assert not of_type(events, "approval.requested")


async def test_prefix_rules_match_whole_words(project: Path, registry: WorkerRegistry) -> None:
    _, ret = await run_shell(
        registry,
        "git statusx",
        "git status --short",
        "git",
        "git push origin main",
        "python3 -cprint(1)",
        "python3  -c  'print(2)'",  # extra spaces still split into the same words
    )
    assert ret["c0"].outcome == "failed"
    assert ret["c0"].content.startswith("Command 'git statusx' is not allowed")
    # "git status" matches and runs (the folder is no repository: git says so, exit 128)
    assert ret["c1"].outcome == "success"
    assert ret["c1"].content["exit_code"] != 0
    assert ret["c2"].outcome == "failed"
    assert ret["c3"].outcome == "failed"  # the first matching rule says allowed: false
    assert "is not allowed" in ret["c3"].content
    assert ret["c4"].outcome == "failed"
    assert ret["c5"].outcome == "success" and ret["c5"].content["stdout"] == "2\n"


async def test_default_is_deny_and_the_refusal_lists_allowed_prefixes(
    registry: WorkerRegistry,
) -> None:
    _, ret = await run_shell(registry, "ls -la")
    assert ret["c0"].outcome == "failed"
    assert ret["c0"].content == (
        "Command 'ls -la' is not allowed. Allowed command prefixes: "
        "git status, python3 -c, python3 gated.py"
    )


async def test_default_can_allow(project: Path) -> None:
    shell = {"rules": [], "default": {"allowed": True, "approval": False}}
    write_worker(project / "workers", "open", model="script:open", shell=shell)
    _, ret = await run_shell(
        WorkerRegistry(project / "workers"), "python3 -c 'print(7)'", worker="open"
    )
    assert ret["c0"].content["stdout"] == "7\n"


@pytest.mark.parametrize(("decision", "outcome"), [("approve", "success"), ("deny", "denied")])
async def test_a_rule_with_approval_asks_first(
    project: Path, registry: WorkerRegistry, decision: str, outcome: str
) -> None:
    events, ret = await run_shell(registry, "python3 gated.py", decide=decision)
    (req,) = of_type(events, "approval.requested")
    assert (req.tool, req.args) == ("shell", {"command": "python3 gated.py", "timeout_s": 30})
    assert req.description == "Run shell command: python3 gated.py"
    assert ret["c0"].outcome == outcome
    assert (project / "gated-ran").exists() is (decision == "approve")
    if decision == "approve":
        assert ret["c0"].content["stdout"] == "gated ok\n"


async def test_a_rule_without_approval_does_not_ask(registry: WorkerRegistry) -> None:
    events, _ = await run_shell(registry, "python3 -c 'print(1)'")
    assert not of_type(events, "approval.requested")


async def test_timeout_kills_the_command(project: Path, registry: WorkerRegistry) -> None:
    code = "(open('pid', 'w').write(str(__import__('os').getpid())), __import__('time').sleep(60))"
    started = time.monotonic()
    _, ret = await run_shell(registry, (f'python3 -c "{code}"', 1.0))
    assert time.monotonic() - started < 10
    assert ret["c0"].outcome == "failed"
    assert "timed out after 1 s and was killed" in ret["c0"].content
    pid = int((project / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


async def test_output_is_capped_per_stream(registry: WorkerRegistry) -> None:
    _, ret = await run_shell(
        registry,
        "python3 -c \"print('x' * 200000)\"",
        "python3 -c \"__import__('sys').stderr.write('e' * 60000), print('small')\"",
        f"python3 -c \"print('y' * {MAX_OUTPUT - 1})\"",
    )
    big = ret["c0"].content
    assert (len(big["stdout"]), big["truncated"], big["exit_code"]) == (MAX_OUTPUT, True, 0)
    assert set(big["stdout"]) == {"x"}
    err = ret["c1"].content
    assert (len(err["stderr"]), err["stdout"], err["truncated"]) == (MAX_OUTPUT, "small\n", True)
    exact = ret["c2"].content  # MAX_OUTPUT - 1 chars and a newline: exactly the cap
    assert (len(exact["stdout"]), exact["truncated"]) == (MAX_OUTPUT, False)


async def test_legacy_llm_do_keys_are_accepted(project: Path) -> None:
    workers = project / "workers"
    (project / "sub").mkdir()
    write_worker(
        workers,
        "legacy",
        model="script:legacy",
        shell_rules=[
            {"pattern": "python3 -c", "allowed": True, "approval_required": False},
            {"pattern": "python3 gated.py", "approval_required": False, "sandbox_paths": ["x"]},
            {"pattern": "git", "allowed": False},
        ],
        shell_default={"allowed": False, "approval_required": True},
        shell_cwd="sub",
    )
    registry = WorkerRegistry(workers)
    shell = registry.get("legacy").spec.shell
    assert shell is not None
    assert [(r.prefix, r.allowed, r.approval) for r in shell.rules] == [
        ("python3 -c", True, False),
        ("python3 gated.py", True, True),  # a path restriction becomes an approval
        ("git", False, True),
    ]
    assert (shell.default.allowed, shell.default.approval, shell.cwd) == (False, True, "sub")
    events, ret = await run_shell(
        registry,
        "python3 -c 'print(__import__(\"os\").getcwd())'",
        "git status",
        "ls",
        worker="legacy",
    )
    assert ret["c0"].content["stdout"] == f"{real(project / 'sub')}\n"
    assert ret["c1"].outcome == "failed" and ret["c2"].outcome == "failed"
    assert not of_type(events, "approval.requested")


async def test_both_spellings_make_the_worker_invalid(project: Path) -> None:
    workers = project / "workers"
    write_worker(
        workers, "both", shell={"rules": []}, shell_rules=[{"pattern": "ls", "allowed": True}]
    )
    with pytest.raises(InvalidWorker) as info:
        WorkerRegistry(workers).get("both")
    assert "shell_rules" in info.value.message


async def test_no_shell_key_means_no_shell_tool(project: Path) -> None:
    write_worker(project / "workers", "quiet", model="script:quiet")
    registry = WorkerRegistry(project / "workers")
    assert registry.get("quiet").spec.shell is None
    for name in ("quiet", "sh"):
        script = Script(["hi"])
        queue: asyncio.Queue[Event] = asyncio.Queue()
        run = WorkerRun(
            registry,
            name,
            "go",
            on_event=queue.put_nowait,
            models=ScriptedModels({f"script:{name}": script.model()}),
        )
        with anyio.fail_after(10):
            result = await run.execute()
        assert result.status == "succeeded"
        tools = [t.name for t in script.seen[0][1].function_tools]
        assert tools == ([] if name == "quiet" else ["shell"])


async def test_commands_do_not_see_the_services_secrets(
    project: Path, registry: WorkerRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("LLM_DO_API_TOKEN", "token-secret")
    (project / "env.py").write_text(
        "import os\nprint(sorted(k for k, v in os.environ.items() if 'secret' in v))\n"
    )
    _, ret = await run_shell(registry, "python3 -c \"exec(open('env.py').read())\"")
    assert ret["c0"].content["stdout"] == "[]\n"


async def test_timeout_kills_the_whole_process_group(
    project: Path, registry: WorkerRegistry
) -> None:
    (project / "spawn.py").write_text(
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "open('child', 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    _, ret = await run_shell(registry, ("python3 -c \"exec(open('spawn.py').read())\"", 1.0))
    assert "timed out" in ret["c0"].content
    pid = int((project / "child").read_text())
    # The grandchild got SIGKILL with its group; as an orphan it is reaped by init.
    with anyio.fail_after(5):
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            stat = await anyio.Path(f"/proc/{pid}/stat").read_text()
            if stat.split()[2] == "Z":
                break
            await anyio.sleep(0.05)
