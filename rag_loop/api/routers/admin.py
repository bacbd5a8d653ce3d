"""Admin routes: the corrections queue, interactions and index versions."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Body, Path, Query

from rag_loop.api.deps import AdminDep, ServicesDep
from rag_loop.api.errors import responses
from rag_loop.api.schemas import CorrectionOut, IndexVersionOut, InteractionOut, ReviewIn
from rag_loop.feedback import corrections
from rag_loop.feedback.lineage import show
from rag_loop.index.versions import list_versions
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
    principal: AdminDep,
    status: Literal["pending", "approved", "rejected"] | None = Query(default="pending"),
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[CorrectionOut]:
    rows = corrections.list_corrections(services, status, limit)
    return [CorrectionOut.model_validate(r) for r in rows]


@router.post(
    "/corrections/{correction_id}/approve",
    operation_id="approve_correction",
    response_model=CorrectionOut,
    responses=responses(401, 403, 404, 409, 422, 503),
    summary="Approve a correction: it is indexed into the serving index at once",
)
def approve_route(
    services: ServicesDep,
    principal: AdminDep,
    correction_id: int = Path(ge=1, le=MAX_ROW_ID),
    body: ReviewIn = Body(default_factory=ReviewIn),
) -> CorrectionOut:
    view = corrections.approve(
        services, correction_id, reviewer=f"key:{principal.key_id}", note=body.note
    )
    return CorrectionOut.model_validate(view)


@router.post(
    "/corrections/{correction_id}/reject",
    operation_id="reject_correction",
    response_model=CorrectionOut,
    responses=responses(401, 403, 404, 409, 422),
)
def reject_route(
    services: ServicesDep,
    principal: AdminDep,
    correction_id: int = Path(ge=1, le=MAX_ROW_ID),
    body: ReviewIn = Body(default_factory=ReviewIn),
) -> CorrectionOut:
    view = corrections.reject(
        services, correction_id, reviewer=f"key:{principal.key_id}", note=body.note
    )
    return CorrectionOut.model_validate(view)


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
        return [
            IndexVersionOut(
                id=v.id,
                collection=v.collection_name,
                status=v.status,
                aliases=aliases,
                embedder_version=v.embedder_version,
                chunk_size=v.chunk_size,
                chunk_overlap=v.chunk_overlap,
                corpus_hash=v.corpus_hash,
                n_documents=v.n_documents,
                n_chunks=v.n_chunks,
                mlflow_run_id=v.mlflow_run_id,
                created_at=v.created_at.isoformat(),
                reason=v.reason,
            )
            for v, aliases in list_versions(session)
        ]
