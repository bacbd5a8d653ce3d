"""Background jobs (admin only): index builds on demand, and following any job."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from rag_loop import jobs
from rag_loop.api.deps import AdminDep, ServicesDep
from rag_loop.api.errors import responses
from rag_loop.api.schemas import IndexBuildIn, JobOut
from rag_loop.inputs import Text

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post(
    "/index-versions",
    operation_id="build_index_version",
    response_model=JobOut,
    status_code=202,
    responses=responses(401, 403, 422, 503),
    summary="Ingest a path into a new index version, as a job (poll GET /v1/jobs/{id})",
)
async def build_route(body: IndexBuildIn, services: ServicesDep, principal: AdminDep) -> JobOut:
    actor = f"key:{principal.key_id}"

    def start() -> JobOut:
        job_id = jobs.submit(services, "index_build", {"path": body.path}, actor=actor)
        return JobOut.model_validate(jobs.get(services, job_id))

    return await run_in_threadpool(start)


@router.get(
    "/jobs",
    operation_id="list_jobs",
    response_model=list[JobOut],
    responses=responses(401, 403, 422),
)
def list_route(
    services: ServicesDep,
    principal: AdminDep,
    limit: int = Query(default=50, ge=1, le=1000),
    status: Literal["queued", "running", "done", "failed"] | None = Query(default=None),
) -> list[JobOut]:
    return [JobOut.model_validate(j) for j in jobs.list_jobs(services, limit, status)]


@router.get(
    "/jobs/{job_id}",
    operation_id="get_job",
    response_model=JobOut,
    responses=responses(401, 403, 404, 422),
)
def get_route(
    services: ServicesDep, principal: AdminDep, job_id: Text = Path(max_length=32)
) -> JobOut:
    return JobOut.model_validate(jobs.get(services, job_id))
