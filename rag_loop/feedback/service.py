"""Record feedback on an interaction: checked first, then validated against the database
and written by the group-committing writer (db/writer.py), many submissions per statement.

Idempotency: a retry with the same (interaction, idempotency_key) and the same payload is
answered from the first submission (created=False); a different payload is a 409. Two
retries in one batch, or racing from two processes, still store one submission: the loser
of a race hits the unique constraint, the writer retries it alone and it replays."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from rag_loop.db.engine import RawCursor, raw_cursor
from rag_loop.db.models import (
    Correction,
    FeedbackEvent,
    FeedbackSubmission,
    time_ordered_id,
    utcnow,
)
from rag_loop.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, RagLoopError
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


def check(services: Services, feedback: FeedbackIn) -> str:
    """Everything that can be checked without the database; returns the request hash."""
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
    return request_hash(feedback)


@dataclass(frozen=True)
class Pending:
    feedback: FeedbackIn
    digest: str
    actor: str


def submit_feedback(services: Services, feedback: FeedbackIn, *, actor: str) -> FeedbackReceipt:
    pending = Pending(feedback, check(services, feedback), actor)
    receipt: FeedbackReceipt = services.writer.run(record_many, pending)
    return receipt


async def submit_feedback_async(
    services: Services, feedback: FeedbackIn, *, actor: str
) -> FeedbackReceipt:
    """The API's path: the write is group-committed with concurrent ones (db/writer.py)."""
    pending = Pending(feedback, check(services, feedback), actor)
    receipt: FeedbackReceipt = await services.writer.arun(record_many, pending)
    return receipt


class _Lookups:
    """What the batch needs from the database, fetched with one query per kind (on the raw
    cursor: these run for every batch of the hottest write path)."""

    def __init__(self, raw: RawCursor, batch: list[Pending]) -> None:
        feedbacks = [p.feedback for p in batch]
        ids = sorted({fb.interaction_id for fb in feedbacks})
        in_ids = raw.marks(len(ids))
        self.interactions = {
            row[0] for row in raw.rows(f"SELECT id FROM interactions WHERE id IN ({in_ids})", ids)
        }
        keys = sorted({fb.idempotency_key for fb in feedbacks if fb.idempotency_key})
        self.stored: dict[tuple[str, str], tuple[str, str]] = {}
        if keys:
            stored = raw.rows(
                "SELECT interaction_id, idempotency_key, id, request_hash "
                f"FROM feedback_submissions WHERE interaction_id IN ({in_ids}) "
                # both columns, so the lookup uses the unique index (no scan)
                f"AND idempotency_key IN ({raw.marks(len(keys))})",
                [*ids, *keys],
            )
            for interaction_id, key, submission_id, digest in stored:
                self.stored[(interaction_id, key or "")] = (submission_id, digest)
        labelled = sorted({fb.interaction_id for fb in feedbacks if fb.chunk_labels})
        self.shown: dict[str, set[str]] = {}
        if labelled:
            rows = raw.rows(
                "SELECT interaction_id, chunk_id FROM retrievals "
                f"WHERE interaction_id IN ({raw.marks(len(labelled))})",
                labelled,
            )
            for interaction_id, chunk_id in rows:
                self.shown.setdefault(interaction_id, set()).add(chunk_id)
        documents = sorted(
            {fb.source.document_id for fb in feedbacks if fb.source and fb.source.document_id}
        )
        self.documents: set[str] = set()
        if documents:
            self.documents = {
                row[0]
                for row in raw.rows(
                    f"SELECT id FROM documents WHERE id IN ({raw.marks(len(documents))})",
                    documents,
                )
            }
        chunks = sorted(
            {fb.source.chunk_id for fb in feedbacks if fb.source and fb.source.chunk_id}
        )
        self.chunk_owner: dict[str, str] = {}
        if chunks:
            self.chunk_owner = dict(
                raw.rows(
                    f"SELECT id, document_id FROM chunks WHERE id IN ({raw.marks(len(chunks))})",
                    chunks,
                )
            )


def _validate(fb: FeedbackIn, found: _Lookups) -> None:
    if fb.chunk_labels:
        labelled = [label.chunk_id for label in fb.chunk_labels]
        duplicates = sorted({c for c in labelled if labelled.count(c) > 1})
        if duplicates:
            raise InvalidInput(f"chunk_labels name a chunk twice: {', '.join(duplicates)}")
        not_shown = sorted(set(labelled) - found.shown.get(fb.interaction_id, set()))
        if not_shown:
            raise InvalidInput(
                f"chunk_labels may only label chunks shown with this answer; not shown: "
                f"{', '.join(not_shown)}",
                details=[{"field": "chunk_labels", "chunk_ids": not_shown}],
            )
    if fb.source is not None:
        document_id, chunk_id = fb.source.document_id, fb.source.chunk_id
        if document_id and document_id not in found.documents:
            raise InvalidInput(f"source.document_id {document_id!r} does not exist")
        if chunk_id:
            owner = found.chunk_owner.get(chunk_id)
            if owner is None:
                raise InvalidInput(f"source.chunk_id {chunk_id!r} does not exist")
            if document_id and owner != document_id:
                raise InvalidInput(
                    f"source.chunk_id {chunk_id!r} belongs to {owner!r}, not {document_id!r}"
                )


def _conflict() -> Conflict:
    return Conflict(
        "this idempotency_key was already used for different feedback on this "
        "interaction; use a new key for new feedback"
    )


def _events(fb: FeedbackIn, submission_id: str, now: datetime) -> list[dict[str, Any]]:
    base = {
        "submission_id": submission_id,
        "interaction_id": fb.interaction_id,
        "thumb": None,
        "chunk_id": None,
        "relevant": None,
        "document_id": None,
        "text": None,
        "created_at": now,
    }
    rows: list[dict[str, Any]] = []
    if fb.thumb:
        rows.append({**base, "kind": "thumb", "thumb": fb.thumb})
    for label in fb.chunk_labels:
        rows.append(
            {**base, "kind": "chunk_label", "chunk_id": label.chunk_id, "relevant": label.relevant}
        )
    if fb.source is not None:
        rows.append(
            {
                **base,
                "kind": "source_pointer",
                "document_id": fb.source.document_id,
                "chunk_id": fb.source.chunk_id,
            }
        )
    if fb.comment and fb.comment.strip():
        rows.append({**base, "kind": "comment", "text": fb.comment.strip()})
    if fb.correction and fb.correction.strip():
        rows.append({**base, "kind": "correction", "text": fb.correction.strip()})
    return rows


def record_many(conn: Connection, batch: list[Pending]) -> list[FeedbackReceipt | Exception]:
    """Validate and store a batch of feedback with a few set-based statements. Each item
    gets its receipt, or the error that refused it (a refused item writes nothing)."""
    with raw_cursor(conn) as raw:
        return _record_many(conn, raw, batch)


def _record_many(
    conn: Connection, raw: RawCursor, batch: list[Pending]
) -> list[FeedbackReceipt | Exception]:
    found = _Lookups(raw, batch)
    now = utcnow()
    results: list[FeedbackReceipt | Exception | None] = [None] * len(batch)
    submissions: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    owners: list[int] = []  # batch position of each event row
    stored_replays: dict[int, str] = {}  # batch position -> stored submission id
    batch_replays: dict[int, int] = {}  # batch position -> position of the first one
    first_with_key: dict[tuple[str, str], int] = {}
    created: list[int] = []  # batch positions of new submissions, in order

    for position, pending in enumerate(batch):
        fb = pending.feedback
        if fb.interaction_id not in found.interactions:
            results[position] = NotFound(f"no interaction {fb.interaction_id!r}")
            continue
        if fb.idempotency_key:
            key = (fb.interaction_id, fb.idempotency_key)
            if key in found.stored:
                submission_id, digest = found.stored[key]
                if digest != pending.digest:
                    results[position] = _conflict()
                else:
                    stored_replays[position] = submission_id
                continue
            if key in first_with_key:
                first = first_with_key[key]
                if batch[first].digest != pending.digest:
                    results[position] = _conflict()
                else:
                    batch_replays[position] = first
                continue
        try:
            _validate(fb, found)
        except RagLoopError as exc:
            results[position] = exc
            continue
        if fb.idempotency_key:
            first_with_key[(fb.interaction_id, fb.idempotency_key)] = position
        submission_id = time_ordered_id()
        created.append(position)
        submissions.append(
            {
                "id": submission_id,
                "interaction_id": fb.interaction_id,
                "idempotency_key": fb.idempotency_key,
                "request_hash": pending.digest,
                "actor": pending.actor,
                "created_at": now,
            }
        )
        for row in _events(fb, submission_id, now):
            events.append(row)
            owners.append(position)

    raw.insert(FeedbackSubmission, submissions)
    event_ids = raw.insert_returning_ids(FeedbackEvent, events)
    ids_of: dict[int, list[int]] = {}
    corrections: list[dict[str, Any]] = []
    correction_owner: list[int] = []
    for row, owner, event_id in zip(events, owners, event_ids, strict=True):
        ids_of.setdefault(owner, []).append(event_id)
        if row["kind"] == "correction":
            corrections.append(
                {
                    "interaction_id": row["interaction_id"],
                    "feedback_event_id": event_id,
                    "text": row["text"],
                    "status": "pending",
                    "created_at": now,
                }
            )
            correction_owner.append(owner)
    correction_of: dict[int, int] = {}
    if corrections:
        correction_ids = raw.insert_returning_ids(Correction, corrections)
        correction_of = dict(zip(correction_owner, correction_ids, strict=True))
    for position, submission in zip(created, submissions, strict=True):
        results[position] = FeedbackReceipt(
            submission_id=submission["id"],
            interaction_id=submission["interaction_id"],
            created=True,
            event_ids=ids_of.get(position, []),
            correction_id=correction_of.get(position),
        )
    if stored_replays:
        previous = _stored_receipts(conn, set(stored_replays.values()))
        for position, submission_id in stored_replays.items():
            results[position] = previous[submission_id]
    for position, first in batch_replays.items():
        original = results[first]
        assert isinstance(original, FeedbackReceipt)
        results[position] = replace(original, created=False)
    answered = [r for r in results if r is not None]
    assert len(answered) == len(batch), "every feedback item gets a receipt or an error"
    return answered


def _stored_receipts(conn: Connection, submission_ids: set[str]) -> dict[str, FeedbackReceipt]:
    rows = conn.execute(
        select(
            FeedbackSubmission.id,
            FeedbackSubmission.interaction_id,
            FeedbackEvent.id,
            Correction.id,
        )
        .join(FeedbackEvent, FeedbackEvent.submission_id == FeedbackSubmission.id)
        .outerjoin(Correction, Correction.feedback_event_id == FeedbackEvent.id)
        .where(FeedbackSubmission.id.in_(submission_ids))
        .order_by(FeedbackEvent.id)
    )
    receipts: dict[str, FeedbackReceipt] = {}
    for submission_id, interaction_id, event_id, correction_id in rows:
        receipt = receipts.get(submission_id) or FeedbackReceipt(
            submission_id=submission_id,
            interaction_id=interaction_id,
            created=False,
            event_ids=[],
            correction_id=None,
        )
        receipt.event_ids.append(event_id)
        if correction_id is not None:
            receipt = replace(receipt, correction_id=correction_id)
        receipts[submission_id] = receipt
    return receipts
