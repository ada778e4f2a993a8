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

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from app.api.body import json_body, openapi_body, validate
from app.api.deps import RunsDep, SettingsDep
from app.api.errors import InvalidRequest
from app.api.sse import sse_response
from app.runs import RunHandle
from app.runs.records import RunStatus
from app.runtime import ApprovalMode, Attachment

router = APIRouter(tags=["runs"])

MAX_SEQ = 2**63 - 1  # SQLite's INTEGER
RETRY_HINT = b"retry: 1000\n\n"  # EventSource reconnects after 1 s, with Last-Event-ID


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
    background: bool = Field(
        False, description="Answer 202 at once; follow with GET /runs/{id} or /runs/{id}/events"
    )


class RunResponse(BaseModel):
    run_id: str
    status: RunStatus
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
    streaming = "text/event-stream" in request.headers.get("accept", "")
    handle = await runs.start(
        name,
        body.input,
        model=body.model,
        attachments=files,
        approval=body.approval,
        # A blocking client wants only the result: ask models for whole responses.
        stream_tokens=streaming or body.background,
    )
    headers = {"X-Run-Id": handle.run_id, "Content-Location": f"/runs/{handle.run_id}"}
    if body.background:
        return JSONResponse(
            {"run_id": handle.run_id, "status": handle.record.status}, 202, headers=headers
        )

    def client_left() -> None:
        if body.on_disconnect == "cancel" and not runs.stopping:
            handle.run.cancel("the client disconnected")

    if streaming:
        return sse_response(
            handle.log.follow(),
            ping_s=settings.ping_s,
            headers=headers,
            on_disconnect=client_left,
            shutdown_grace_s=settings.shutdown_grace_s + 1,
        )

    async def result() -> AsyncIterator[bytes]:
        try:
            await handle.wait()
        except BaseException:
            client_left()
            raise
        yield _result_json(handle)

    return StreamingResponse(result(), media_type="application/json", headers=headers)


# ---- stored runs ------------------------------------------------------------------


@router.get("/runs")
async def list_runs(
    runs: RunsDep,
    worker: str | None = None,
    status: RunStatus | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, list[dict[str, Any]]]:
    """Runs, newest first, optionally of one worker and/or in one status."""
    return {"runs": await runs.list(worker=worker, status=status, limit=limit)}


@router.get("/runs/{run_id}")
async def get_run(run_id: str, runs: RunsDep) -> dict[str, Any]:
    """A run's record, with its pending approvals while it waits for them."""
    return await runs.record(run_id)


@router.get("/runs/{run_id}/events", responses={200: {"content": {"text/event-stream": {}}}})
async def run_events(
    run_id: str,
    request: Request,
    runs: RunsDep,
    settings: SettingsDep,
    after: int | None = Query(None, ge=0, le=MAX_SEQ, description="Replay events after this seq"),
) -> Any:
    """The run's events from the start (or after `Last-Event-ID` / `?after=N`), then live
    until its terminal event. Following never cancels the run."""
    last = request.headers.get("last-event-id", "").strip()
    if last:
        if not (last.isascii() and last.isdigit()) or int(last) > MAX_SEQ:
            raise InvalidRequest(f"Last-Event-ID must be an event id (a number), not {last!r}")
        after = int(last)
    chunks = await runs.follow(run_id, after or 0)

    async def with_retry_hint() -> AsyncIterator[bytes]:
        yield RETRY_HINT
        async for chunk in chunks:
            yield chunk

    return sse_response(
        with_retry_hint(), ping_s=settings.ping_s, shutdown_grace_s=settings.shutdown_grace_s + 1
    )


@router.post("/runs/{run_id}/cancel")
async def cancel_run(run_id: str, runs: RunsDep) -> dict[str, str]:
    """Cancel the run and every nested worker; answers once it has ended."""
    status = await runs.cancel_and_wait(run_id)
    return {"run_id": run_id, "status": status}
