"""The design rules that keep the tree readable: layering, one error table, documented settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.api.errors import STATUS, status_of
from app.runtime import errors as rt
from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def test_runtime_imports_without_any_http_framework():
    code = (
        "import sys, app.runtime, app.runs\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'sse_starlette', 'uvicorn'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"runtime/runs pulled in: {out.stdout}"


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_runtime_error_has_a_status_and_a_unique_slug():
    classes = list(_subclasses(rt.LlmDoError))
    slugs = [c.type for c in classes]
    assert len(slugs) == len(set(slugs)), slugs
    for cls in classes:
        assert cls in STATUS, f"{cls.__name__} has no HTTP status in app/api/errors.py"
        assert 400 <= status_of(cls.__new__(cls)) < 600


def test_every_setting_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"LLM_DO_{name.upper()}" in readme, f"LLM_DO_{name.upper()} missing from README"


def test_runtime_public_surface_is_pinned():
    import app.runtime

    assert set(app.runtime.__all__) == {
        "APPROVAL_MODES",
        "ApprovalAlreadyDecided",
        "ApprovalMode",
        "ApprovalNotFound",
        "DecisionKind",
        "InternalError",
        "ApprovalDenied",
        "InvalidOutput",
        "ToolCallFailed",
        "WorkerContext",
        "BUILTIN_MODELS",
        "DEFAULT_MODEL",
        "EVENT_TYPES",
        "TERMINAL_TYPES",
        "Attachment",
        "AttachmentRejected",
        "DelegationError",
        "Event",
        "InvalidInput",
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
        "Unavailable",
        "UsageLimitReached",
        "Worker",
        "WorkerNotFound",
        "WorkerRegistry",
        "WorkerRun",
        "WorkerSpec",
        "WorkerTimeout",
        "check_policy",
        "is_valid_name",
        "new_id",
        "run_worker",
    }
