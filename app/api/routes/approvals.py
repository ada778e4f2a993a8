"""GET /runs/{id}/approvals and POST /runs/{id}/approvals/{approval_id}: deliver a decision.

The route decides nothing: it hands the decision to the run's approval gate.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from app.api.body import json_body, openapi_body
from app.api.deps import RunsDep

router = APIRouter(tags=["approvals"])


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "approve_for_run", "deny"]
    reason: str | None = Field(None, description="Shown to the model when denying")
    args: dict[str, Any] | None = Field(None, description="Edited arguments (with approve)")


@router.get("/runs/{run_id}/approvals")
async def list_approvals(run_id: str, runs: RunsDep) -> dict[str, list[dict[str, Any]]]:
    """The run's pending approvals, oldest first."""
    return {"approvals": await runs.approvals(run_id)}


@router.post("/runs/{run_id}/approvals/{approval_id}", openapi_extra=openapi_body(DecisionIn))
async def decide(run_id: str, approval_id: str, request: Request, runs: RunsDep) -> dict[str, str]:
    """Approve, approve for the rest of the run, or deny one pending tool call."""
    body = await json_body(request, DecisionIn, what="decision")
    await runs.decide(run_id, approval_id, body.decision, reason=body.reason, args=body.args)
    return {"approval_id": approval_id, "decision": body.decision}
