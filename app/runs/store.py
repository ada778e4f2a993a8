"""RunStore: where run records and every event live, so runs survive their stream and a restart.

The store never sees event objects: events are `(run_id, seq, type, data)` rows whose
`data` is the JSON bytes the wire encoder made once. `append` is fire-and-forget (an
implementation batches it off the event loop); `flush` returns once everything
appended or updated before it is durable. A run counts as ended only after the
manager has flushed its terminal event and record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .records import RunRecord

EventRow = tuple[int, str, bytes]  # (seq, type, data)


FailureHook = Callable[[set[str], BaseException], None]


class RunStore(Protocol):
    on_failure: FailureHook | None
    """Told which runs' events could not be written (the manager fails those runs)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(self, record: RunRecord) -> None:
        """Insert a new run and make it durable before returning."""

    def append(self, run_id: str, seq: int, type: str, data: bytes) -> None:
        """Queue one event; never blocks, never awaits."""

    def update(self, record: RunRecord) -> None:
        """Queue the record's current state (status, output, ...)."""

    async def flush(self) -> None:
        """Wait until everything queued so far is durable; StoreUnavailable if it is not."""

    async def get(self, run_id: str) -> RunRecord | None: ...

    async def list(
        self, *, worker: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """Newest first."""

    async def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[EventRow]:
        """Events with seq > after, in order, at most `limit`."""

    async def unfinished(self) -> list[RunRecord]:
        """Runs whose record says they are still going (after a crash: they are not)."""

    async def prune(self, *, max_age_s: float | None, max_runs: int | None) -> int:
        """Delete ended runs older than max_age_s or beyond the newest max_runs; returns count."""
