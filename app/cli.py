"""`llm-do serve | workers | run`.

`run` streams a run to the terminal: text as it arrives, nested workers indented,
tool calls and results on their own lines. With `--server URL` it follows the run
over HTTP (SSE); without, it runs the worker in-process on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

import pydantic_core

from app.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key in ("workers_dir", "host", "port", "model")
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


# ---- serve ------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = _settings(args)
    model = settings.default_model
    where = "offline, built in" if settings.model is None else "from LLM_DO_MODEL / --model"
    print(
        f"llm-do: serving workers from {settings.workers_dir.resolve()} on "
        f"http://{settings.host}:{settings.port}  (default model: {model!r}, {where})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    return 0


# ---- workers ----------------------------------------------------------------------


def cmd_workers(args: argparse.Namespace) -> int:
    if args.server:
        import httpx

        response = httpx.get(args.server.rstrip("/") + "/workers", timeout=30)
        response.raise_for_status()
        workers = response.json()["workers"]
    else:
        from app.runtime import InvalidWorker, WorkerRegistry

        registry = WorkerRegistry(_settings(args).workers_dir)
        workers = []
        for name in registry.names():
            try:
                spec = registry.get(name).spec
                workers.append({"name": name, "description": spec.description})
            except InvalidWorker as exc:
                workers.append({"name": name, "error": exc.as_dict()})
    for w in workers:
        if "error" in w:
            print(f"{w['name']:<20} INVALID: {w['error']['message']}")
        else:
            print(f"{w['name']:<20} {w.get('description', '')}")
    return 0


# ---- run --------------------------------------------------------------------------


class Renderer:
    """Turns run events into readable, live terminal output."""

    def __init__(self, out: TextIO, color: bool) -> None:
        self.out = out
        self.color = color
        self.current: str | None = None  # call_id whose text is being written
        self.midline = False

    def _c(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _line(self, depth: int, text: str) -> None:
        if self.midline:
            self.out.write("\n")
        self.out.write("  " * depth + text + "\n")
        self.midline = False
        self.current = None

    def event(self, ev: dict[str, Any]) -> None:
        kind = ev["type"]
        depth = len(ev.get("path", [])) - 1
        pad = "  " * depth
        if kind == "text.delta":
            if self.current != ev["call_id"]:
                if self.midline:
                    self.out.write("\n")
                label = self._c("36", f"[{ev['worker']}] ") if depth else ""
                self.out.write(pad + label)
                self.current = ev["call_id"]
            self.out.write(ev["delta"].replace("\n", "\n" + pad))
            self.midline = not ev["delta"].endswith("\n")
        elif kind == "run.started":
            self._line(
                0, self._c("2", f"● {ev['worker']} · model {ev['model']} · run {ev['run_id']}")
            )
        elif kind == "worker.started" and depth > 0:
            self._line(depth, self._c("36", f"↳ {ev['worker']} started (model {ev['model']})"))
        elif kind == "tool.call":
            args = json.dumps(ev["args"], ensure_ascii=False)
            self._line(depth, self._c("33", f"→ {ev['tool']}({_clip(args)})"))
        elif kind == "tool.result":
            color = "32" if ev["outcome"] == "success" else "31"
            content = ev["content"]
            text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
            self._line(depth, self._c(color, f"← {ev['tool']} {ev['outcome']}: {_clip(text)}"))
        elif kind == "worker.finished" and depth > 0:
            mark = "✓" if ev["status"] == "succeeded" else "✗"
            self._line(depth, self._c("36", f"{mark} {ev['worker']} {ev['status']}"))
        elif kind == "run.completed":
            usage = ev.get("usage") or {}
            self._line(0, self._c("32", f"✓ completed · {_usage(usage)}"))
        elif kind == "run.failed":
            err = ev["error"]
            self._line(0, self._c("31", f"✗ failed: {err['type']}: {err['message']}"))
        elif kind == "run.cancelled":
            self._line(0, self._c("31", f"✗ cancelled: {ev['reason']}"))
        elif kind == "approval.requested":
            args = _clip(json.dumps(ev["args"], ensure_ascii=False))
            self._line(
                depth, self._c("35", f"⏸ approval {ev['approval_id']}: {ev['tool']}({args})")
            )
        elif kind == "approval.resolved":
            reason = f" ({ev['reason']})" if ev.get("reason") else ""
            self._line(
                depth, self._c("35", f"▶ approval {ev['approval_id']}: {ev['decision']}{reason}")
            )
        self.out.flush()


def _clip(text: str, limit: int = 300) -> str:
    text = text.replace("\n", "⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _usage(usage: dict[str, int]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in usage.items())


def _input(text: str | None) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


class LocalSession:
    """Runs the worker in this process; decisions go straight to the run's gate."""

    def __init__(self, args: argparse.Namespace, approval: str) -> None:
        from app.runtime import ModelResolver, RuntimeConfig, WorkerRegistry, WorkerRun

        settings = _settings(args)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.run = WorkerRun(
            WorkerRegistry(settings.workers_dir),
            args.name,
            _input(args.input),
            on_event=self._queue.put_nowait,
            model=args.model_override,
            approval=approval,  # type: ignore[arg-type]
            config=RuntimeConfig(
                default_model=settings.default_model,
                max_depth=settings.max_depth,
                approval_timeout_s=settings.approval_timeout_s,
            ),
            models=ModelResolver(),
        )

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        task = asyncio.create_task(self.run.execute())
        try:
            while True:
                ev = await self._queue.get()
                yield json.loads(pydantic_core.to_json(ev, serialize_unknown=True))
                if ev.type in ("run.completed", "run.failed", "run.cancelled"):
                    break
        finally:
            if not task.done():
                self.run.cancel("interrupted")
            await asyncio.gather(task, return_exceptions=True)

    async def decide(self, run_id: str, approval_id: str, decision: str, reason: str | None) -> str:
        from app.runtime import LlmDoError

        try:
            self.run.state.gate.decide(approval_id, decision, reason=reason)  # type: ignore[arg-type]
        except LlmDoError as exc:
            return exc.message
        return ""


class RemoteSession:
    """Follows a run on a server over SSE; decisions are POSTed back."""

    def __init__(self, args: argparse.Namespace, approval: str) -> None:
        import httpx

        self.base = args.server.rstrip("/")
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(30, read=None))
        self.body: dict[str, Any] = {"input": _input(args.input), "approval": approval}
        if args.model_override:
            self.body["model"] = args.model_override
        self.name = args.name

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        url = f"{self.base}/workers/{self.name}/run"
        headers = {"Accept": "text/event-stream"}
        try:
            async with self.client.stream("POST", url, json=self.body, headers=headers) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    try:
                        err = resp.json()["error"]
                    except (ValueError, KeyError):
                        err = {"type": "http_error", "message": resp.text}
                    raise SystemExit(
                        f"llm-do: HTTP {resp.status_code}: {err['type']}: {err['message']}"
                    )
                data: list[str] = []
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
                    elif line == "" and data:
                        yield json.loads("\n".join(data))
                        data = []
        finally:
            await self.client.aclose()

    async def decide(self, run_id: str, approval_id: str, decision: str, reason: str | None) -> str:
        url = f"{self.base}/runs/{run_id}/approvals/{approval_id}"
        resp = await self.client.post(url, json={"decision": decision, "reason": reason})
        return "" if resp.status_code == 200 else resp.json()["error"]["message"]


_CHOICES = {"a": "approve", "r": "approve_for_run", "d": "deny"}


async def _prompt(
    session: LocalSession | RemoteSession,
    ev: dict[str, Any],
    turn: asyncio.Lock,
    resolved: set[str],
) -> None:
    """Ask the person at the terminal, one question at a time (skipping approvals decided
    elsewhere meanwhile); the run keeps going while they think."""
    async with turn:
        if ev["approval_id"] not in resolved:
            await _ask(session, ev)


async def _ask(session: LocalSession | RemoteSession, ev: dict[str, Any]) -> None:
    args = json.dumps(ev["args"], ensure_ascii=False)
    where = " > ".join(ev["path"])
    question = (
        f"\n⚠ approval needed in {where}: {ev['tool']}({_clip(args, 500)})\n"
        f"  {ev['description']}\n  [a]pprove, approve for the [r]un, [d]eny? "
    )
    while (
        answer := (await asyncio.to_thread(input, question)).strip().lower()[:1]
    ) not in _CHOICES:
        question = "  please answer a, r or d: "
    reason = None
    if _CHOICES[answer] == "deny":
        reason = (await asyncio.to_thread(input, "  reason (optional): ")).strip() or None
    problem = await session.decide(ev["run_id"], ev["approval_id"], _CHOICES[answer], reason)
    if problem:
        print(f"  (not applied: {problem})", flush=True)


async def _run(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty() and not args.json
    if args.approve_all:
        approval = "approve_all"
    elif args.deny_all:
        approval = "deny_all"
    elif interactive or args.server:
        approval = "prompt"
    else:
        approval = "deny_all"
        print(
            "llm-do: no terminal to ask for approvals: gated tool calls are denied "
            "(use --approve-all to allow them)",
            file=sys.stderr,
        )
    session: LocalSession | RemoteSession = (
        RemoteSession(args, approval) if args.server else LocalSession(args, approval)
    )
    renderer = Renderer(sys.stdout, color=sys.stdout.isatty() and not args.json)
    prompts: list[asyncio.Task[None]] = []
    turn = asyncio.Lock()
    resolved: set[str] = set()
    status = 1
    try:
        async for ev in session.events():
            if args.json:
                print(json.dumps(ev, ensure_ascii=False), flush=True)
            else:
                renderer.event(ev)
            if ev["type"] == "approval.requested" and interactive and approval == "prompt":
                prompts.append(asyncio.create_task(_prompt(session, ev, turn, resolved)))
            elif ev["type"] == "approval.resolved":
                resolved.add(ev["approval_id"])
            elif ev["type"] == "run.completed":
                status = 0
    finally:
        for task in prompts:
            task.cancel()
    return status


def cmd_run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        print("\nllm-do: interrupted", file=sys.stderr)
        return 130


# ---- entry point ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-do", description="LLM workers as HTTP endpoints")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the HTTP service")
    serve.add_argument("--workers", dest="workers_dir", help="workers folder (default ./workers)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--model", help="default model (default: the offline 'echo')")
    serve.set_defaults(func=cmd_serve)

    workers = sub.add_parser("workers", help="list workers")
    workers.add_argument("--workers", dest="workers_dir", help="workers folder (default ./workers)")
    workers.add_argument("--server", help="list the workers of a running server instead")
    workers.set_defaults(func=cmd_workers)

    run = sub.add_parser("run", help="run a worker and stream its output")
    run.add_argument("name", help="worker name")
    run.add_argument("input", nargs="?", help="input text (a JSON object is sent as an object)")
    run.add_argument("--server", help="URL of a running server (default: run in-process)")
    run.add_argument("--workers", dest="workers_dir", help="workers folder, in-process only")
    run.add_argument("--model", dest="model_override", help="model for workers that name none")
    run.add_argument("--json", action="store_true", help="print raw events, one JSON per line")
    gate = run.add_mutually_exclusive_group()
    gate.add_argument("--approve-all", action="store_true", help="run every gated tool call")
    gate.add_argument("--deny-all", action="store_true", help="deny every gated tool call")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    import pydantic_ai

    pydantic_ai.BANNER_ENABLED = False  # our own output is the interface
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
