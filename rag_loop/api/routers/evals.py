"""Evaluation runs, drift checks, events and the report (admin only: they show users'
questions)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import HTMLResponse, JSONResponse

from rag_loop import jobs
from rag_loop.api.deps import AdminDep, ServicesDep
from rag_loop.api.errors import responses
from rag_loop.api.schemas import (
    DriftOut,
    EvalIn,
    EvalRunOut,
    EventOut,
    JobOut,
    VersionComparisonOut,
)
from rag_loop.evaluation import service
from rag_loop.evaluation.report import REPORT_CYCLES
from rag_loop.inputs import MAX_ROW_ID, Text
from rag_loop.loop.cycle import list_cycles

router = APIRouter(prefix="/v1", tags=["evaluation"])


@router.post(
    "/evals",
    operation_id="run_evaluation",
    response_model=JobOut,
    status_code=202,
    responses=responses(400, 401, 403, 404, 422, 503),
    summary="Queue an evaluation: 202 with the job; GET /v1/jobs/{id} has its eval_run_id",
)
def run_eval_route(
    body: EvalIn, services: ServicesDep, principal: AdminDep, response: Response
) -> JobOut:
    """An evaluation takes longer than a request should (tens of seconds for a golden set,
    minutes with a judge): it runs as a job, on a worker with a task queue or on a thread of
    this process without one. What can be refused at once is refused here (404 for an
    unknown golden set or index version)."""
    service.check_request(services, golden_set=body.golden_set, index_version=body.index_version)
    arguments = {
        "source": body.source,
        "golden_set": body.golden_set,
        "window": body.window,
        "index_version": body.index_version,
        "use_judge": body.judge,
        "limit": body.limit,
        "trigger": "api",
    }
    job_id = jobs.submit(services, "evaluation", arguments, actor=principal.actor)
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return JobOut.model_validate(jobs.get(services, job_id))


@router.get(
    "/evals",
    operation_id="list_evaluations",
    response_model=list[EvalRunOut],
    responses=responses(401, 403, 422),
)
def list_evals_route(
    services: ServicesDep,
    principal: AdminDep,
    limit: int = Query(default=50, ge=1, le=1000),
    dataset: Text | None = Query(default=None, max_length=256),
) -> list[EvalRunOut]:
    return [EvalRunOut.model_validate(r) for r in service.list_runs(services, limit, dataset)]


@router.get(
    "/evals/compare",
    operation_id="compare_evaluations",
    response_model=list[VersionComparisonOut],
    responses=responses(401, 403, 422),
    summary="The latest finished run per dataset and index version, side by side",
)
def compare_route(
    services: ServicesDep,
    principal: AdminDep,
    dataset: Text | None = Query(default=None, max_length=256),
) -> list[VersionComparisonOut]:
    return [VersionComparisonOut.model_validate(r) for r in service.compare(services, dataset)]


@router.get(
    "/evals/{run_id}",
    operation_id="get_evaluation",
    response_model=EvalRunOut,
    responses=responses(401, 403, 404, 422),
    summary="One evaluation run with its per-sample scores and failures",
)
def get_eval_route(
    services: ServicesDep, principal: AdminDep, run_id: Text = Path(max_length=32)
) -> EvalRunOut:
    return EvalRunOut.model_validate(service.get(services, run_id))


@router.post(
    "/drift",
    operation_id="check_drift",
    response_model=DriftOut,
    responses=responses(401, 403),
    summary="Run the data and concept drift checks now; a drift raises a `drift` event",
)
def drift_route(services: ServicesDep, principal: AdminDep) -> DriftOut:
    return DriftOut.model_validate(service.drift(services, actor=principal.actor))


@router.get(
    "/events",
    operation_id="list_events",
    response_model=list[EventOut],
    responses=responses(401, 403, 422),
    summary="Events after an id, oldest first (the training loop subscribes to `drift`)",
)
def events_route(
    services: ServicesDep,
    principal: AdminDep,
    kind: Text = Query(default="drift", max_length=32),
    after: int = Query(default=0, ge=0, le=MAX_ROW_ID),
) -> list[EventOut]:
    return [EventOut.model_validate(e) for e in service.events(services, kind, after)]


@router.get(
    "/reports/latest",
    operation_id="latest_report",
    responses={
        200: {
            "description": "The report: HTML (default) or the JSON summary",
            "content": {"text/html": {}, "application/json": {}},
        },
        **responses(401, 403, 422),
    },
    response_model=None,
    summary="The evaluation report as of now: trends, versions, drift, worst interactions",
)
def report_route(
    services: ServicesDep,
    principal: AdminDep,
    format: Literal["html", "json"] = Query(default="html"),
) -> HTMLResponse | JSONResponse:
    summary = service.summary(services, list_cycles(services, REPORT_CYCLES))
    if format == "json":
        return JSONResponse(summary)
    return HTMLResponse(service.html(summary))
