"""SSE responses: pre-encoded frame bytes out, `: ping` after silence, cleanup on disconnect."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

from sse_starlette import EventSourceResponse, ServerSentEvent


def _ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping", sep="\n")


def sse_response(
    chunks: AsyncIterator[bytes],
    *,
    ping_s: float,
    headers: Mapping[str, str] | None = None,
    on_disconnect: Callable[[], None] | None = None,
    shutdown_grace_s: float = 0,
) -> EventSourceResponse:
    """Stream `chunks` (already SSE-encoded). `on_disconnect` runs if the client leaves early.

    It runs synchronously in the generator's `finally`: an await there would be
    cancelled again by the task group that is tearing the response down.
    """

    async def body() -> AsyncIterator[bytes]:
        finished = False
        try:
            async for chunk in chunks:
                yield chunk
            finished = True
        finally:
            if not finished and on_disconnect is not None:
                on_disconnect()

    return EventSourceResponse(
        body(),
        ping=ping_s,
        ping_message_factory=_ping,
        sep="\n",
        headers=dict(headers or {}),
        send_timeout=60,
        # On shutdown, keep the stream open while its run finishes (or is interrupted
        # after the service's grace period): the client then sees the terminal event.
        shutdown_grace_period=shutdown_grace_s,
    )
