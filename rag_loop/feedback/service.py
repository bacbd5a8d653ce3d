"""Record feedback on an interaction: validated first, then written in one transaction."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rag_loop.db.engine import transaction
from rag_loop.db.models import (
    Chunk,
    Correction,
    Document,
    FeedbackEvent,
    FeedbackSubmission,
    Interaction,
    Retrieval,
)
from rag_loop.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from rag_loop.feedback.schemas import FeedbackIn
from rag_loop.services import Services


@dataclass(frozen=True)
class FeedbackReceipt:
    submission_id: str
    interaction_id: str
    created: bool  # False when an idempotent retry was answered from the first submission
    event_ids: list[int]
    correction_id: int | None


def request_hash(feedback: FeedbackIn) -> str:
    payload = feedback.model_dump(exclude={"token", "idempotency_key"}, mode="json")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def submit_feedback(services: Services, feedback: FeedbackIn, *, actor: str) -> FeedbackReceipt:
    limits = services.settings.limits
    if feedback.is_empty():
        raise InvalidInput(
            "the feedback is empty; give a thumb, chunk_labels, a correction, a source or a comment"
        )
    for field in ("correction", "comment"):
        value = getattr(feedback, field)
        if value is not None and len(value) > limits.max_text_chars:
            raise PayloadTooLarge(
                f"{field} has {len(value)} characters; the limit is {limits.max_text_chars}"
            )
    if len(feedback.chunk_labels) > limits.max_chunk_labels:
        raise PayloadTooLarge(
            f"{len(feedback.chunk_labels)} chunk labels; the limit is {limits.max_chunk_labels}"
        )
    digest = request_hash(feedback)
    try:
        with transaction(services.sessions) as session:
            return _write(session, feedback, digest, actor)
    except IntegrityError:
        # a concurrent retry with the same idempotency key won the race: answer as it did
        with services.sessions() as session:
            previous = _previous(session, feedback)
            if previous is None:
                raise
            return _replay(previous, digest)


def _previous(session: Session, feedback: FeedbackIn) -> FeedbackSubmission | None:
    if feedback.idempotency_key is None:
        return None
    return session.scalar(
        select(FeedbackSubmission).where(
            FeedbackSubmission.interaction_id == feedback.interaction_id,
            FeedbackSubmission.idempotency_key == feedback.idempotency_key,
        )
    )


def _replay(previous: FeedbackSubmission, digest: str) -> FeedbackReceipt:
    if previous.request_hash != digest:
        raise Conflict(
            "this idempotency_key was already used for different feedback on this "
            "interaction; use a new key for new feedback"
        )
    correction = next((e for e in previous.events if e.kind == "correction"), None)
    return FeedbackReceipt(
        submission_id=previous.id,
        interaction_id=previous.interaction_id,
        created=False,
        event_ids=[e.id for e in previous.events],
        correction_id=correction.correction.id if correction and correction.correction else None,
    )


def _write(session: Session, fb: FeedbackIn, digest: str, actor: str) -> FeedbackReceipt:
    if session.get(Interaction, fb.interaction_id) is None:
        raise NotFound(f"no interaction {fb.interaction_id!r}")
    previous = _previous(session, fb)
    if previous is not None:
        return _replay(previous, digest)

    if fb.chunk_labels:
        shown = set(
            session.scalars(
                select(Retrieval.chunk_id).where(Retrieval.interaction_id == fb.interaction_id)
            )
        )
        labelled = [label.chunk_id for label in fb.chunk_labels]
        duplicates = sorted({c for c in labelled if labelled.count(c) > 1})
        if duplicates:
            raise InvalidInput(f"chunk_labels name a chunk twice: {', '.join(duplicates)}")
        not_shown = sorted(set(labelled) - shown)
        if not_shown:
            raise InvalidInput(
                f"chunk_labels may only label chunks shown with this answer; not shown: "
                f"{', '.join(not_shown)}",
                details=[{"field": "chunk_labels", "chunk_ids": not_shown}],
            )
    if fb.source is not None:
        if fb.source.document_id and session.get(Document, fb.source.document_id) is None:
            raise InvalidInput(f"source.document_id {fb.source.document_id!r} does not exist")
        if fb.source.chunk_id:
            chunk = session.get(Chunk, fb.source.chunk_id)
            if chunk is None:
                raise InvalidInput(f"source.chunk_id {fb.source.chunk_id!r} does not exist")
            if fb.source.document_id and chunk.document_id != fb.source.document_id:
                raise InvalidInput(
                    f"source.chunk_id {chunk.id!r} belongs to {chunk.document_id!r}, not "
                    f"{fb.source.document_id!r}"
                )

    submission = FeedbackSubmission(
        id=uuid.uuid4().hex,
        interaction_id=fb.interaction_id,
        idempotency_key=fb.idempotency_key,
        request_hash=digest,
        actor=actor,
    )
    session.add(submission)
    events: list[FeedbackEvent] = []

    def event(kind: str, **values: object) -> FeedbackEvent:
        row = FeedbackEvent(
            submission_id=submission.id, interaction_id=fb.interaction_id, kind=kind, **values
        )
        events.append(row)
        return row

    if fb.thumb:
        event("thumb", thumb=fb.thumb)
    for label in fb.chunk_labels:
        event("chunk_label", chunk_id=label.chunk_id, relevant=label.relevant)
    if fb.source is not None:
        event("source_pointer", document_id=fb.source.document_id, chunk_id=fb.source.chunk_id)
    if fb.comment and fb.comment.strip():
        event("comment", text=fb.comment.strip())
    correction_event = None
    if fb.correction and fb.correction.strip():
        correction_event = event("correction", text=fb.correction.strip())
    session.add_all(events)
    session.flush()
    correction_id = None
    if correction_event is not None:
        correction = Correction(
            interaction_id=fb.interaction_id,
            feedback_event_id=correction_event.id,
            text=correction_event.text or "",
        )
        session.add(correction)
        session.flush()
        correction_id = correction.id
    return FeedbackReceipt(
        submission_id=submission.id,
        interaction_id=fb.interaction_id,
        created=True,
        event_ids=[e.id for e in events],
        correction_id=correction_id,
    )
