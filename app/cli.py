"""`llm-do serve | workers | run`.

`run` streams a run to the terminal: text as it arrives, nested workers indented,
tool calls and results on their own lines. With `--server URL` it follows the run
over HTTP (SSE); without, it runs the worker in-process on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, TextIO

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
    settings.check_bind()
    model = settings.default_model
    where = "offline, built in" if settings.model is None else "from LLM_DO_MODEL / --model"
    print(
        f"llm-do: serving workers from {settings.workers_dir.resolve()} on "
        f"http://{settings.host}:{settings.port}  (default model: {model!r}, {where})",
        file=sys.stderr,
        flush=True,
    )
    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Interrupt live runs before uvicorn and sse-starlette close the streams, so a
            # run ends `interrupted`, not `cancelled` as if its client had left.
            manager = getattr(app.state, "runs", None)
            if manager is not None:
                manager.begin_shutdown_threadsafe()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # runs get shutdown_grace_s; their streams a moment more to send the last event
        timeout_graceful_shutdown=settings.shutdown_grace_s + 2,
    )
    Server(config).run()
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
        import pydantic_core

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


def _http_error(resp: Any) -> SystemExit:
    try:
        err = resp.json()["error"]
    except (ValueError, KeyError):
        err = {"type": "http_error", "message": resp.text}
    return SystemExit(f"llm-do: HTTP {resp.status_code}: {err['type']}: {err['message']}")


async def _sse(client: Any, method: str, url: str, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
    """The data objects of an SSE response; an error answer exits with its message."""
    headers = {"Accept": "text/event-stream", **kwargs.pop("headers", {})}
    async with client.stream(method, url, headers=headers, **kwargs) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise _http_error(resp)
        data: list[str] = []
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif line == "" and data:
                yield json.loads("\n".join(data))
                data = []


def _client() -> Any:
    import httpx

    return httpx.AsyncClient(timeout=httpx.Timeout(30, read=None))


class RemoteSession:
    """Streams a run from a server (POST with SSE); decisions are POSTed back."""

    def __init__(self, args: argparse.Namespace, approval: str) -> None:
        self.base = args.server.rstrip("/")
        self.client = _client()
        self.body: dict[str, Any] = {"input": _input(args.input), "approval": approval}
        if args.model_override:
            self.body["model"] = args.model_override
        self.name = args.name

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        try:
            url = f"{self.base}/workers/{self.name}/run"
            async for ev in _sse(self.client, "POST", url, json=self.body):
                yield ev
        finally:
            await self.client.aclose()

    async def decide(self, run_id: str, approval_id: str, decision: str, reason: str | None) -> str:
        url = f"{self.base}/runs/{run_id}/approvals/{approval_id}"
        resp = await self.client.post(url, json={"decision": decision, "reason": reason})
        return "" if resp.status_code == 200 else resp.json()["error"]["message"]


class FollowSession(RemoteSession):
    """Attaches to an existing run's events; resumes after a dropped connection."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.base = args.server.rstrip("/")
        self.client = _client()
        self.run_id = args.run_id
        self.after = args.after

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        import httpx

        url = f"{self.base}/runs/{self.run_id}/events"
        failures = 0
        try:
            while True:
                try:
                    headers = {"Last-Event-ID": str(self.after)} if self.after else {}
                    async for ev in _sse(self.client, "GET", url, headers=headers):
                        failures = 0
                        self.after = ev["seq"]
                        yield ev
                    return
                except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                    failures += 1
                    if failures > 5:
                        raise SystemExit(f"llm-do: lost the server: {exc}") from None
                    print(
                        f"llm-do: connection dropped, resuming after event {self.after}",
                        file=sys.stderr,
                    )
                    await asyncio.sleep(min(2**failures * 0.25, 5))
        finally:
            await self.client.aclose()


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
    if args.background:
        return await _start_background(args)
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
    session: LocalSession | RemoteSession
    if getattr(args, "run_id", None):
        session = FollowSession(args)
    elif args.server:
        session = RemoteSession(args, approval)
    else:
        session = LocalSession(args, approval)
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


async def _start_background(args: argparse.Namespace) -> int:
    if not args.server:
        raise SystemExit("llm-do: --background needs --server URL (the run lives on the server)")
    body: dict[str, Any] = {"input": _input(args.input), "background": True}
    if args.model_override:
        body["model"] = args.model_override
    if args.approve_all or args.deny_all:
        body["approval"] = "approve_all" if args.approve_all else "deny_all"
    async with _client() as client:
        resp = await client.post(f"{args.server.rstrip('/')}/workers/{args.name}/run", json=body)
    if resp.status_code != 202:
        raise _http_error(resp)
    run_id = resp.json()["run_id"]
    print(run_id)
    print(f"follow it with: llm-do follow {run_id} --server {args.server}", file=sys.stderr)
    return 0


def cmd_follow(args: argparse.Namespace) -> int:
    args.json = getattr(args, "json", False)
    args.approve_all = args.deny_all = args.background = False
    args.name = args.input = args.model_override = None
    return cmd_run(args)


def cmd_runs(args: argparse.Namespace) -> int:
    import httpx

    params: dict[str, Any] = {"limit": args.limit}
    if args.worker:
        params["worker"] = args.worker
    if args.status:
        params["status"] = args.status
    resp = httpx.get(f"{args.server.rstrip('/')}/runs", params=params, timeout=30)
    if resp.status_code != 200:
        raise _http_error(resp)
    for run in resp.json()["runs"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["created_at"]))
        text = run["output"] if run["output"] is not None else (run["error"] or {}).get("message")
        shown = _clip(text if isinstance(text, str) else json.dumps(text), 60) if text else ""
        print(f"{run['run_id']}  {when}  {run['status']:<16} {run['worker']:<18} {shown}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    import httpx

    resp = httpx.post(f"{args.server.rstrip('/')}/runs/{args.run_id}/cancel", timeout=60)
    if resp.status_code != 200:
        raise _http_error(resp)
    print(resp.json()["status"])
    return 0


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
    run.add_argument(
        "--background", action="store_true", help="start it on the server and print its id"
    )
    gate = run.add_mutually_exclusive_group()
    gate.add_argument("--approve-all", action="store_true", help="run every gated tool call")
    gate.add_argument("--deny-all", action="store_true", help="deny every gated tool call")
    run.set_defaults(func=cmd_run)

    server = "http://127.0.0.1:8000"
    follow = sub.add_parser("follow", help="attach to a run's event stream (resumes on drops)")
    follow.add_argument("run_id")
    follow.add_argument("--after", type=int, default=0, help="start after this event id")
    follow.add_argument("--server", default=server, help=f"server URL (default {server})")
    follow.add_argument("--json", action="store_true", help="print raw events")
    follow.set_defaults(func=cmd_follow)

    runs = sub.add_parser("runs", help="list recent runs")
    runs.add_argument("--worker")
    runs.add_argument("--status")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--server", default=server, help=f"server URL (default {server})")
    runs.set_defaults(func=cmd_runs)

    cancel = sub.add_parser("cancel", help="cancel a run and its nested workers")
    cancel.add_argument("run_id")
    cancel.add_argument("--server", default=server, help=f"server URL (default {server})")
    cancel.set_defaults(func=cmd_cancel)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYDANTIC_AI_NO_BANNER", "1")  # our own output is the interface
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OSError as exc:  # httpx's connect errors and friends
        raise SystemExit(f"llm-do: {exc}") from None
    except Exception as exc:
        import httpx

        if isinstance(exc, httpx.TransportError):
            server = getattr(args, "server", None)
            raise SystemExit(f"llm-do: cannot reach the server {server}: {exc}") from None
        raise


if __name__ == "__main__":
    sys.exit(main())
