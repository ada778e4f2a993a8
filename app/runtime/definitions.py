"""What a `.worker` file may say (workers.md §2), validated at load.

Unknown keys are errors: a typo must not silently drop a safety rule.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import InvalidWorker

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def is_valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SandboxPath(_Strict):
    root: str
    mode: Literal["ro", "rw"] = "ro"
    suffixes: list[str] | None = None
    max_file_bytes: int | None = Field(default=None, gt=0)
    write_approval: bool = True
    read_approval: bool = False


class Sandbox(_Strict):
    paths: dict[str, SandboxPath] = {}

    @field_validator("paths")
    @classmethod
    def _names(cls, value: dict[str, SandboxPath]) -> dict[str, SandboxPath]:
        for name in value:
            if not is_valid_name(name):
                raise ValueError(f"sandbox name {name!r} must match {NAME_RE.pattern}")
        return value


class AttachmentPolicy(_Strict):
    max_attachments: int = Field(default=4, ge=0)
    max_total_bytes: int = Field(default=10_000_000, ge=0)
    allowed_suffixes: list[str] = []
    denied_suffixes: list[str] = []


class ShellRule(_Strict):
    prefix: str = Field(min_length=1)
    allowed: bool = True
    approval: bool = True


class ShellDefault(_Strict):
    allowed: bool = False
    approval: bool = True


class ShellConfig(_Strict):
    rules: list[ShellRule] = []
    default: ShellDefault = ShellDefault()
    cwd: str | None = None


def _legacy_shell(data: dict[str, Any]) -> dict[str, Any]:
    """Accept the llm-do CLI's `shell_rules` / `shell_default` / `shell_cwd` as `shell`."""
    legacy = {k: data.pop(k) for k in ("shell_rules", "shell_default", "shell_cwd") if k in data}
    if not legacy:
        return data
    if "shell" in data:
        raise ValueError(
            "use either 'shell' or 'shell_rules'/'shell_default'/'shell_cwd', not both"
        )
    rules = []
    for rule in legacy.get("shell_rules") or []:
        if not isinstance(rule, dict):
            raise ValueError("each of 'shell_rules' must be a mapping")
        rule = dict(rule)
        sandbox_paths = rule.pop("sandbox_paths", None)
        converted: dict[str, Any] = {"prefix": rule.pop("pattern", None)}
        if "allowed" in rule:
            converted["allowed"] = rule.pop("allowed")
        approval = rule.pop("approval_required", True)
        # A path restriction we do not enforce argument by argument becomes an approval.
        converted["approval"] = bool(approval) or bool(sandbox_paths)
        if rule:
            raise ValueError(f"unknown key(s) in shell_rules: {sorted(rule)}")
        rules.append(converted)
    shell: dict[str, Any] = {"rules": rules}
    default = legacy.get("shell_default")
    if isinstance(default, dict):
        default = dict(default)
        if "approval_required" in default:
            default["approval"] = default.pop("approval_required")
        shell["default"] = default
    if legacy.get("shell_cwd"):
        shell["cwd"] = legacy["shell_cwd"]
    return {**data, "shell": shell}


BUILTIN_TOOLS = ("worker_call", "worker_create", "list_files", "read_file", "write_file", "shell")


class UsageLimitsConfig(_Strict):
    request_limit: int | None = Field(default=50, gt=0)
    total_tokens_limit: int | None = Field(default=None, gt=0)
    tool_calls_limit: int | None = Field(default=None, ge=0)


class WorkerSpec(_Strict):
    """The front matter of a worker file."""

    name: str
    description: str = ""
    model: str | None = None
    model_settings: dict[str, Any] = {}
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    allow_workers: list[str] = []
    sandbox: Sandbox | None = None
    attachment_policy: AttachmentPolicy = AttachmentPolicy()
    custom_tools: list[str] = []
    usage_limits: UsageLimitsConfig = UsageLimitsConfig()
    timeout_s: float = Field(default=600, gt=0)
    worker_create: bool = False
    require_approval: list[str] = []
    shell: ShellConfig | None = None
    locked: bool = False
    code: str | None = None  # FILE.py:FUNCTION: the worker is Python, not a model (§10)

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return _legacy_shell(dict(data)) if isinstance(data, dict) else data

    @field_validator("require_approval")
    @classmethod
    def _approvals_name_tools(cls, value: list[str], info: ValidationInfo) -> list[str]:
        known = set(BUILTIN_TOOLS) | set(info.data.get("custom_tools") or [])
        for name in value:
            if name not in known:
                raise ValueError(
                    f"names {name!r}, which is not a tool of this worker "
                    f"(custom_tools or one of {', '.join(BUILTIN_TOOLS)})"
                )
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_valid_name(value):
            raise ValueError(f"must match {NAME_RE.pattern}")
        return value

    @field_validator("allow_workers")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        for name in value:
            if name != "*" and not is_valid_name(name):
                raise ValueError(f"{name!r} is not a worker name (or '*')")
        return value


def split_front_matter(text: str, *, path: str) -> tuple[dict[str, Any], str]:
    """Split `---\\nYAML\\n---\\nbody` into (mapping, body)."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise InvalidWorker(
            f"{path}: a worker file starts with a '---' line, then YAML front matter, then '---'",
            path=path,
        )
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            head, body = "".join(lines[1:i]), "".join(lines[i + 1 :])
            break
    else:
        raise InvalidWorker(f"{path}: the front matter has no closing '---' line", path=path)
    try:
        data = yaml.safe_load(head) or {}
    except yaml.YAMLError as exc:
        raise InvalidWorker(f"{path}: front matter is not valid YAML: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise InvalidWorker(f"{path}: front matter must be a YAML mapping", path=path)
    return data, body


def parse_spec(data: dict[str, Any], *, path: str, expected_name: str) -> WorkerSpec:
    legacy = [k for k in ("shell_rules", "shell_default", "shell_cwd") if k in data]
    if "shell" in data and legacy:
        raise InvalidWorker(
            f"{path}: field 'shell': use either 'shell' or {legacy}, not both",
            path=path,
            field="shell",
        )
    try:
        spec = WorkerSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        detail = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"{path}: unknown key {field!r}"
        elif field is None:
            msg = f"{path}: {detail}"
        else:
            msg = f"{path}: field {field!r}: {detail}"
        raise InvalidWorker(msg, path=path, field=field) from exc
    if spec.name != expected_name:
        raise InvalidWorker(
            f"{path}: field 'name': is {spec.name!r} but the file defines worker {expected_name!r}",
            path=path,
            field="name",
        )
    return spec
