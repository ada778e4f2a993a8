"""The worker runtime: usable as a library, with no HTTP anywhere.

registry = WorkerRegistry("workers")
async for event in run_worker(registry, "greeter", "hello"):
    ...
"""

from .approvals import APPROVAL_MODES, ApprovalMode, DecisionKind
from .attachments import Attachment, check_policy
from .context import RuntimeConfig
from .definitions import WorkerSpec, is_valid_name
from .errors import (
    ApprovalAlreadyDecided,
    ApprovalDenied,
    ApprovalNotFound,
    AttachmentRejected,
    DelegationError,
    InternalError,
    InvalidInput,
    InvalidOutput,
    InvalidWorker,
    LlmDoError,
    ModelBehaviorError,
    ModelError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    RunAlreadyEnded,
    RunNotFound,
    SandboxViolation,
    StoreUnavailable,
    ToolCallFailed,
    TooManyRuns,
    Unavailable,
    UsageLimitReached,
    WorkerNotFound,
    WorkerTimeout,
)
from .events import EVENT_TYPES, TERMINAL_TYPES, Event
from .models import BUILTIN_MODELS, DEFAULT_MODEL, ModelResolver
from .registry import Worker, WorkerRegistry
from .run import RunResult, WorkerRun, new_id, run_worker
from .worker_context import WorkerContext

__all__ = [
    "APPROVAL_MODES",
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "EVENT_TYPES",
    "TERMINAL_TYPES",
    "ApprovalAlreadyDecided",
    "ApprovalDenied",
    "ApprovalMode",
    "ApprovalNotFound",
    "Attachment",
    "AttachmentRejected",
    "DecisionKind",
    "DelegationError",
    "Event",
    "InternalError",
    "InvalidInput",
    "InvalidOutput",
    "InvalidWorker",
    "LlmDoError",
    "ModelBehaviorError",
    "ModelError",
    "ModelResolver",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderTimeout",
    "RunAlreadyEnded",
    "RunNotFound",
    "RunResult",
    "RuntimeConfig",
    "SandboxViolation",
    "StoreUnavailable",
    "TooManyRuns",
    "ToolCallFailed",
    "Unavailable",
    "UsageLimitReached",
    "Worker",
    "WorkerContext",
    "WorkerNotFound",
    "WorkerRegistry",
    "WorkerRun",
    "WorkerSpec",
    "WorkerTimeout",
    "check_policy",
    "is_valid_name",
    "new_id",
    "run_worker",
]
