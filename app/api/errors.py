"""Errors to HTTP: one table from error class to status, and the handlers that use it.

Every error body is `{"error": {"type": ..., "message": ...}}`; never a stack trace.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.runtime import errors as rt

log = logging.getLogger("llm_do.api")

STATUS: dict[type[rt.LlmDoError], int] = {
    rt.WorkerNotFound: 404,
    rt.RunNotFound: 404,
    rt.InvalidWorker: 422,
    rt.InvalidInput: 422,
    rt.AttachmentRejected: 422,
    rt.SandboxViolation: 400,
    rt.ModelError: 422,
    rt.DelegationError: 422,
    rt.RunAlreadyEnded: 409,
    rt.ProviderError: 502,
    rt.ProviderRateLimited: 429,
    rt.ProviderTimeout: 504,
    rt.ModelBehaviorError: 502,
    rt.UsageLimitReached: 429,
    rt.WorkerTimeout: 504,
    rt.InternalError: 500,
    rt.ToolCallFailed: 422,
    rt.ApprovalDenied: 403,
    rt.InvalidOutput: 500,
    rt.TooManyRuns: 429,
    rt.Unavailable: 503,
    rt.StoreUnavailable: 503,
    rt.ApprovalNotFound: 404,
    rt.ApprovalAlreadyDecided: 409,
}


class InvalidRequest(Exception):
    """A request body that cannot be used; HTTP-only, so it lives here, not in the runtime."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def status_of(exc: rt.LlmDoError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, type_: str, message: str, **extra: object) -> JSONResponse:
    body: dict[str, object] = {"type": type_, "message": message, **extra}
    return JSONResponse({"error": body}, status_code=status)


async def _llm_do_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, rt.LlmDoError)
    extra = {}
    if isinstance(exc, rt.InvalidWorker):
        extra = {"path": exc.path, "field": exc.field}
    response = error_response(status_of(exc), exc.type, exc.message, **extra)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(retry_after)))
    return response


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRequest)
    return error_response(422, "invalid_request", exc.message)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        problems.append(f"{loc}: {err['msg']}")
    return error_response(422, "invalid_request", "Invalid request: " + "; ".join(problems))


_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"No route {request.method} {request.url.path}"
    response = error_response(
        exc.status_code, _HTTP_TYPES.get(exc.status_code, "http_error"), message
    )
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "Internal error; the server log has the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(rt.LlmDoError, _llm_do_error)
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
