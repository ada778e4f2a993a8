"""POST /workers/{name}/run: start a run, answer with its SSE stream or its final result."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import PurePosixPath
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.deps import RunsDep, SettingsDep
from app.api.errors import error_response
from app.api.sse import sse_response
from app.runtime import Attachment

router = APIRouter(tags=["runs"])


class AttachmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filename: str = Field(min_length=1, max_length=255)
    media_type: str | None = None
    data_base64: str


class RunRequest(BaseModel):
    """The body of POST /workers/{name}/run (http-api.md)."""

    model_config = ConfigDict(extra="forbid")
    input: str | dict[str, Any] | list[Any] | None = Field(
        None, description="Text for the model, or an object sent as its JSON"
    )
    attachments: list[AttachmentIn] = Field(default_factory=list)
    model: str | None = Field(None, description="Model for workers that name none")
    on_disconnect: Literal["cancel", "continue"] = Field(
        "cancel", description="What a streamed run does when its client goes away"
    )


class RunResponse(BaseModel):
    run_id: str
    status: Literal["succeeded", "failed", "cancelled"]
    output: Any = None
    usage: dict[str, int] | None = None
    error: dict[str, str] | None = None


def _decode(items: list[AttachmentIn]) -> list[Attachment] | JSONResponse:
    out = []
    for i, item in enumerate(items):
        name = PurePosixPath(item.filename.replace("\\", "/")).name
        if not name or "\x00" in name:
            return error_response(
                422, "invalid_request", f"attachments.{i}.filename: {item.filename!r} is not a name"
            )
        try:
            data = base64.b64decode(item.data_base64, validate=True)
        except (binascii.Error, ValueError):
            return error_response(
                422, "invalid_request", f"attachments.{i}.data_base64: not valid base64"
            )
        out.append(Attachment.of(name, data, item.media_type))
    return out


async def _parse(request: Request) -> RunRequest | JSONResponse:
    """The body as JSON whatever the Content-Type says (curl's `-d` sends a form type);
    an empty body is an empty request."""
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        return error_response(422, "invalid_request", f"The request body is not valid JSON: {exc}")
    try:
        return RunRequest.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "body"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown field {loc!r}")
            else:
                problems.append(f"{loc}: {err['msg']}")
        return error_response(422, "invalid_request", "Invalid run request: " + "; ".join(problems))


@router.post(
    "/workers/{name}/run",
    response_model=RunResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": RunRequest.model_json_schema()}}}
    },
)
async def run_worker(name: str, request: Request, runs: RunsDep, settings: SettingsDep) -> Any:
    """Run a worker. With `Accept: text/event-stream` the answer is the run's event stream;
    otherwise the request waits and returns the result."""
    body = await _parse(request)
    if isinstance(body, JSONResponse):
        return body
    files = _decode(body.attachments)
    if isinstance(files, JSONResponse):
        return files
    handle = runs.start(name, body.input, model=body.model, attachments=files)
    headers = {"X-Run-Id": handle.run_id, "Content-Location": f"/runs/{handle.run_id}"}
    if "text/event-stream" in request.headers.get("accept", ""):

        def disconnected() -> None:
            if body.on_disconnect == "cancel":
                handle.run.cancel("the client disconnected")

        return sse_response(
            handle.log.follow(),
            ping_s=settings.ping_s,
            headers=headers,
            on_disconnect=disconnected,
        )
    result = await handle.wait()
    payload = RunResponse(
        run_id=result.run_id,
        status=result.status,
        output=result.output,
        usage=result.usage,
        error=result.error,
    )
    return JSONResponse(payload.model_dump(mode="json"), headers=headers)
