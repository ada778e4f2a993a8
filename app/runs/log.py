"""The frames of one run, and any number of followers reading them at their own pace.

The producer only appends (no await, no per-event task); a follower that wakes
takes every frame past its cursor as one chunk, so a slow client falls behind
without ever slowing the run or the other followers.

With several replicas a frame may reach a client only once it is on the shared bus
(or in the shared store): a log made with `hold=True` shows followers only the frames
`release`d so far. The in-process default shows each frame as it is appended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class RunLog:
    __slots__ = ("_waiters", "closed", "frames", "hold", "published", "visible")

    def __init__(self, *, hold: bool = False) -> None:
        self.frames: list[bytes] = []
        self.closed = False
        self.hold = hold
        self.visible = 0  # frames[:visible] may be sent to clients
        self.published = 0  # frames[:published] have been handed to the bus (hold only)
        self._waiters: list[asyncio.Future[None]] = []

    def append(self, frame: bytes) -> None:
        self.frames.append(frame)
        if not self.hold:
            self.visible += 1
            if self._waiters:
                self._wake()

    def release(self, upto: int) -> None:
        """Let followers see frames[:upto] (they are on the bus or in the store)."""
        if upto > self.visible:
            self.visible = upto
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
        """Yield chunks of frames with seq > `after`, live, until the log is closed and
        every frame has been shown."""
        cursor = after
        frames = self.frames
        while True:
            end = self.visible
            if cursor < end:
                yield frames[cursor] if end == cursor + 1 else b"".join(frames[cursor:end])
                cursor = end
                continue
            if self.closed and cursor >= len(frames):
                return
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut
