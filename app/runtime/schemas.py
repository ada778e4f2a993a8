"""JSON Schema checks for `input_schema` / `output_schema` (Draft 2020-12, via jsonschema)."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .errors import InvalidInput, InvalidOutput, InvalidWorker


def check_schema(schema: dict[str, Any] | None, *, field: str, source: str) -> None:
    """At load: a schema that is not valid JSON Schema makes the worker invalid."""
    if schema is None:
        return
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidWorker(
            f"{source}: field {field!r} is not a valid JSON Schema: {exc.message}",
            path=source,
            field=field,
        ) from None


def _first_error(schema: dict[str, Any], value: Any, cache: dict[str, Any], key: str) -> Any:
    """The first place `value` breaks `schema` (validator built once, kept in `cache`)."""
    validator = cache.get(key)
    if validator is None:
        validator = cache[key] = Draft202012Validator(schema)
    return next(iter(sorted(validator.iter_errors(value), key=lambda e: e.path)), None)


def _where(error: Any, whole: str) -> str:
    return "/".join(str(p) for p in error.absolute_path) or whole


def validate(schema: dict[str, Any], value: Any, *, worker: str, cache: dict[str, Any]) -> None:
    """Raise InvalidInput saying where `value` breaks `schema`."""
    error = _first_error(schema, value, cache, "input_validator")
    if error is not None:
        raise InvalidInput(
            f"Input for worker {worker!r} does not match its input_schema at "
            f"{_where(error, '(the input)')}: {error.message}"
        )


def validate_output(
    schema: dict[str, Any], value: Any, *, worker: str, cache: dict[str, Any]
) -> None:
    """A code worker's output must match its output_schema, as a model's would."""
    error = _first_error(schema, value, cache, "output_validator")
    if error is not None:
        raise InvalidOutput(
            f"Worker {worker!r} returned output that does not match its output_schema at "
            f"{_where(error, '(the output)')}: {error.message}"
        )
