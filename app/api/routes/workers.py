"""GET /workers and GET /workers/{name}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import RegistryDep
from app.runtime import InvalidWorker, Worker

router = APIRouter(tags=["workers"])


def describe(worker: Worker) -> dict[str, Any]:
    spec = worker.spec
    tools = [t.__name__ for t in worker.tools]
    if spec.allow_workers:
        tools.append("worker_call")
    return {
        "name": spec.name,
        "description": spec.description,
        "model": spec.model,
        "input_schema": spec.input_schema,
        "output_schema": spec.output_schema,
        "tools": tools,
        "allow_workers": spec.allow_workers,
    }


@router.get("/workers")
async def list_workers(registry: RegistryDep) -> dict[str, list[dict[str, Any]]]:
    """Every worker on disk; an invalid one is listed with its `error` instead of its fields."""
    out = []
    for name in registry.names():
        try:
            out.append(describe(registry.get(name)))
        except InvalidWorker as exc:
            out.append({"name": name, "error": {**exc.as_dict(), "path": exc.path}})
    return {"workers": out}


@router.get("/workers/{name}")
async def get_worker(name: str, registry: RegistryDep) -> dict[str, Any]:
    """One worker, with its instructions as written and as rendered."""
    worker = registry.get(name)
    return {
        **describe(worker),
        "instructions": worker.instructions,
        "source": worker.source,
        "path": str(worker.path.relative_to(registry.workers_dir.parent)),
    }
