"""The training loop over HTTP (admin only): start, follow, approve, reject, roll back,
and walk from an answer to what made its retriever."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from rag_loop import jobs
from rag_loop.api.deps import AdminDep, ServicesDep
from rag_loop.api.errors import responses
from rag_loop.api.schemas import (
    DecisionIn,
    DiscardIn,
    LoopCycleOut,
    OutboxEntryOut,
    OutboxFlushOut,
    OutboxOut,
    RollbackIn,
)
from rag_loop.inputs import MAX_ROW_ID, Text
from rag_loop.loop import cycle
from rag_loop.loop.audit import trace
from rag_loop.loop.states import Action, check_action

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["loop"])

CyclePath = Path(ge=1, le=MAX_ROW_ID, description="The loop cycle id.")


@router.post(
    "/loop/cycles",
    operation_id="start_loop_cycle",
    response_model=LoopCycleOut,
    status_code=202,
    responses=responses(401, 403, 409, 503),
    summary="Start a loop cycle; it runs in the background (poll GET /v1/loop/cycles/{id})",
)
async def start_route(services: ServicesDep, principal: AdminDep) -> LoopCycleOut:
    actor = principal.actor

    def start() -> int:
        cycle_id = cycle.start_cycle(services, trigger="api", actor=actor)
        jobs.submit(services, "loop_cycle", {"cycle_id": cycle_id}, actor=actor)
        return cycle_id

    cycle_id = await run_in_threadpool(start)
    return LoopCycleOut.model_validate(
        await run_in_threadpool(cycle.cycle_view, services, cycle_id)
    )


@router.get(
    "/loop/cycles",
    operation_id="list_loop_cycles",
    response_model=list[LoopCycleOut],
    responses=responses(401, 403, 422),
)
def list_route(
    services: ServicesDep, principal: AdminDep, limit: int = Query(default=20, ge=1, le=1000)
) -> list[LoopCycleOut]:
    return [LoopCycleOut.model_validate(c) for c in cycle.list_cycles(services, limit)]


@router.get(
    "/loop/cycles/{cycle_id}",
    operation_id="get_loop_cycle",
    response_model=LoopCycleOut,
    responses=responses(401, 403, 404, 422),
)
def get_route(
    services: ServicesDep, principal: AdminDep, cycle_id: int = CyclePath
) -> LoopCycleOut:
    return LoopCycleOut.model_validate(cycle.cycle_view(services, cycle_id))


@router.post(
    "/loop/cycles/{cycle_id}/resume",
    operation_id="resume_loop_cycle",
    response_model=LoopCycleOut,
    status_code=202,
    responses=responses(401, 403, 404, 409, 422),
    summary="Go on with a failed or cut-off cycle from its step, in the background",
)
async def resume_route(
    services: ServicesDep,
    principal: AdminDep,
    cycle_id: int = CyclePath,
) -> LoopCycleOut:
    view = await run_in_threadpool(cycle.cycle_view, services, cycle_id)
    check_action(Action.RESUME, cycle_id, view["state"])
    payload = {"cycle_id": cycle_id, "resume": True}
    await run_in_threadpool(jobs.submit, services, "loop_cycle", payload, actor=principal.actor)
    return LoopCycleOut.model_validate(view)


@router.post(
    "/loop/cycles/{cycle_id}/approve",
    operation_id="approve_loop_cycle",
    response_model=LoopCycleOut,
    responses=responses(401, 403, 404, 409, 422),
    summary="Promote a cycle awaiting approval",
)
def approve_route(
    services: ServicesDep, principal: AdminDep, cycle_id: int = CyclePath
) -> LoopCycleOut:
    view = cycle.approve(services, cycle_id, actor=principal.actor)
    return LoopCycleOut.model_validate(view)


@router.post(
    "/loop/cycles/{cycle_id}/reject",
    operation_id="reject_loop_cycle",
    response_model=LoopCycleOut,
    responses=responses(400, 401, 403, 404, 409, 422),
)
def reject_route(
    body: DecisionIn, services: ServicesDep, principal: AdminDep, cycle_id: int = CyclePath
) -> LoopCycleOut:
    view = cycle.reject(services, cycle_id, actor=principal.actor, reason=body.reason)
    return LoopCycleOut.model_validate(view)


@router.post(
    "/loop/rollback",
    operation_id="rollback_loop",
    response_model=LoopCycleOut,
    responses=responses(400, 401, 403, 404, 409, 422),
    summary="Serve the index from before the latest (or a given) promotion again, at once",
)
def rollback_route(body: RollbackIn, services: ServicesDep, principal: AdminDep) -> LoopCycleOut:
    view = cycle.rollback(services, actor=principal.actor, reason=body.reason, cycle_id=body.cycle)
    return LoopCycleOut.model_validate(view)


@router.get(
    "/interactions/{interaction_id}/trace",
    operation_id="trace_interaction",
    responses=responses(401, 403, 404, 422),
    summary="The audit walk: answer -> index -> embedder -> training set -> feedback -> the "
    "cycle and evaluations that promoted it",
)
def trace_route(
    services: ServicesDep,
    principal: AdminDep,
    interaction_id: Text = Path(min_length=1, max_length=36),
) -> dict[str, Any]:
    return trace(services.sessions, interaction_id)


@router.get(
    "/outbox",
    operation_id="list_outbox",
    response_model=OutboxOut,
    responses=responses(401, 403, 422),
    summary="The registry's backlog: MLflow runs, aliases and collection drops that follow "
    "SQL changes, applied after commit with retries",
)
def outbox_route(
    services: ServicesDep,
    principal: AdminDep,
    status: Literal["pending", "done", "all"] = Query(default="pending"),
    limit: int = Query(default=50, ge=1, le=1000),
) -> OutboxOut:
    return OutboxOut.model_validate(
        {
            "backlog": services.outbox.backlog(),
            "entries": services.outbox.entries(status=status, limit=limit),
        }
    )


@router.post(
    "/outbox/flush",
    operation_id="flush_outbox",
    response_model=OutboxFlushOut,
    responses=responses(401, 403),
    summary="Apply every pending outbox entry now, whatever its backoff says",
)
def outbox_flush_route(services: ServicesDep, principal: AdminDep) -> OutboxFlushOut:
    return OutboxFlushOut.model_validate(services.outbox.flush(now_too=True).as_dict())


@router.post(
    "/outbox/{entry_id}/discard",
    operation_id="discard_outbox_entry",
    response_model=OutboxEntryOut,
    responses=responses(401, 403, 404, 409, 422),
    summary="Give up on a pending outbox entry that can never be applied: marked done "
    "without its effect, with the reason in the audit log (SQL is untouched)",
)
def outbox_discard_route(
    body: DiscardIn,
    services: ServicesDep,
    principal: AdminDep,
    entry_id: int = Path(ge=1, le=MAX_ROW_ID, description="The outbox entry id."),
) -> OutboxEntryOut:
    return OutboxEntryOut.model_validate(
        services.outbox.discard(entry_id, actor=principal.actor, reason=body.reason)
    )


@router.post(
    "/index-versions/{version_id}/serve",
    operation_id="serve_index_version",
    responses=responses(400, 401, 403, 404, 409, 422, 503),
    summary="Serve a ready index version now (the way back to a serving state from anywhere); "
    "what served becomes the rollback target",
)
def serve_route(
    body: DecisionIn,
    services: ServicesDep,
    principal: AdminDep,
    version_id: int = Path(ge=1, le=MAX_ROW_ID, description="The index version id."),
) -> dict[str, Any]:
    return cycle.serve_version(
        services, version_id, actor=principal.actor, reason=body.reason or "manual"
    )
