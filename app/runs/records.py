"""What the service remembers about a run (its record), separate from its events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RunStatus = Literal[
    "running", "waiting_approval", "succeeded", "failed", "cancelled", "interrupted"
]
ENDED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


@dataclass(slots=True)
class RunRecord:
    run_id: str
    worker: str
    status: RunStatus
    created_at: float
    model: str | None = None
    input: Any = None
    approval: str = "prompt"
    started_at: float | None = None
    finished_at: float | None = None
    output: Any = None
    error: dict[str, str] | None = None
    usage: dict[str, int] | None = None
    last_seq: int = 0
    owner: str | None = None  # the replica that runs (or ran) it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def public(self, pending_approvals: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "worker": self.worker,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "model": self.model,
            "approval": self.approval,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "usage": self.usage,
            "events": self.last_seq,
            "replica": self.owner,
            "pending_approvals": pending_approvals or [],
        }
