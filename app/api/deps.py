"""Shared objects reach routes through the lifespan state, typed here once.

The dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in
the thread pool, a thread hop per request for a dictionary lookup."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.runs import RunManager
from app.runtime import WorkerRegistry
from app.settings import Settings


async def _settings(request: Request) -> Settings:
    return request.state.settings


async def _runs(request: Request) -> RunManager:
    return request.state.runs


async def _registry(request: Request) -> WorkerRegistry:
    return request.state.runs.registry


SettingsDep = Annotated[Settings, Depends(_settings)]
RunsDep = Annotated[RunManager, Depends(_runs)]
RegistryDep = Annotated[WorkerRegistry, Depends(_registry)]
