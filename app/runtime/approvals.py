"""The one place that decides approvals: modes, remembered decisions, waiting, timeouts.

A gated tool call does not run until a decision arrives. In `prompt` mode the call
*waits in place*: the gate emits `approval.requested` and awaits a future, while
the run, its stream and every other tool call and worker keep going on the loop.
`decide()` (called by whatever delivers a person's answer, e.g. the HTTP route)
resolves the future. Which calls are gated is the tools' business (a rule per
toolset, see `ApprovalGated`); what happens to a gated call is decided only here.

Decisions: `approve` (optionally with edited args), `approve_for_run` (the same
tool with the same args is approved for the rest of the run, nested workers
included), `deny` (the model sees a denied tool result with the reason). A
timeout denies with reason "timed out"; a cancelled run ends its pending
approvals with decision "cancelled".
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError
from pydantic_ai import RunContext, WrapperToolset
from pydantic_ai.tools import ToolDenied

from .errors import ApprovalAlreadyDecided, ApprovalNotFound, InvalidInput
from .events import ApprovalRequested, ApprovalResolved, EventSink

if TYPE_CHECKING:
    from .context import Invocation

ApprovalMode = Literal["prompt", "approve_all", "deny_all"]
DecisionKind = Literal["approve", "approve_for_run", "deny"]
APPROVAL_MODES: tuple[ApprovalMode, ...] = ("prompt", "approve_all", "deny_all")


@dataclass(frozen=True, slots=True)
class Gating:
    """Why a call needs approval: shown to the person deciding."""

    description: str
    details: dict[str, Any] | None = None


# A rule answers, for one call of one tool, whether it is gated (and how to show it).
GateRule = Callable[["Invocation", str, dict[str, Any]], Gating | None]


@dataclass(slots=True)
class Decision:
    approved: bool
    kind: str
    args: dict[str, Any] | None = None
    reason: str | None = None


@dataclass(slots=True)
class PendingApproval:
    approval_id: str
    tool_call_id: str
    tool: str
    args: dict[str, Any]
    worker: str
    path: tuple[str, ...]
    call_id: str
    description: str
    details: dict[str, Any] | None
    created_at: float
    expires_at: float
    future: asyncio.Future[Decision] = field(repr=False)
    validate: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        return {
            "approval_id": self.approval_id,
            "tool_call_id": self.tool_call_id,
            "tool": self.tool,
            "args": self.args,
            "details": self.details,
            "worker": self.worker,
            "path": list(self.path),
            "call_id": self.call_id,
            "description": self.description,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }


def _key(tool: str, args: dict[str, Any]) -> str:
    return tool + "\x00" + json.dumps(args, sort_keys=True, default=str)


class ApprovalGate:
    """One per run tree; shared by every nested worker of the run."""

    def __init__(
        self,
        run_id: str,
        sink: EventSink,
        *,
        mode: ApprovalMode = "prompt",
        timeout_s: float = 600,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.mode = mode
        self.timeout_s = timeout_s
        self._sink = sink
        self._on_change = on_change
        self._remembered: set[str] = set()
        self._pending: dict[str, PendingApproval] = {}
        self._decided: dict[str, str] = {}

    @property
    def pending(self) -> list[PendingApproval]:
        return list(self._pending.values())

    async def check(
        self,
        inv: Invocation,
        tool_call_id: str,
        tool: str,
        args: dict[str, Any],
        gating: Gating,
        validate: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> Decision:
        """Wait for (or derive) the decision on one gated call. `validate` checks edited args
        against the tool's schema when the decision arrives (so a bad edit is a 422 there)."""
        if self.mode == "approve_all":
            return Decision(True, "approve_all")
        if self.mode == "deny_all":
            return Decision(False, "deny_all", reason="the run's approval mode is deny_all")
        if _key(tool, args) in self._remembered:
            return Decision(True, "approve_for_run")
        now = time.time()
        item = PendingApproval(
            approval_id=uuid.uuid4().hex[:12],
            tool_call_id=tool_call_id,
            tool=tool,
            args=args,
            worker=inv.worker_name,
            path=inv.path,
            call_id=inv.call_id,
            description=gating.description,
            details=gating.details,
            created_at=now,
            expires_at=now + self.timeout_s,
            future=asyncio.get_running_loop().create_future(),
            validate=validate,
        )
        self._pending[item.approval_id] = item
        base = {
            "run_id": self.run_id,
            "worker": item.worker,
            "path": item.path,
            "call_id": item.call_id,
        }
        self._sink.emit(
            ApprovalRequested(
                **base,
                approval_id=item.approval_id,
                tool_call_id=tool_call_id,
                tool=tool,
                args=args,
                description=item.description,
                details=item.details,
                created_at=item.created_at,
                expires_at=item.expires_at,
            )
        )
        self._changed()
        try:
            async with asyncio.timeout(self.timeout_s):
                decision = await item.future
        except TimeoutError:
            decision = Decision(False, "deny", reason="timed out")
            self._resolve(item, decision)
        except asyncio.CancelledError:
            if item.approval_id in self._pending:
                self._resolve(item, Decision(False, "cancelled", reason="the run was cancelled"))
            raise
        return decision

    def decide(
        self,
        approval_id: str,
        kind: DecisionKind,
        *,
        reason: str | None = None,
        args: dict[str, Any] | None = None,
    ) -> Decision:
        item = self._pending.get(approval_id)
        if item is None:
            if approval_id in self._decided:
                raise ApprovalAlreadyDecided(
                    f"Approval {approval_id!r} was already decided: {self._decided[approval_id]}"
                )
            raise ApprovalNotFound(f"No approval {approval_id!r} in run {self.run_id!r}")
        if kind == "deny":
            decision = Decision(
                False, "deny", reason=reason or "denied by the user (no reason given)"
            )
        elif kind in ("approve", "approve_for_run"):
            if args is not None:
                args = self._validated(item, args)
            decision = Decision(True, kind, args=args, reason=reason)
        else:
            raise InvalidInput(f"Unknown decision {kind!r}: use approve, approve_for_run or deny")
        self._resolve(item, decision)
        if kind == "approve_for_run":
            key = _key(item.tool, item.args)
            self._remembered.add(key)
            for twin in [p for p in self._pending.values() if _key(p.tool, p.args) == key]:
                self._resolve(twin, Decision(True, "approve_for_run"))
        return decision

    @staticmethod
    def _validated(item: PendingApproval, args: Any) -> dict[str, Any]:
        if not isinstance(args, dict):
            raise InvalidInput("Edited 'args' must be an object of the tool's arguments")
        if item.validate is None:
            return args
        try:
            return item.validate(args)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidInput(f"Edited args do not fit tool {item.tool!r}: {problems}") from None

    def _resolve(self, item: PendingApproval, decision: Decision) -> None:
        self._pending.pop(item.approval_id, None)
        self._decided[item.approval_id] = decision.kind
        if not item.future.done():
            item.future.set_result(decision)
        self._sink.emit(
            ApprovalResolved(
                run_id=self.run_id,
                worker=item.worker,
                path=item.path,
                call_id=item.call_id,
                approval_id=item.approval_id,
                tool_call_id=item.tool_call_id,
                decision=decision.kind,
                reason=decision.reason,
            )
        )
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


@dataclass
class ApprovalGated(WrapperToolset["Invocation"]):
    """Asks the run's gate before a call that `rule` says is gated; a denial becomes a
    denied tool result (outcome `denied`) carrying the reason, and the run goes on."""

    rule: GateRule = field(kw_only=True)

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Invocation], tool: Any
    ) -> Any:
        inv = ctx.deps
        gating = self.rule(inv, name, tool_args)
        if gating is not None:
            decision = await inv.state.gate.check(
                inv,
                ctx.tool_call_id or "",
                name,
                tool_args,
                gating,
                validate=tool.args_validator.validate_python,
            )
            if not decision.approved:
                return ToolDenied(f"Tool call denied. Reason: {decision.reason}")
            if decision.args is not None:
                tool_args = decision.args  # validated by the gate when the decision arrived
        return await super().call_tool(name, tool_args, ctx, tool)
