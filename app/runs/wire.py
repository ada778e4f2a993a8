"""The one encoder: an event becomes its JSON bytes and its SSE frame bytes exactly once.

Every follower of a run yields the same frame bytes and the store keeps the same
JSON bytes, so no event is serialised twice; replay rebuilds the identical frame
from the stored bytes. The `data:` line is compact JSON on one line (JSON escapes
newlines), which is what the SSE format needs.
"""

from __future__ import annotations

import pydantic_core

from app.runtime import Event


def frame(seq: int, type: str, data: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type.encode(), data)


def encode(event: Event) -> tuple[bytes, bytes]:
    """(JSON data, SSE frame) of one event."""
    data = pydantic_core.to_json(event, serialize_unknown=True)
    return data, b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), data)


def unframe(frames: bytes) -> list[tuple[int, str, bytes]]:
    """SSE frames made by `frame` back into (seq, type, data) rows."""
    rows = []
    for part in frames.split(b"\n\n"):
        if part:
            id_line, event_line, data_line = part.split(b"\n", 2)
            rows.append((int(id_line[4:]), event_line[7:].decode(), data_line[6:]))
    return rows


def drop_frames(frames: bytes, count: int) -> bytes:
    """`frames` without its first `count` frames (a frame ends with a blank line; its
    JSON data never holds a raw newline)."""
    pos = 0
    for _ in range(count):
        pos = frames.index(b"\n\n", pos) + 2
    return frames[pos:]
