"""Background jobs (admin only): index builds on demand, and following any job."""

from __future__ import annotations

import os
from pathlib import PurePath

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from rag_loop import jobs
from rag_loop.api.deps import AdminDep, ServicesDep
from rag_loop.api.errors import responses
from rag_loop.api.schemas import IndexBuildIn, JobOut
from rag_loop.errors import Forbidden
from rag_loop.inputs import Text
from rag_loop.settings import Settings

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post(
    "/index-versions",
    operation_id="build_index_version",
    response_model=JobOut,
    status_code=202,
    responses=responses(401, 403, 422, 503),
    summary="Ingest a path into a new index version, as a job (poll GET /v1/jobs/{id})",
)
async def build_route(
    body: IndexBuildIn, services: ServicesDep, principal: AdminDep, response: Response
) -> JobOut:
    """The path must lie under one of `api.ingest_roots` (403 otherwise). Whether it exists
    is for the job to find out: with a task queue it is read on a worker's machine."""
    actor = principal.actor
    path = allowed_ingest_path(services.settings, body.path)

    def start() -> JobOut:
        job_id = jobs.submit(services, "index_build", {"path": str(path)}, actor=actor)
        return JobOut.model_validate(jobs.get(services, job_id))

    job = await run_in_threadpool(start)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


def allowed_ingest_path(settings: Settings, raw: str) -> PurePath:
    """`raw` made absolute and normalised (no `..` left), if it lies under an ingest root."""
    roots = settings.api.ingest_roots or ([settings.corpus_path] if settings.corpus_path else [])
    path = PurePath(os.path.normpath(os.path.abspath(raw)))
    for root in roots:
        if path.is_relative_to(os.path.normpath(os.path.abspath(root))):
            return path
    allowed = ", ".join(str(r) for r in roots) or "nothing (no corpus folder is set)"
    raise Forbidden(
        f"index builds over the API may only read under {allowed}; "
        "RAG_LOOP_API_INGEST_ROOTS lists the folders allowed"
    )


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
    status: jobs.Status | None = Query(default=None),
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
