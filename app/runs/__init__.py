"""The run manager: owns every run's task and event log, fans frames out to followers."""

from .log import RunLog
from .manager import RunHandle, RunManager
from .wire import encode

__all__ = ["RunHandle", "RunLog", "RunManager", "encode"]
