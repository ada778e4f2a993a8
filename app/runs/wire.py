"""The one encoder: an event becomes its SSE frame bytes exactly once.

Every follower of a run yields these same bytes, and a store keeps them too, so no
event is ever serialised twice. The `data:` line is compact JSON on one line (JSON
escapes newlines), which is what the SSE format needs.
"""

from __future__ import annotations

import pydantic_core

from app.runtime import Event


def encode(event: Event) -> bytes:
    data = pydantic_core.to_json(event, serialize_unknown=True)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), data)


def data_of(frame: bytes) -> bytes:
    """The JSON of a frame (for stores and JSON responses that need the event body)."""
    start = frame.index(b"\ndata: ") + 7
    return frame[start:-2]
