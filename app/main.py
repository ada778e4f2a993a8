"""create_app(settings): the FastAPI application. The lifespan builds the shared objects."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import errors
from app.api.routes import approvals, health, runs, workers
from app.runs import RunManager
from app.runtime import ModelResolver, RuntimeConfig, WorkerRegistry
from app.settings import Settings

log = logging.getLogger("llm_do")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        registry = WorkerRegistry(settings.workers_dir)
        manager = RunManager(
            registry,
            config=RuntimeConfig(
                default_model=settings.default_model, max_depth=settings.max_depth
            ),
            models=ModelResolver(),
        )
        log.info(
            "llm-do: workers from %s, default model %r%s",
            registry.workers_dir,
            settings.default_model,
            "" if settings.model else " (offline; set LLM_DO_MODEL for a real provider)",
        )
        try:
            yield {"settings": settings, "runs": manager}
        finally:
            await manager.shutdown()

    app = FastAPI(
        title="llm-do service",
        summary="LLM workers as HTTP endpoints, streamed over Server-Sent Events",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(workers.router)
    app.include_router(runs.router)
    app.include_router(approvals.router)
    return app
