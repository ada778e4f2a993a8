"""POST /workers/{name}/run: start a run, answer with its SSE stream or its final result.

The body is JSON (whatever the Content-Type says) or multipart/form-data with file
parts named `attachments`. Both modes send the response headers (`X-Run-Id`,
`Content-Location`) as soon as the run starts, so a client waiting on a blocking
run can already find it and answer its approvals.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from app.api.body import json_body, openapi_body, validate
from app.api.deps import RunsDep, SettingsDep
from app.api.errors import InvalidRequest
from app.api.sse import sse_response
from app.runs import RunHandle
from app.runtime import ApprovalMode, Attachment

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
    approval: ApprovalMode | None = Field(
        None, description="prompt | approve_all | deny_all (default: the server's LLM_DO_APPROVAL)"
    )
    on_disconnect: Literal["cancel", "continue"] = Field(
        "cancel", description="What the run does when its client goes away"
    )


class RunResponse(BaseModel):
    run_id: str
    status: Literal["succeeded", "failed", "cancelled"]
    output: Any = None
    usage: dict[str, int] | None = None
    error: dict[str, str] | None = None


def _filename(raw: str, where: str) -> str:
    name = PurePosixPath(raw.replace("\\", "/")).name
    if not name or "\x00" in name or name in (".", ".."):
        raise InvalidRequest(f"{where}: {raw!r} is not a file name")
    return name


def _decode(items: list[AttachmentIn]) -> list[Attachment]:
    out = []
    for i, item in enumerate(items):
        name = _filename(item.filename, f"attachments.{i}.filename")
        try:
            data = base64.b64decode(item.data_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"attachments.{i}.data_base64: not valid base64") from None
        out.append(Attachment.of(name, data, item.media_type))
    return out


async def _multipart(request: Request) -> tuple[RunRequest, list[Attachment]]:
    form = await request.form()
    try:
        fields: dict[str, Any] = {}
        files: list[Attachment] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "attachments":
                    raise InvalidRequest(
                        f"File part {key!r}: files go in parts named 'attachments'"
                    )
                name = _filename(value.filename or "", "attachments filename")
                media_type = value.content_type
                if media_type in (None, "", "application/octet-stream"):
                    media_type = None  # guess from the suffix
                files.append(Attachment.of(name, await value.read(), media_type))
            elif key == "input":
                try:
                    parsed = json.loads(value)
                except ValueError:
                    parsed = value
                fields["input"] = parsed if isinstance(parsed, dict) else value
            else:
                fields[key] = value
        return validate(RunRequest, fields, what="run request"), files
    finally:
        await form.close()


async def _parse(request: Request) -> tuple[RunRequest, list[Attachment]]:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _multipart(request)
    body = await json_body(request, RunRequest, what="run request")
    return body, _decode(body.attachments)


def _result_json(handle: RunHandle) -> bytes:
    assert handle.result is not None
    r = handle.result
    payload = RunResponse(
        run_id=r.run_id, status=r.status, output=r.output, usage=r.usage, error=r.error
    )
    return payload.model_dump_json().encode()


@router.post(
    "/workers/{name}/run",
    response_model=RunResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    openapi_extra=openapi_body(RunRequest),
)
async def run_worker(name: str, request: Request, runs: RunsDep, settings: SettingsDep) -> Any:
    """Run a worker. With `Accept: text/event-stream` the answer is the run's event stream;
    otherwise the answer is the result, sent when the run ends."""
    body, files = await _parse(request)
    handle = runs.start(
        name, body.input, model=body.model, attachments=files, approval=body.approval
    )
    headers = {"X-Run-Id": handle.run_id, "Content-Location": f"/runs/{handle.run_id}"}

    def client_left() -> None:
        if body.on_disconnect == "cancel":
            handle.run.cancel("the client disconnected")

    if "text/event-stream" in request.headers.get("accept", ""):
        return sse_response(
            handle.log.follow(), ping_s=settings.ping_s, headers=headers, on_disconnect=client_left
        )

    async def result() -> AsyncIterator[bytes]:
        try:
            await handle.wait()
        except BaseException:
            client_left()
            raise
        yield _result_json(handle)

    return StreamingResponse(result(), media_type="application/json", headers=headers)
