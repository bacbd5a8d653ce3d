from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from rag_loop.api.deps import ServicesDep
from rag_loop.api.errors import responses
from rag_loop.api.schemas import Health
from rag_loop.index.versions import serving_index

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    operation_id="healthz",
    response_model=Health,
    responses=responses(503),
    summary="200 once the service can answer: database reachable and a serving index exists",
)
async def healthz(services: ServicesDep) -> Health:
    index = await run_in_threadpool(serving_index, services.engine)  # NoServingIndex -> 503
    return Health(status="ok", index_version=index.id)
