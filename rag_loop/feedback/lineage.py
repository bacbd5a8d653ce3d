"""Explain an answer: query, chunks as served, every version involved, and all feedback."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.db.models import (
    Correction,
    FeedbackEvent,
    FeedbackSubmission,
    IndexVersion,
    Interaction,
)
from rag_loop.errors import InvalidInput, NotFound
from rag_loop.feedback.corrections import correction_view
from rag_loop.feedback.labels import fold, fold_by_interaction
from rag_loop.index.retrieval_config import RetrievalConfig


def event_view(event: FeedbackEvent) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": event.id,
        "kind": event.kind,
        "created_at": event.created_at.isoformat(),
    }
    for field in ("thumb", "chunk_id", "relevant", "document_id", "text"):
        value = getattr(event, field)
        if value is not None:
            view[field] = value
    return view


def effective_labels(events: list[FeedbackEvent]) -> dict[str, Any]:
    """The latest thumb and the latest label per chunk win (`feedback.labels.fold`); the
    history stays in `feedback`."""
    ordered: list[FeedbackEvent] = sorted(events, key=lambda e: e.id)
    return fold(ordered).as_dict()


def show(sessions: sessionmaker[Session], interaction_id: str) -> dict[str, Any]:
    with sessions() as session:
        interaction = session.get(Interaction, interaction_id)
        if interaction is None:
            raise NotFound(f"no interaction {interaction_id!r}")
        index = (
            session.get(IndexVersion, interaction.index_version_id)
            if interaction.index_version_id
            else None
        )
        submissions = list(
            session.scalars(
                select(FeedbackSubmission)
                .where(FeedbackSubmission.interaction_id == interaction_id)
                .order_by(FeedbackSubmission.created_at)
            )
        )
        events = [e for s in submissions for e in s.events]
        corrections = session.scalars(
            select(Correction).where(Correction.interaction_id == interaction_id)
        )
        return {
            "interaction_id": interaction.id,
            "created_at": interaction.created_at.isoformat(),
            "query": interaction.query,
            "answer": interaction.answer,
            "status": interaction.status,
            "error": interaction.error,
            "failed_stage": interaction.failed_stage,
            "cited_ranks": interaction.cited_ranks,
            "top_k": interaction.top_k,
            "latency_ms": interaction.latency_ms,
            "client": interaction.client,
            "api_key_id": interaction.api_key_id,
            "versions": {
                "index_version": interaction.index_version_id,
                "collection": interaction.collection_name,
                "embedder_version": interaction.embedder_version,
                "prompt_version": interaction.prompt_version,
                "generator": interaction.generator,
                "retrieval": RetrievalConfig.stored(index.retrieval).mode if index else "dense",
            },
            "index_version": None
            if index is None
            else {
                "id": index.id,
                "collection": index.collection_name,
                "embedder": index.embedder,
                "embedder_version": index.embedder_version,
                "chunk_size": index.chunk_size,
                "chunk_overlap": index.chunk_overlap,
                "chunking_hash": index.chunking_hash,
                "corpus_hash": index.corpus_hash,
                "mlflow_run_id": index.mlflow_run_id,
                "retrieval": index.retrieval or {"mode": "dense"},
                "revision": index.revision,
                "created_at": index.created_at.isoformat(),
            },
            "sources": [
                {
                    "rank": r.rank,
                    "chunk_id": r.chunk_id,
                    "document_id": r.document_id,
                    "title": r.title,
                    "score": r.score,
                    "text": r.text,
                }
                for r in interaction.retrievals
            ],
            "feedback": [
                {
                    "submission_id": s.id,
                    "actor": s.actor,
                    "idempotency_key": s.idempotency_key,
                    "created_at": s.created_at.isoformat(),
                    "events": [event_view(e) for e in s.events],
                }
                for s in submissions
            ],
            "labels": effective_labels(events),
            "corrections": [correction_view(c, interaction) for c in corrections],
        }


def search(
    sessions: sessionmaker[Session],
    *,
    text: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    thumb: str | None = None,
    index_version: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Interactions, newest first, by words of the question or answer, date, the latest
    thumb (`feedback.labels.fold`: "none" for answers without one) and index version."""
    if thumb not in (None, "up", "down", "none"):
        raise InvalidInput("thumb must be up, down or none")
    if not 1 <= limit <= 500:
        raise InvalidInput("limit must be between 1 and 500")
    query = select(Interaction).order_by(Interaction.created_at.desc())
    if text:
        words = text.strip()
        query = query.where(
            Interaction.query.icontains(words, autoescape=True)
            | Interaction.answer.icontains(words, autoescape=True)
        )
    if since is not None:
        query = query.where(Interaction.created_at >= since)
    if until is not None:
        query = query.where(Interaction.created_at < until)
    if index_version is not None:
        query = query.where(Interaction.index_version_id == index_version)
    if thumb in ("up", "down"):  # a thumb of that kind was given; the fold below decides
        query = query.where(
            select(FeedbackEvent.id)
            .where(
                FeedbackEvent.interaction_id == Interaction.id,
                FeedbackEvent.kind == "thumb",
                FeedbackEvent.thumb == thumb,
            )
            .exists()
        )
    found: list[dict[str, Any]] = []
    offset = 0
    with sessions() as session:
        while len(found) < limit:
            page = list(session.scalars(query.offset(offset).limit(limit * 2)))
            if not page:
                break
            offset += len(page)
            events = session.execute(
                select(
                    FeedbackEvent.interaction_id,
                    FeedbackEvent.kind,
                    FeedbackEvent.thumb,
                    FeedbackEvent.chunk_id,
                    FeedbackEvent.relevant,
                    FeedbackEvent.document_id,
                )
                .where(FeedbackEvent.interaction_id.in_([i.id for i in page]))
                .order_by(FeedbackEvent.id)
            ).all()
            labels = fold_by_interaction(events)
            counts = Counter(e.interaction_id for e in events)
            for interaction in page:
                folded = labels.get(interaction.id)
                latest = folded.thumb if folded else None
                if thumb is not None and (latest or "none") != thumb:
                    continue
                found.append(
                    {
                        "interaction_id": interaction.id,
                        "created_at": interaction.created_at.isoformat(),
                        "query": interaction.query,
                        "answer": interaction.answer,
                        "status": interaction.status,
                        "index_version": interaction.index_version_id,
                        "thumb": latest,
                        "feedback_events": counts[interaction.id],
                    }
                )
                if len(found) == limit:
                    break
    return found
