"""JSON request bodies, validated into a model with messages that say what to fix.

The front door (`security.Guard`) has already refused bodies that are not JSON or
multipart; an empty body is an empty object."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from app.api.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def problems(exc: ValidationError) -> str:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        if err["type"] == "extra_forbidden":
            out.append(f"unknown field {loc!r}")
        else:
            out.append(f"{loc}: {err['msg']}")
    return "; ".join(out)


def validate(model: type[M], data: Any, *, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(f"Invalid {what}: {problems(exc)}") from None


async def json_body(request: Request, model: type[M], *, what: str) -> M:
    """Parse and validate; an empty body is `{}`. Raises InvalidRequest (422)."""
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    return validate(model, data, what=what)


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a body that is parsed by `json_body`."""
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}}}
