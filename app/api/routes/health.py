from fastapi import APIRouter, Request

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, str]:
    """Liveness: the process answers HTTP. `replica` names the process that answered."""
    return {"status": "ok", "replica": request.app.state.runs.replica_id}
