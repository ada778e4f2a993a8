"""Rows shared by the SQL stores: a RunRecord as a tuple and back, and events packed
as one row per run per batch (`chunks`) and unpacked again (`unpack`)."""

from __future__ import annotations

import json
from typing import Any

from .records import RunRecord
from .store import EventRow

COLUMNS = (
    "run_id, worker, status, created_at, started_at, finished_at, model, approval, "
    "input, output, error, usage, last_seq, owner"
)


def chunks(events: list[tuple[str, int, str, bytes]]) -> list[tuple[str, int, int, str, bytes]]:
    """Consecutive events of one run become one row: (run_id, first, last, types, body).

    A token stream writes a row per batch instead of a row per token, which is what
    keeps persistence off the streaming budget. `body` is the events' JSON joined by
    newlines (JSON never holds a raw newline); `types` their types joined by commas.
    """
    open_: dict[str, list[Any]] = {}
    rows: list[tuple[str, int, int, str, bytes]] = []

    def close(run_id: str) -> None:
        first, last, types, datas = open_.pop(run_id)
        rows.append((run_id, first, last, ",".join(types), b"\n".join(datas)))

    for run_id, seq, type_, data in events:
        group = open_.get(run_id)
        if group is not None and seq != group[1] + 1:
            close(run_id)
            group = None
        if group is None:
            open_[run_id] = [seq, seq, [type_], [data]]
        else:
            group[1] = seq
            group[2].append(type_)
            group[3].append(data)
    for run_id in list(open_):
        close(run_id)
    return rows


# An ended run's record is final: a late write (a replica that lost its lease and still
# finishes the run) cannot turn an `interrupted` run back into a `succeeded` one.
NOT_ENDED = "runs.status NOT IN ('succeeded', 'failed', 'cancelled', 'interrupted')"

# Its events are final too: a chunk reaching past an ended run's terminal event is not stored,
# so every replica replays the survivor's `interrupted` as the last event, not the late
# replica's events after it. `{run_id}` and `{last_seq}` are the chunk's placeholders.
PAST_THE_END = (
    "NOT EXISTS (SELECT 1 FROM runs WHERE runs.run_id = {run_id} AND NOT ("
    + NOT_ENDED
    + ") AND runs.last_seq < {last_seq})"
)


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def to_row(record: RunRecord) -> tuple[Any, ...]:
    r = record
    return (
        r.run_id,
        r.worker,
        r.status,
        r.created_at,
        r.started_at,
        r.finished_at,
        r.model,
        r.approval,
        _dump(r.input),
        _dump(r.output),
        _dump(r.error),
        _dump(r.usage),
        r.last_seq,
        r.owner,
    )


def from_row(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        run_id=row[0],
        worker=row[1],
        status=row[2],
        created_at=row[3],
        started_at=row[4],
        finished_at=row[5],
        model=row[6],
        approval=row[7] or "prompt",
        input=_load(row[8]),
        output=_load(row[9]),
        error=_load(row[10]),
        usage=_load(row[11]),
        last_seq=row[12],
        owner=row[13],
    )


def unpack(rows: list[tuple[int, str, bytes]], after: int, limit: int) -> list[EventRow]:
    """Chunk rows (first_seq, types, body) back into events with seq > after."""
    out: list[EventRow] = []
    for first, types, body in rows:
        body = bytes(body)
        for seq, type_, data in zip(
            range(first, first + body.count(b"\n") + 1),
            types.split(","),
            body.split(b"\n"),
            strict=True,
        ):
            if seq > after:
                out.append((seq, type_, data))
                if len(out) == limit:
                    return out
    return out
