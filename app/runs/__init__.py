"""The run manager: owns every run's task, record and event log; stores and fans out events."""

from .log import RunLog
from .manager import RunHandle, RunManager
from .memory import MemoryRunStore
from .records import RunRecord, RunStatus
from .sqlite import SqliteRunStore
from .store import RunStore
from .wire import encode, frame

__all__ = [
    "MemoryRunStore",
    "RunHandle",
    "RunLog",
    "RunManager",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "SqliteRunStore",
    "encode",
    "frame",
    "open_store",
]


def open_store(url: str) -> RunStore:
    """`sqlite:///path/to/file.sqlite3`, `postgresql://user@host/db[?schema=name]` or
    `memory://`."""
    if url.startswith("memory:"):
        return MemoryRunStore()
    if url.startswith("sqlite:///"):
        return SqliteRunStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresRunStore  # asyncpg is only needed for this store

        return PostgresRunStore(url)
    raise ValueError(
        f"Unsupported LLM_DO_STORE_URL {url!r}: use sqlite:///PATH, postgresql://... or memory://"
    )
