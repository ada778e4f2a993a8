"""The runtime's exception tree. None of them knows about HTTP.

    LlmDoError                      base; `type` is the wire slug used in events and HTTP bodies
    ├── WorkerNotFound              no worker by that name (or the name is not a valid worker name)
    ├── InvalidWorker               a worker file that cannot be loaded; names the file and field
    ├── InvalidInput                run input that does not match the worker's input_schema
    ├── SandboxViolation            a path that escapes its root or names no sandbox
    ├── AttachmentRejected          an attachment that breaks an attachment_policy rule
    ├── ModelError                  a model string that cannot be turned into a model
    ├── ProviderError               the model provider answered with an error (status, retry_after)
    │   ├── ProviderRateLimited     ... a rate limit (429) that outlasted the client's retries
    │   └── ProviderTimeout         ... or no answer in time (connect, or a stall mid-stream)
    ├── ModelBehaviorError          the model answered something unusable
    ├── UsageLimitReached           the run tree hit one of its usage limits
    ├── WorkerTimeout               a worker ran past its timeout_s
    ├── DelegationError             worker_call refused (allowlist, depth) or the child failed
    ├── RunNotFound                 no run by that id
    ├── RunAlreadyEnded             cancel of a run that has ended
    ├── TooManyRuns                 the run limit is reached (retry_after)
    ├── Unavailable                 the service is stopping, or a replica/the bus cannot be reached
    │   └── StoreUnavailable        the run store (PostgreSQL) cannot be written or read
    ├── ToolCallFailed              a ctx file operation refused or failed (the tool's message)
    ├── ApprovalDenied              a ctx operation that needed approval was denied
    ├── InvalidOutput               a code worker returned something its output_schema refuses
    ├── InternalError               an unexpected exception in a worker (a bug, or user code)
    ├── ApprovalNotFound            no pending or decided approval by that id in that run
    └── ApprovalAlreadyDecided      a second decision for one approval

Foreign exceptions (PydanticAI's) are translated once, in `translate`, raised `from` the original.
"""

from __future__ import annotations

from typing import Any

from pydantic_ai import exceptions as pai_exc


class LlmDoError(Exception):
    type = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


class WorkerNotFound(LlmDoError):
    type = "worker_not_found"


class InvalidWorker(LlmDoError):
    type = "invalid_worker"

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None):
        super().__init__(message)
        self.path = path
        self.field = field


class InvalidInput(LlmDoError):
    type = "invalid_input"


class SandboxViolation(LlmDoError):
    type = "sandbox_violation"


class AttachmentRejected(LlmDoError):
    type = "attachment_rejected"


class ModelError(LlmDoError):
    type = "model_error"


class ProviderError(LlmDoError):
    type = "provider_error"

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ProviderRateLimited(ProviderError):
    type = "provider_rate_limited"


class ProviderTimeout(ProviderError):
    type = "provider_timeout"


class ModelBehaviorError(LlmDoError):
    type = "model_behavior_error"


class UsageLimitReached(LlmDoError):
    type = "usage_limit_exceeded"


class WorkerTimeout(LlmDoError):
    type = "timeout"


class DelegationError(LlmDoError):
    type = "delegation_error"


class RunNotFound(LlmDoError):
    type = "run_not_found"


class RunAlreadyEnded(LlmDoError):
    type = "run_already_ended"


class TooManyRuns(LlmDoError):
    type = "too_many_runs"

    def __init__(self, message: str, *, retry_after: float = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(LlmDoError):
    type = "unavailable"

    def __init__(self, message: str, *, retry_after: float = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(Unavailable):
    type = "store_unavailable"


class ToolCallFailed(LlmDoError):
    type = "tool_failed"


class ApprovalDenied(LlmDoError):
    type = "approval_denied"


class InvalidOutput(LlmDoError):
    type = "invalid_output"


class InternalError(LlmDoError):
    type = "internal_error"


class ApprovalNotFound(LlmDoError):
    type = "approval_not_found"


class ApprovalAlreadyDecided(LlmDoError):
    type = "approval_already_decided"


def from_dict(error: dict[str, Any]) -> LlmDoError:
    """Rebuild a typed error from its wire form (`as_dict`), e.g. one another replica sent."""
    classes: list[type[LlmDoError]] = [LlmDoError]
    for cls in classes:  # grows while it is walked: every subclass, breadth first
        classes.extend(cls.__subclasses__())
    found = next((c for c in classes if c.type == error.get("type")), LlmDoError)
    exc = found.__new__(found)
    LlmDoError.__init__(exc, str(error.get("message", "")))
    if isinstance(exc, TooManyRuns | Unavailable | ProviderError):
        exc.retry_after = error.get("retry_after", 5)
    if isinstance(exc, ProviderError):
        exc.status = None
    if isinstance(exc, InvalidWorker):
        exc.path = exc.field = None
    return exc


def translate(exc: BaseException, *, model: str) -> LlmDoError | None:
    """Map a PydanticAI (or provider SDK) exception to ours; None when it is not one we know."""
    if isinstance(exc, LlmDoError):
        return exc
    if isinstance(exc, pai_exc.RunTimedOut):
        return WorkerTimeout(f"The worker ran past its time limit: {exc}")
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, pai_exc.ModelRateLimitError) or (
        isinstance(exc, pai_exc.ModelHTTPError) and exc.status_code == 429
    ):
        wait = f"; it suggests retrying after {retry_after:g} s" if retry_after else ""
        return ProviderRateLimited(
            f"Model {model!r} is rate-limited by its provider (after retries){wait}",
            status=429,
            retry_after=retry_after,
        )
    if isinstance(exc, pai_exc.ModelTimeoutError | pai_exc.ModelRequestTimeout):
        return ProviderTimeout(
            f"Model {model!r} did not answer in time ({exc.message}); the provider may be "
            "overloaded, or LLM_DO_STALL_TIMEOUT_S is too short for it",
            retry_after=retry_after,
        )
    if isinstance(exc, pai_exc.ModelHTTPError):
        return ProviderError(
            f"Model {model!r} returned HTTP {exc.status_code}: {_short(exc.body)}",
            status=exc.status_code,
            retry_after=exc.retry_after,
        )
    if isinstance(exc, pai_exc.ModelAPIError):
        return ProviderError(
            f"Model {model!r} could not be reached: {exc.message}", retry_after=exc.retry_after
        )
    if isinstance(exc, pai_exc.UsageLimitExceeded):
        return UsageLimitReached(str(exc))
    if isinstance(exc, pai_exc.UnexpectedModelBehavior):
        return ModelBehaviorError(f"Model {model!r} behaved unexpectedly: {exc.message}")
    if type(exc).__module__.split(".")[0] in _TRANSPORT_MODULES:
        # a transport error the provider SDK let through (e.g. a connection dropped mid-stream)
        return ProviderError(f"Model {model!r}: the connection failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, pai_exc.UserError):
        return ModelError(f"Model {model!r} cannot be used: {exc.message}")
    return None


_TRANSPORT_MODULES = frozenset({"httpx", "httpx2", "httpcore", "httpcore2", "openai", "anthropic"})


def _short(body: object, limit: int = 300) -> str:
    text = str(body)
    return text if len(text) <= limit else text[:limit] + "..."
