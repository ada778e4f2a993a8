"""MemoryRunStore: the reference RunStore, in memory. For tests, benchmarks and
`LLM_DO_STORE_URL=memory://`; nothing survives the process."""

from __future__ import annotations

import time
from dataclasses import replace

from .records import ENDED, RunRecord
from .store import EventRow, FailureHook


class MemoryRunStore:
    on_failure: FailureHook | None = None

    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}
        self._events: dict[str, list[EventRow]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create(self, record: RunRecord) -> None:
        self._runs[record.run_id] = replace(record)
        self._events.setdefault(record.run_id, [])

    def append(self, run_id: str, seq: int, type: str, data: bytes) -> None:
        stored = self._runs.get(run_id)
        if stored is not None and stored.ended and seq > stored.last_seq:
            return  # nothing past an ended run's terminal event (as in SQL)
        self._events.setdefault(run_id, []).append((seq, type, data))

    def update(self, record: RunRecord) -> None:
        stored = self._runs.get(record.run_id)
        if stored is None or not stored.ended:  # an ended record is final (as in SQL)
            self._runs[record.run_id] = replace(record)

    async def flush(self) -> None:
        return None

    async def get(self, run_id: str) -> RunRecord | None:
        record = self._runs.get(run_id)
        return replace(record) if record else None

    async def list(
        self, *, worker: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        rows = sorted(self._runs.values(), key=lambda r: r.created_at, reverse=True)
        rows = [r for r in rows if (worker is None or r.worker == worker)]
        rows = [r for r in rows if (status is None or r.status == status)]
        return [replace(r) for r in rows[:limit]]

    async def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[EventRow]:
        rows = self._events.get(run_id, [])
        # seq n sits at index n-1 (no gaps), so slicing is the lookup
        return rows[after : after + limit]

    async def unfinished(self) -> list[RunRecord]:
        out = []
        for record in self._runs.values():
            if record.status not in ENDED:
                events = self._events.get(record.run_id)
                out.append(replace(record, last_seq=events[-1][0] if events else 0))
        return out

    async def prune(self, *, max_age_s: float | None, max_runs: int | None) -> int:
        ended = sorted(
            (r for r in self._runs.values() if r.status in ENDED),
            key=lambda r: r.created_at,
            reverse=True,
        )
        doomed = set()
        if max_age_s is not None:
            cutoff = time.time() - max_age_s
            doomed |= {r.run_id for r in ended if r.created_at < cutoff}
        if max_runs is not None:
            doomed |= {r.run_id for r in ended[max_runs:]}
        for run_id in doomed:
            self._runs.pop(run_id, None)
            self._events.pop(run_id, None)
        return len(doomed)
