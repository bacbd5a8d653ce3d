"""The corrections review queue: pending -> approved (indexed at once) | rejected.

An approved correction becomes a document of kind `correction` whose chunks are added to the
serving collection in the same step, titled with the question it corrects, so the same or a
reworded question retrieves it. A rejected one never reaches any index.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.corpus.chunking import Chunker, embedding_input
from rag_loop.db.engine import transaction
from rag_loop.db.models import AuditEntry, Chunk, Correction, Document, Interaction, utcnow
from rag_loop.errors import Conflict, InvalidInput, NotFound
from rag_loop.index.chroma import ChromaStore
from rag_loop.index.embedders import EmbedderPool
from rag_loop.index.versions import champion

STATUSES = ("pending", "approved", "rejected")


class CorrectionParts(Protocol):
    """What reviewing corrections uses."""

    sessions: sessionmaker[Session]
    store: ChromaStore
    embedders: EmbedderPool  # by version: the base and the loop's fine-tuned models
    chunker: Chunker


def correction_view(correction: Correction, interaction: Interaction | None) -> dict[str, Any]:
    return {
        "id": correction.id,
        "status": correction.status,
        "text": correction.text,
        "interaction_id": correction.interaction_id,
        "query": interaction.query if interaction else None,
        "answer": interaction.answer if interaction else None,
        "created_at": correction.created_at.isoformat(),
        "reviewer": correction.reviewer,
        "reviewed_at": correction.reviewed_at.isoformat() if correction.reviewed_at else None,
        "review_note": correction.review_note,
        "document_id": correction.document_id,
        "chunk_id": correction.chunk_id,
        "index_version_id": correction.index_version_id,
    }


def list_corrections(
    services: CorrectionParts, status: str | None = "pending", limit: int = 100
) -> list[dict[str, Any]]:
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit must be between 1 and 1000")
    with services.sessions() as session:
        query = select(Correction, Interaction).join(
            Interaction, Interaction.id == Correction.interaction_id
        )
        if status is not None:
            query = query.where(Correction.status == status)
        rows = session.execute(query.order_by(Correction.id).limit(limit)).all()
        return [correction_view(c, i) for c, i in rows]


def _pending(session: Session, correction_id: int) -> Correction:
    correction = session.get(Correction, correction_id, with_for_update=True)
    if correction is None:
        raise NotFound(f"no correction {correction_id}; `rag-loop corrections list` shows them")
    if correction.status != "pending":
        raise Conflict(
            f"correction {correction_id} was already {correction.status} by "
            f"{correction.reviewer} at {correction.reviewed_at}"
        )
    return correction


def approve(
    services: CorrectionParts, correction_id: int, *, reviewer: str, note: str | None = None
) -> dict[str, Any]:
    added_to: tuple[str, list[str]] | None = None
    try:
        with transaction(services.sessions) as session:
            correction = _pending(session, correction_id)
            interaction = session.get_one(Interaction, correction.interaction_id)
            index = champion(session)
            doc_id = f"correction-{correction.id}"
            title = f"Correction: {interaction.query}"[:1024]
            content_hash = hashlib.sha256(f"{title}\x00{correction.text}".encode()).hexdigest()
            document = Document(
                id=doc_id,
                kind="correction",
                source_root="corrections",
                source_path=f"interaction:{interaction.id}",
                title=title,
                text=correction.text,
                content_hash=content_hash,
                version=1,
            )
            specs = services.chunker.split(doc_id, 1, content_hash, correction.text)
            session.add(document)
            session.add_all(
                Chunk(
                    id=s.id,
                    document_id=doc_id,
                    document_version=1,
                    ordinal=s.ordinal,
                    text=s.text,
                    content_hash=s.content_hash,
                    chunking_hash=services.chunker.config_hash,
                )
                for s in specs
            )
            vectors = services.embedders.get(index.embedder_version).embed_documents(
                [embedding_input(title, s.text) for s in specs]
            )
            services.store.add(
                index.collection_name,
                [s.id for s in specs],
                vectors,
                [s.text for s in specs],
                [
                    {
                        "document_id": doc_id,
                        "document_version": 1,
                        "title": title,
                        "ordinal": s.ordinal,
                    }
                    for s in specs
                ],
            )
            added_to = (index.collection_name, [s.id for s in specs])
            index.n_chunks += len(specs)
            index.n_documents += 1
            index.revision += 1  # hybrid indexes rebuild their BM25 side in every process
            correction.status = "approved"
            correction.reviewer = reviewer
            correction.reviewed_at = utcnow()
            correction.review_note = note
            correction.document_id = doc_id
            correction.chunk_id = specs[0].id
            correction.index_version_id = index.id
            session.add(
                AuditEntry(
                    actor=reviewer,
                    action="correction.approve",
                    target=f"correction:{correction.id}",
                    details={
                        "interaction_id": interaction.id,
                        "document_id": doc_id,
                        "chunk_ids": [s.id for s in specs],
                        "index_version_id": index.id,
                        "note": note,
                    },
                )
            )
            view = correction_view(correction, interaction)
    except BaseException:
        if added_to is not None:  # the SQL side failed after Chroma took the chunks
            services.store.delete(*added_to)
        raise
    return view


def reject(
    services: CorrectionParts, correction_id: int, *, reviewer: str, note: str | None = None
) -> dict[str, Any]:
    with transaction(services.sessions) as session:
        correction = _pending(session, correction_id)
        correction.status = "rejected"
        correction.reviewer = reviewer
        correction.reviewed_at = utcnow()
        correction.review_note = note
        session.add(
            AuditEntry(
                actor=reviewer,
                action="correction.reject",
                target=f"correction:{correction.id}",
                details={"note": note},
            )
        )
        return correction_view(correction, session.get(Interaction, correction.interaction_id))
