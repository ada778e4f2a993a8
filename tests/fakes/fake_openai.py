"""A fake OpenAI-compatible Chat Completions server, scripted entirely by each request.

`POST /v1/chat/completions` answers like OpenAI, streamed (`"stream": true`: SSE chunks, a final
usage chunk, `data: [DONE]`) or as one `chat.completion` JSON body. What it answers is decided
by the request alone, so tests need no per-test setup:

The request's `model` picks a script:
- `fake` — the default behaviour below;
- `fake-slow` — the same, with ~50 ms between chunks (for cancel/disconnect tests);
- `fake-hang` — the first chunk of the default answer, then nothing until the client goes away;
- `fake-429` — always 429 with `Retry-After: 1`; `fake-500-once` — 500 the first time a user
  text is seen, then the default answer; `fake-malformed` — a chunk that is not JSON after
  the first; `fake-drop` — the connection dropped after the first chunk;
- anything else — HTTP 404 with an OpenAI-style `model_not_found` error.

Default behaviour:
1. The request ends with `tool` messages → the text "Tool results: " + their contents (joined
   with " | "), streamed word by word.
2. Otherwise the text of the last user message (string content, or the text parts of a list) is
   read. When it is JSON with a key "calls" (`[{"tool": name, "args": {...}}, ...]`) and every
   named tool is in the request's `tools`, the answer is those tool calls (several = parallel
   calls with indexes 0..n-1 and ids call_0, call_1, ...).
3. Otherwise the user text is streamed back word by word; when the message carried files
   (`file` parts, or `image_url` data URIs) " [files: NAME (N bytes), ...]" is appended, so a
   test can see that a file reached the model.

Every request body is recorded in `app.state.log.requests`; every stream that ended before its
`data: [DONE]` (client went away, generator cancelled or closed) adds
`{"model", "closed_early": True, "text", "chunks_sent"}` to `app.state.log.closed_early`.
`GET /_log` returns both as JSON and `POST /_log/clear` empties them, for tests that run the
code under test in another process.

Run it with `python -m tests.fakes.fake_openai --port N`, or in-process with
`FakeOpenAIServer` (uvicorn in a background thread on 127.0.0.1 and a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

SLOW_DELAY_S = 0.05
MODELS = (
    "fake",
    "fake-slow",
    "fake-hang",
    "fake-429",
    "fake-500-once",
    "fake-malformed",
    "fake-drop",
)
_WORD = re.compile(r"\S+\s*")


# ---- the request log -------------------------------------------------------------------------


class FakeLog:
    """What the fake saw. Appended from the server's loop, read from anywhere (GIL-atomic ops)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.closed_early: list[dict[str, Any]] = []

    def clear(self) -> None:
        self.requests.clear()
        self.closed_early.clear()

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return {"requests": list(self.requests), "closed_early": list(self.closed_early)}


# ---- reading a request -----------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _data_uri_size(uri: str) -> int | None:
    """Bytes in a base64 `data:` URI, or None when it is not one."""
    if not uri.startswith("data:") or ";base64," not in uri:
        return None
    try:
        return len(base64.b64decode(uri.split(";base64,", 1)[1], validate=True))
    except (binascii.Error, ValueError):
        return None


def files_of(content: Any) -> list[tuple[str, int]]:
    """(name, size) of every file carried by a message's content parts."""
    if not isinstance(content, list):
        return []
    out = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "file":
            file = part.get("file") or {}
            size = _data_uri_size(file.get("file_data", ""))
            out.append((file.get("filename") or "file", -1 if size is None else size))
        elif part.get("type") == "image_url":
            size = _data_uri_size((part.get("image_url") or {}).get("url", ""))
            if size is not None:
                out.append(("image", size))
    return out


def last_user_message(body: dict[str, Any]) -> dict[str, Any] | None:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            return message
    return None


def _offered_tools(body: dict[str, Any]) -> set[str]:
    names = set()
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.add(fn["name"])
    return names


def _requested_calls(text: str, offered: set[str]) -> list[tuple[str, dict[str, Any]]] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("calls"), list) or not data["calls"]:
        return None
    calls = []
    for item in data["calls"]:
        if not isinstance(item, dict) or item.get("tool") not in offered:
            return None
        args = item.get("args", {})
        if not isinstance(args, dict):
            return None
        calls.append((item["tool"], args))
    return calls


@dataclass
class Plan:
    """The answer to one request: text, or tool calls."""

    text: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    user_text: str = ""


def plan(body: dict[str, Any]) -> Plan:
    """The default script (module docstring)."""
    messages = body.get("messages") or []
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.append(_text_of(message.get("content")))
    if results:
        return Plan(text="Tool results: " + " | ".join(reversed(results)))
    user = last_user_message(body) or {}
    text = _text_of(user.get("content"))
    calls = _requested_calls(text, _offered_tools(body))
    if calls:
        return Plan(calls=calls, user_text=text)
    files = files_of(user.get("content"))
    answer = text
    if files:
        answer += " [files: " + ", ".join(f"{name} ({size} bytes)" for name, size in files) + "]"
    return Plan(text=answer, user_text=text)


def words(text: str) -> list[str]:
    """`text` in word-sized pieces that concatenate back to it exactly."""
    pieces = _WORD.findall(text)
    if not pieces:
        return [text] if text else []
    lead = len(text) - len(text.lstrip())
    if lead:
        pieces[0] = text[:lead] + pieces[0]
    return pieces


def _usage(body: dict[str, Any], completion_tokens: int) -> dict[str, int]:
    prompt = sum(len(_text_of(m.get("content")).split()) for m in body.get("messages") or [])
    prompt = max(prompt, 1)
    completion_tokens = max(completion_tokens, 1)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


# ---- answers ---------------------------------------------------------------------------------


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": delta}
    if finish_reason is not None:
        choice["finish_reason"] = finish_reason
    data = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def stream_chunks(model: str, answer: Plan, body: dict[str, Any]) -> list[bytes]:
    """Every SSE frame of a streamed answer, `data: [DONE]` last."""
    frames = []
    if answer.calls:
        for i, (name, args) in enumerate(answer.calls):
            arguments = json.dumps(args)
            half = len(arguments) // 2
            start = {
                "index": i,
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": name, "arguments": arguments[:half]},
            }
            frames.append(_chunk(model, {"role": "assistant", "tool_calls": [start]}))
            more = {"index": i, "function": {"arguments": arguments[half:]}}
            frames.append(_chunk(model, {"tool_calls": [more]}))
        frames.append(_chunk(model, {}, "tool_calls"))
        produced = len(answer.calls)
    else:
        pieces = words(answer.text)
        for i, piece in enumerate(pieces):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            frames.append(_chunk(model, delta))
        frames.append(_chunk(model, {}, "stop"))
        produced = len(pieces)
    usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model}
    usage |= {"created": int(time.time()), "choices": [], "usage": _usage(body, produced)}
    frames.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return frames


def completion(model: str, answer: Plan, body: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed `chat.completion` body."""
    message: dict[str, Any] = {"role": "assistant", "content": None}
    if answer.calls:
        message["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for i, (name, args) in enumerate(answer.calls)
        ]
        finish, produced = "tool_calls", len(answer.calls)
    else:
        message["content"] = answer.text
        finish, produced = "stop", len(words(answer.text))
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": _usage(body, produced),
    }


class DisconnectAwareStream(StreamingResponse):
    """A StreamingResponse that always watches for `http.disconnect` and then cancels the body,
    whatever ASGI spec version the server announces (so a hanging stream ends with its client)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                await self.stream_response(send)
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            await self.listen_for_disconnect(receive)
            tg.cancel_scope.cancel()


async def _frames(
    log: FakeLog, model: str, answer: Plan, frames: list[bytes]
) -> AsyncIterator[bytes]:
    sent = 0
    finished = False
    try:
        for frame in frames:
            if sent and model == "fake-slow":
                await asyncio.sleep(SLOW_DELAY_S)
            if sent == 1 and model == "fake-malformed":
                yield b"data: {this is not json\n\n"
            if sent == 1 and model == "fake-drop":
                raise ConnectionAbortedError("the fake drops the connection mid-stream")
            yield frame
            sent += 1
            if model == "fake-hang":
                await asyncio.Event().wait()  # until cancelled: the client went away
        finished = True
    finally:
        if not finished:
            log.closed_early.append(
                {
                    "model": model,
                    "closed_early": True,
                    "text": answer.user_text,
                    "chunks_sent": sent,
                }
            )


def _error(status: int, message: str, code: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return JSONResponse(body, status_code=status)


async def chat_completions(request: Request) -> Response:
    log: FakeLog = request.app.state.log
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "The body is not valid JSON", "invalid_json")
    if not isinstance(body, dict):
        return _error(400, "The body must be a JSON object", "invalid_body")
    log.requests.append(body)
    model = body.get("model")
    if model not in MODELS:
        return _error(404, f"The model {model!r} does not exist", "model_not_found")
    answer = plan(body)
    if model == "fake-429":
        response = _error(429, "Rate limit reached, slow down", "rate_limit_exceeded")
        response.headers["retry-after"] = "1"
        return response
    if model == "fake-500-once":
        seen: set[str] = request.app.state.failed_once
        if answer.user_text not in seen:
            seen.add(answer.user_text)
            return _error(500, "The server had an error", "server_error")
    if body.get("stream"):
        frames = stream_chunks(model, answer, body)
        return DisconnectAwareStream(
            _frames(log, model, answer, frames), media_type="text/event-stream"
        )
    if model == "fake-hang":
        while (await request.receive())["type"] != "http.disconnect":
            pass  # the body was read already: the next message is the disconnect
        log.closed_early.append(
            {"model": model, "closed_early": True, "text": answer.user_text, "chunks_sent": 0}
        )
        return Response(status_code=499)
    if model == "fake-slow":
        await asyncio.sleep(SLOW_DELAY_S)
    return JSONResponse(completion(model, answer, body))


async def get_log(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.log.snapshot())


async def clear_log(request: Request) -> JSONResponse:
    request.app.state.log.clear()
    return JSONResponse({"cleared": True})


def create_app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/_log", get_log, methods=["GET"]),
            Route("/_log/clear", clear_log, methods=["POST"]),
        ]
    )
    app.state.log = FakeLog()
    app.state.failed_once = set()  # fake-500-once: user texts that got their one 500
    return app


# ---- running it ------------------------------------------------------------------------------


class FakeOpenAIServer:
    """The fake under uvicorn in a background thread, on 127.0.0.1 and a free port.

    `with FakeOpenAIServer() as fake: fake.base_url` ... `fake.log.requests`.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.app = create_app()
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What OPENAI_BASE_URL should be."""
        return self.url + "/v1"

    @property
    def log(self) -> FakeLog:
        return self.app.state.log

    def start(self, timeout: float = 10) -> FakeOpenAIServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-openai", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                self.stop()
                raise RuntimeError("the fake OpenAI server thread died while starting")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the fake OpenAI server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the fake OpenAI server did not stop within {timeout} s")
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI Chat Completions server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8999)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
