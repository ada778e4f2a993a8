"""The frames of one run, and any number of followers reading them at their own pace.

The producer only appends (no await, no per-event task); a follower that wakes
takes every frame past its cursor as one chunk, so a slow client falls behind
without ever slowing the run or the other followers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class RunLog:
    __slots__ = ("_waiters", "closed", "frames")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed = False
        self._waiters: list[asyncio.Future[None]] = []

    def append(self, frame: bytes) -> None:
        self.frames.append(frame)
        if self._waiters:
            self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def follow(self, after: int = 0) -> AsyncIterator[bytes]:
        """Yield chunks of frames with seq > `after`, live, until the log is closed."""
        cursor = after
        frames = self.frames
        while True:
            if cursor < len(frames):
                end = len(frames)
                yield frames[cursor] if end == cursor + 1 else b"".join(frames[cursor:end])
                cursor = end
                continue
            if self.closed:
                return
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut
