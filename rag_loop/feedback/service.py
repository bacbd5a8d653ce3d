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
from typing import Any, Protocol

from sqlalchemy import BindParameter, Connection, bindparam, insert, select

from rag_loop.db.models import (
    Chunk,
    Correction,
    Document,
    FeedbackEvent,
    FeedbackSubmission,
    Interaction,
    Retrieval,
    now_of,
    time_ordered_id,
)
from rag_loop.db.writer import BatchWriter
from rag_loop.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, RagLoopError
from rag_loop.feedback.schemas import FeedbackIn
from rag_loop.settings import Settings


class FeedbackParts(Protocol):
    """What taking feedback uses."""

    settings: Settings
    writer: BatchWriter


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


def check(services: FeedbackParts, feedback: FeedbackIn) -> str:
    """Everything that can be checked without the database; returns the request hash."""
    limits = services.settings.limits
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


def submit_feedback(
    services: FeedbackParts, feedback: FeedbackIn, *, actor: str
) -> FeedbackReceipt:
    pending = Pending(feedback, check(services, feedback), actor)
    receipt: FeedbackReceipt = services.writer.run(record_many, pending)
    return receipt


async def submit_feedback_async(
    services: FeedbackParts, feedback: FeedbackIn, *, actor: str
) -> FeedbackReceipt:
    """The API's path: the write is group-committed with concurrent ones (db/writer.py)."""
    pending = Pending(feedback, check(services, feedback), actor)
    receipt: FeedbackReceipt = await services.writer.arun(record_many, pending)
    return receipt


def _in(name: str) -> BindParameter[Any]:
    return bindparam(name, expanding=True)


# The batch's statements, built once (a statement built per batch costs more Python than
# running it); each `IN` list is an expanding parameter.
_INTERACTIONS = select(Interaction.id).where(Interaction.id.in_(_in("ids")))
_STORED = select(
    FeedbackSubmission.interaction_id,
    FeedbackSubmission.idempotency_key,
    FeedbackSubmission.id,
    FeedbackSubmission.request_hash,
).where(
    # both columns, so the lookup uses the unique index (no scan)
    FeedbackSubmission.interaction_id.in_(_in("ids")),
    FeedbackSubmission.idempotency_key.in_(_in("keys")),
)
_SHOWN = select(Retrieval.interaction_id, Retrieval.chunk_id).where(
    Retrieval.interaction_id.in_(_in("ids"))
)
_DOCUMENTS = select(Document.id).where(Document.id.in_(_in("ids")))
_CHUNK_OWNERS = select(Chunk.id, Chunk.document_id).where(Chunk.id.in_(_in("ids")))
_INSERT_SUBMISSIONS = insert(FeedbackSubmission)
# RETURNING names each new row's owner: SQLAlchemy batches the rows of an executemany into
# a few multi-row INSERTs ("insertmanyvalues"), whose RETURNING rows come in no set order
# (asking SQLAlchemy to keep the order makes it insert row by row on SQLite)
_INSERT_EVENTS = insert(FeedbackEvent).returning(
    FeedbackEvent.id, FeedbackEvent.submission_id, FeedbackEvent.kind
)
_INSERT_CORRECTIONS = insert(Correction).returning(Correction.id, Correction.feedback_event_id)


class _Lookups:
    """What the batch needs from the database, fetched with one query per kind."""

    def __init__(self, conn: Connection, batch: list[Pending]) -> None:
        feedbacks = [p.feedback for p in batch]
        ids = list({fb.interaction_id for fb in feedbacks})
        self.interactions = set(conn.scalars(_INTERACTIONS, {"ids": ids}))
        keys = list({fb.idempotency_key for fb in feedbacks if fb.idempotency_key})
        self.stored: dict[tuple[str, str], tuple[str, str]] = {}
        if keys:
            for interaction_id, key, submission_id, digest in conn.execute(
                _STORED, {"ids": ids, "keys": keys}
            ):
                self.stored[(interaction_id, key or "")] = (submission_id, digest)
        labelled = list({fb.interaction_id for fb in feedbacks if fb.chunk_labels})
        self.shown: dict[str, set[str]] = {}
        if labelled:
            for interaction_id, chunk_id in conn.execute(_SHOWN, {"ids": labelled}):
                self.shown.setdefault(interaction_id, set()).add(chunk_id)
        documents = list(
            {fb.source.document_id for fb in feedbacks if fb.source and fb.source.document_id}
        )
        self.documents: set[str] = set()
        if documents:
            self.documents = set(conn.scalars(_DOCUMENTS, {"ids": documents}))
        chunks = list({fb.source.chunk_id for fb in feedbacks if fb.source and fb.source.chunk_id})
        self.chunk_owner: dict[str, str] = {}
        if chunks:
            self.chunk_owner = {c: d for c, d in conn.execute(_CHUNK_OWNERS, {"ids": chunks})}


def _validate(fb: FeedbackIn, found: _Lookups) -> None:
    if fb.chunk_labels:
        labelled = [label.chunk_id for label in fb.chunk_labels]
        # a chunk this answer did not show is, for this answer, one that does not exist
        not_shown = sorted(set(labelled) - found.shown.get(fb.interaction_id, set()))
        if not_shown:
            raise NotFound(
                f"chunk_labels may only label chunks shown with this answer; not shown: "
                f"{', '.join(not_shown)}",
                details=[{"field": "chunk_labels", "chunk_ids": not_shown}],
            )
        duplicates = sorted({c for c in labelled if labelled.count(c) > 1})
        if duplicates:
            raise InvalidInput(f"chunk_labels name a chunk twice: {', '.join(duplicates)}")
    if fb.source is not None:
        document_id, chunk_id = fb.source.document_id, fb.source.chunk_id
        if document_id and document_id not in found.documents:
            raise NotFound(f"source.document_id {document_id!r} does not exist")
        if chunk_id:
            owner = found.chunk_owner.get(chunk_id)
            if owner is None:
                raise NotFound(f"source.chunk_id {chunk_id!r} does not exist")
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
    found = _Lookups(conn, batch)
    now = now_of(conn)
    results: list[FeedbackReceipt | Exception | None] = [None] * len(batch)
    submissions: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
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
        events.extend(_events(fb, submission_id, now))

    if submissions:
        conn.execute(_INSERT_SUBMISSIONS, submissions)
    ids_of, correction_of = _insert_events(conn, submissions, created, events, now)
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


def _insert_events(
    conn: Connection,
    submissions: list[dict[str, Any]],
    created: list[int],
    events: list[dict[str, Any]],
    now: datetime,
) -> tuple[dict[int, list[int]], dict[int, int]]:
    """Insert the events and the corrections they bring; the database's ids of the events
    (by batch position, ascending, as a replay lists them) and of the corrections."""
    ids_of: dict[int, list[int]] = {}
    correction_of: dict[int, int] = {}
    if not events:
        return ids_of, correction_of
    position_of = {s["id"]: p for p, s in zip(created, submissions, strict=True)}
    interaction_of = {s["id"]: s["interaction_id"] for s in submissions}
    text_of = {e["submission_id"]: e["text"] for e in events if e["kind"] == "correction"}
    corrections: list[dict[str, Any]] = []
    owner_of_event: dict[int, int] = {}
    for event_id, submission_id, kind in sorted(conn.execute(_INSERT_EVENTS, events)):
        owner = position_of[submission_id]
        ids_of.setdefault(owner, []).append(event_id)
        if kind == "correction":
            owner_of_event[event_id] = owner
            corrections.append(
                {
                    "interaction_id": interaction_of[submission_id],
                    "feedback_event_id": event_id,
                    "text": text_of[submission_id],
                    "status": "pending",
                    "created_at": now,
                }
            )
    if corrections:
        rows = conn.execute(_INSERT_CORRECTIONS, corrections)
        correction_of = {owner_of_event[event_id]: cid for cid, event_id in rows}
    return ids_of, correction_of


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
