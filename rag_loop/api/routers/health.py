from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from rag_loop.api.deps import ServicesDep
from rag_loop.api.errors import responses
from rag_loop.api.metrics import CONTENT_TYPE
from rag_loop.api.schemas import Health, Readiness
from rag_loop.services import Services

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    operation_id="healthz",
    response_model=Health,
    responses=responses(500),
    summary="200 while the process is up (liveness); readiness is /readyz",
)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a dependency is not ready"}},
    summary="200 when the database, Chroma and the serving index are reachable",
)
async def readyz(services: ServicesDep) -> Any:
    checks = await run_in_threadpool(readiness, services)
    ready = all(c["ok"] for c in checks.values())
    body = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def readiness(services: Services) -> dict[str, dict[str, Any]]:
    """Each dependency checked on its own, so a 503 says which one is missing."""
    from sqlalchemy import text

    from rag_loop.errors import BackendUnavailable, RagLoopError
    from rag_loop.index.versions import serving_index

    checks: dict[str, dict[str, Any]] = {}
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        services.store.client.heartbeat()
        checks["chroma"] = {"ok": True}
    except Exception as exc:
        checks["chroma"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        index = serving_index(services.engine)
        if services.store.count(index.collection_name) < 1:
            raise BackendUnavailable(f"the serving collection {index.collection_name} is empty")
        checks["serving_index"] = {"ok": True, "index_version": index.id}
    except Exception as exc:
        message = exc.message if isinstance(exc, RagLoopError) else f"{type(exc).__name__}: {exc}"
        checks["serving_index"] = {"ok": False, "error": message[:300]}
    try:
        # the registry follows SQL: a backlog delays MLflow, never serving (always ok)
        checks["registry_outbox"] = {"ok": True, **services.outbox.backlog()}
    except Exception as exc:
        checks["registry_outbox"] = {"ok": True, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return checks


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}, **responses(500)},
    summary="Prometheus metrics",
)
async def metrics(request: Request, services: ServicesDep) -> Response:
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)
