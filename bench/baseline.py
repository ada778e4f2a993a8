"""The bare stack the service is measured against (architecture.md, "Performance budget").

A FastAPI app with one PydanticAI agent on the service's own offline `echo` model and the
endpoint of pydantic-ai-2x.md §1.4/§4.4, nothing else: no run manager, no event objects,
no sequence numbers, no frame log. Same route and body as the service, so `bench.py` drives
both with the same client code:

    POST /workers/{name}/run  {"input": "...", "delay_ms"?: N}
      Accept: text/event-stream -> `text.delta` events ({"delta": ...}), then one `done`
      otherwise                 -> {"output": ...}  (a non-streaming model request)
      ?model_stream=1           -> the same JSON, but the run streams the model and drains
                                   its events (what the service does for every run)
    GET /healthz              -> {"status": "ok"}

`name` is accepted and ignored: there is one agent. Run it on its own with
`.venv/bin/python bench/baseline.py --port 8001`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from pydantic_ai import Agent, AgentRunResultEvent, RunContext
from pydantic_ai.messages import (
    AgentStreamEvent,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
)
from sse_starlette import EventSourceResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `app` when run as a script

from app.runtime.models import ModelResolver

# The greeter worker's instructions, so the model sees the same messages in both servers.
INSTRUCTIONS = "You are a friendly assistant. Greet the user and answer briefly."


async def _drain(ctx: RunContext[None], stream: AsyncIterable[AgentStreamEvent]) -> None:
    async for _ in stream:
        pass


def create_app() -> FastAPI:
    agent = Agent(ModelResolver().get("echo"), instructions=INSTRUCTIONS)
    app = FastAPI(title="llm-do bench baseline")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/workers/{name}/run")
    async def run(name: str, body: dict[str, Any], request: Request) -> Any:
        prompt = body.get("input") or ""
        # `delay_ms` paces echo like the service's `model_settings: {delay_ms: N}` (load.py)
        settings = {"delay_ms": body["delay_ms"]} if body.get("delay_ms") else None
        if "text/event-stream" not in request.headers.get("accept", ""):
            if request.query_params.get("model_stream"):
                result = await agent.run(prompt, event_stream_handler=_drain)
            else:
                result = await agent.run(prompt)
            return {"output": result.output}

        async def events() -> AsyncIterator[dict[str, str]]:
            async with agent.run_stream_events(prompt, model_settings=settings) as stream:
                async for ev in stream:
                    match ev:
                        case PartStartEvent(part=TextPart(content=c)) if c:
                            yield {"event": "text.delta", "data": json.dumps({"delta": c})}
                        case PartDeltaEvent(delta=TextPartDelta(content_delta=d)):
                            yield {"event": "text.delta", "data": json.dumps({"delta": d})}
                        case AgentRunResultEvent(result=r):
                            yield {"event": "done", "data": json.dumps({"output": r.output})}

        return EventSourceResponse(events())

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description="The bare FastAPI + sse-starlette baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
