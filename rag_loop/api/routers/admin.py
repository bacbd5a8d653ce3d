"""Admin and review routes: the corrections queue and amendments (`review` scope),
interactions and index versions (`admin`)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Body, Path, Query

from rag_loop.api.deps import AdminDep, ReviewDep, ServicesDep
from rag_loop.api.errors import responses
from rag_loop.api.schemas import (
    AmendIn,
    AmendmentOut,
    ApproveIn,
    CorrectionDetailOut,
    CorrectionOut,
    IndexVersionOut,
    InteractionOut,
    ReapplyIn,
    ReviewIn,
)
from rag_loop.feedback import corrections
from rag_loop.feedback.lineage import show
from rag_loop.index.versions import describe_versions
from rag_loop.inputs import MAX_ROW_ID, Text

router = APIRouter(prefix="/v1", tags=["admin"])


@router.get(
    "/corrections",
    operation_id="list_corrections",
    response_model=list[CorrectionOut],
    responses=responses(401, 403, 422),
)
def list_corrections_route(
    services: ServicesDep,
    principal: ReviewDep,
    status: Literal["pending", "approved", "rejected", "disputed"] | None = Query(
        default="pending"
    ),
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[CorrectionOut]:
    rows = corrections.list_corrections(services, status, limit)
    return [CorrectionOut.model_validate(r) for r in rows]


@router.get(
    "/corrections/{correction_id}",
    operation_id="get_correction",
    response_model=CorrectionDetailOut,
    responses=responses(401, 403, 404, 422),
    summary="A correction with the chunks its answer was given and the proposed amendment",
)
def get_correction_route(
    services: ServicesDep,
    principal: ReviewDep,
    correction_id: int = Path(ge=1, le=MAX_ROW_ID),
) -> CorrectionDetailOut:
    return CorrectionDetailOut.model_validate(corrections.get_correction(services, correction_id))


@router.post(
    "/corrections/{correction_id}/approve",
    operation_id="approve_correction",
    response_model=CorrectionOut,
    responses=responses(401, 403, 404, 409, 422, 503),
    summary="Approve a correction: with enough approvals it serves at once, added or as an "
    "amendment of a passage",
)
def approve_route(
    services: ServicesDep,
    principal: ReviewDep,
    correction_id: int = Path(ge=1, le=MAX_ROW_ID),
    body: ApproveIn | AmendIn = Body(default_factory=ApproveIn),
) -> CorrectionOut:
    amend = body if isinstance(body, AmendIn) else None
    view = corrections.approve(
        services,
        correction_id,
        reviewer=principal.actor,
        note=body.note,
        mode=body.mode,
        chunk_id=amend.chunk_id if amend else None,
        text=amend.text if amend else None,
        admin=principal.admin,
    )
    return CorrectionOut.model_validate(view)


@router.post(
    "/corrections/{correction_id}/reject",
    operation_id="reject_correction",
    response_model=CorrectionOut,
    responses=responses(401, 403, 404, 409, 422, 503),
    summary="Reject a correction (after an approval: dispute it; an admin settles a dispute)",
)
def reject_route(
    services: ServicesDep,
    principal: ReviewDep,
    correction_id: int = Path(ge=1, le=MAX_ROW_ID),
    body: ReviewIn = Body(default_factory=ReviewIn),
) -> CorrectionOut:
    view = corrections.reject(
        services, correction_id, reviewer=principal.actor, note=body.note, admin=principal.admin
    )
    return CorrectionOut.model_validate(view)


@router.get(
    "/amendments",
    operation_id="list_amendments",
    response_model=list[AmendmentOut],
    responses=responses(401, 403, 422),
    summary="Passages replaced by approved corrections; `flagged`: the source changed under one",
)
def list_amendments_route(
    services: ServicesDep,
    principal: ReviewDep,
    status: Literal["active", "flagged", "reverted", "replaced"] | None = Query(default=None),
) -> list[AmendmentOut]:
    return [
        AmendmentOut.model_validate(a) for a in corrections.list_amendment_views(services, status)
    ]


@router.post(
    "/amendments/{amendment_id}/revert",
    operation_id="revert_amendment",
    response_model=AmendmentOut,
    responses=responses(401, 403, 404, 409, 422, 503),
    summary="Serve the passage's own text again (or dismiss a flagged amendment)",
)
def revert_amendment_route(
    services: ServicesDep,
    principal: ReviewDep,
    amendment_id: int = Path(ge=1, le=MAX_ROW_ID),
    body: ReviewIn = Body(default_factory=ReviewIn),
) -> AmendmentOut:
    view = corrections.revert_amendment(
        services, amendment_id, actor=principal.actor, note=body.note
    )
    return AmendmentOut.model_validate(view)


@router.post(
    "/amendments/{amendment_id}/reapply",
    operation_id="reapply_amendment",
    response_model=AmendmentOut,
    responses=responses(401, 403, 404, 409, 422, 503),
    summary="Apply a flagged amendment to the passage that serves now",
)
def reapply_amendment_route(
    services: ServicesDep,
    principal: ReviewDep,
    body: ReapplyIn,
    amendment_id: int = Path(ge=1, le=MAX_ROW_ID),
) -> AmendmentOut:
    view = corrections.reapply_amendment(
        services, amendment_id, chunk_id=body.chunk_id, text=body.text, actor=principal.actor
    )
    return AmendmentOut.model_validate(view)


@router.get(
    "/interactions/{interaction_id}",
    operation_id="get_interaction",
    response_model=InteractionOut,
    responses=responses(401, 403, 404, 422),
    summary="Everything needed to reconstruct an answer: chunks, versions, feedback",
)
def interaction_route(
    services: ServicesDep, principal: AdminDep, interaction_id: Text = Path(max_length=36)
) -> InteractionOut:
    return InteractionOut.model_validate(show(services.sessions, interaction_id))


@router.get(
    "/index-versions",
    operation_id="list_index_versions",
    response_model=list[IndexVersionOut],
    responses=responses(401, 403),
)
def index_versions_route(services: ServicesDep, principal: AdminDep) -> list[IndexVersionOut]:
    with services.sessions() as session:
        return [IndexVersionOut(**row) for row in describe_versions(session)]
