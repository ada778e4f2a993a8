"""JSON Schema checks for `input_schema` / `output_schema` (Draft 2020-12, via jsonschema)."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .errors import InvalidInput, InvalidWorker


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


def validate(schema: dict[str, Any], value: Any, *, worker: str, cache: dict[str, Any]) -> None:
    """Raise InvalidInput saying where `value` breaks `schema`."""
    validator = cache.get("input_validator")
    if validator is None:
        validator = cache["input_validator"] = Draft202012Validator(schema)
    error = next(iter(sorted(validator.iter_errors(value), key=lambda e: e.path)), None)
    if error is None:
        return
    where = "/".join(str(p) for p in error.absolute_path) or "(the input)"
    raise InvalidInput(
        f"Input for worker {worker!r} does not match its input_schema at {where}: {error.message}"
    )


def validate_output(schema: dict[str, Any], value: Any, *, worker: str, cache: dict[str, Any]):
    """A code worker's output must match its output_schema, as a model's would."""
    from .errors import InvalidOutput

    validator = cache.get("output_validator")
    if validator is None:
        validator = cache["output_validator"] = Draft202012Validator(schema)
    error = next(iter(sorted(validator.iter_errors(value), key=lambda e: e.path)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(the output)"
        raise InvalidOutput(
            f"Worker {worker!r} returned output that does not match its output_schema at "
            f"{where}: {error.message}"
        )
