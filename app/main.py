"""create_app(settings): the FastAPI application. The lifespan builds the shared objects."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api import errors
from app.api.routes import approvals, auth, health, runs, web, workers
from app.api.security import Guard
from app.runs import RunManager, RunStore, open_store
from app.runs.bus import open_bus
from app.runtime import ModelResolver, RuntimeConfig, WorkerRegistry
from app.settings import Settings

log = logging.getLogger("llm_do")


async def _retention(store: RunStore, settings: Settings) -> None:
    """Prune ended runs now and then every hour, per the retention settings."""
    max_age = settings.retention_days * 86400 if settings.retention_days else None
    while True:
        try:
            removed = await store.prune(max_age_s=max_age, max_runs=settings.retention_runs)
            if removed:
                log.info("retention: deleted %d ended run(s)", removed)
        except Exception:
            log.exception("retention pass failed")
        await asyncio.sleep(3600)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        registry = WorkerRegistry(settings.workers_dir)
        store = open_store(settings.resolved_store_url)
        await store.open()
        bus = open_bus(settings.bus_url, replica_id=settings.replica_id, lease_s=settings.lease_s)
        manager = RunManager(
            registry,
            store=store,
            bus=bus,
            config=RuntimeConfig(
                default_model=settings.default_model,
                max_depth=settings.max_depth,
                approval_timeout_s=settings.approval_timeout_s,
                stall_timeout_s=settings.stall_timeout_s,
            ),
            models=ModelResolver(),
            default_approval=settings.approval,
            max_runs=settings.max_runs,
            grace_s=settings.shutdown_grace_s,
        )
        log.info(
            "llm-do: workers from %s, default model %r%s",
            registry.workers_dir,
            settings.default_model,
            "" if settings.model else " (offline; set LLM_DO_MODEL for a real provider)",
        )
        await bus.open(store, manager.on_control)
        await manager.recover()
        app.state.runs = manager  # for the server's signal handler (see cli.serve)
        tasks = [asyncio.create_task(_retention(store, settings), name="llm-do-retention")]
        if bus.shared:
            tasks.append(asyncio.create_task(manager.watch_leases(), name="llm-do-leases"))
        try:
            yield {"settings": settings, "runs": manager}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await manager.shutdown()
            await bus.close()
            await store.close()

    app = FastAPI(
        title="llm-do service",
        summary="LLM workers as HTTP endpoints, streamed over Server-Sent Events",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    if settings.extra_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=sorted(settings.extra_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["X-Run-Id", "Content-Location"],
        )
    app.add_middleware(Guard, settings=settings)
    app.include_router(health.router)
    app.include_router(workers.router)
    app.include_router(runs.router)
    app.include_router(approvals.router)
    app.include_router(auth.router)
    app.include_router(web.router)
    app.mount("/static", web.static_files(), name="static")
    return app
