"""The bus: what replicas of the service share while runs are live.

A run executes on the replica that received its POST (its *owner*). The bus carries
what the other replicas need from it while it runs:

- its frames, so a follower on any replica gets the same bytes live (`publish`, `tail`);
- control requests (cancel, approval decisions, the live record) to the owner, with
  the owner's answer back (`request`, answered by the handler given to `open`);
- liveness: each replica keeps a lease alive; a replica whose lease lapses is dead,
  and a survivor ends its runs as `interrupted` (`alive`, `can_judge`, `claim`).

`LocalBus` is the single-process default: one replica, nothing shared, followers read
the owner's log directly. `RedisBus` (redis_bus.py) is the shared one.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from app.runtime import Unavailable

from .log import RunLog
from .store import EventRow, RunStore

ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def new_replica_id() -> str:
    """hostname-pid-random: unique per process, readable in logs and run records."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Bus(Protocol):
    replica_id: str
    shared: bool  # False: one process; followers read the owner's log, nothing to route
    lease_s: float
    beat_s: float  # how often leases are renewed and checked

    async def open(self, store: RunStore, on_control: ControlHandler) -> None: ...

    async def close(self) -> None: ...

    def publish(self, run_id: str, log: RunLog) -> None:
        """Send the log's unpublished frames, then `release` them to local followers."""

    async def publish_frames(self, run_id: str, first: int, frames: bytes) -> None:
        """Send frames made elsewhere (a reaped run's terminal event); the run's last."""

    def tail(self, run_id: str, after: int, store: RunStore) -> AsyncIterator[bytes]:
        """A run another replica owns: its frames after `after`, live, until its end."""

    async def frames_after(self, run_id: str, after: int) -> list[EventRow]:
        """The frames on the bus past `after` (a dead owner's events the store lacks)."""

    async def request(self, replica: str, message: dict[str, Any]) -> dict[str, Any]:
        """Ask another replica; its answer. Raises Unavailable when it does not answer."""

    async def alive(self, replicas: set[str]) -> set[str]:
        """Those of `replicas` whose lease holds."""

    async def can_judge(self) -> bool:
        """Whether a missing lease now means a dead replica (not a bus that just restarted)."""

    async def claim(self, run_id: str) -> bool:
        """True for exactly one replica asking to end a dead replica's run."""

    def lease_lapsed_since(self, t: float) -> bool:
        """Whether our own lease may have lapsed since monotonic time `t`: others may then
        have taken us for dead and ended our runs."""


class LocalBus:
    """One process: every run is local, every other owner named in the store is gone."""

    shared = False

    def __init__(self, replica_id: str | None = None, lease_s: float = 30) -> None:
        self.replica_id = replica_id or new_replica_id()
        self.lease_s = lease_s
        self.beat_s = lease_s / 6

    async def open(self, store: RunStore, on_control: ControlHandler) -> None:
        return None

    async def close(self) -> None:
        return None

    def publish(self, run_id: str, log: RunLog) -> None:
        log.release(len(log.frames))

    async def publish_frames(self, run_id: str, first: int, frames: bytes) -> None:
        return None

    async def tail(self, run_id: str, after: int, store: RunStore) -> AsyncIterator[bytes]:
        raise Unavailable(f"run {run_id!r} is owned by no live process")
        yield b""  # pragma: no cover - makes this an async generator

    async def frames_after(self, run_id: str, after: int) -> list[EventRow]:
        return []

    async def request(self, replica: str, message: dict[str, Any]) -> dict[str, Any]:
        raise Unavailable(f"replica {replica!r} is not this process, and there is no bus")

    async def alive(self, replicas: set[str]) -> set[str]:
        return set()

    async def can_judge(self) -> bool:
        return True

    async def claim(self, run_id: str) -> bool:
        return True

    def lease_lapsed_since(self, t: float) -> bool:
        return False


def open_bus(url: str | None, *, replica_id: str | None = None, lease_s: float = 30) -> Bus:
    """Unset: the in-process bus. `redis://host:port/db[?prefix=name]`: the shared one."""
    if not url:
        return LocalBus(replica_id, lease_s)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_bus import RedisBus  # redis is only needed for this bus

        return RedisBus(url, replica_id=replica_id or new_replica_id(), lease_s=lease_s)
    raise ValueError(f"Unsupported LLM_DO_BUS_URL {url!r}: leave it unset, or use redis://...")
