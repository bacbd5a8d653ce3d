"""The corrections review queue.

    pending ──RAG_LOOP_REVIEW_APPROVALS approvals──> approved (applied: it serves)
       │  └─reject (no approval yet)──> rejected (never reaches an index)
       └────reject after an approval──> disputed ──an admin's decision──> approved | rejected

Every decision is a `correction_reviews` row (reviewer, decision, note); each reviewer
decides once, and an admin settles a dispute. The first approval says what applying does:

- `add`: the text becomes a document of kind `correction` whose chunks join the serving
  collection, titled with the question it corrects, so the same or a reworded question
  retrieves it (and the generator's prompt says it outranks what it contradicts);
- `amend`: one passage the answer was given (by default the one the user marked not
  relevant, or the one the answer quoted first) is replaced by an amended text in the
  serving index (`corpus/amendments.py`): the wrong fact is retired, not argued with.

A disputed correction that already serves keeps serving until an admin settles it; an
admin's rejection takes it out of the serving index again.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.corpus import amendments
from rag_loop.corpus.amendments import ServingChange, amendment_view
from rag_loop.corpus.chunking import Chunker, embedding_input
from rag_loop.db.engine import transaction
from rag_loop.db.models import (
    Amendment,
    AuditEntry,
    Chunk,
    Correction,
    CorrectionReview,
    Document,
    FeedbackEvent,
    IndexVersion,
    Interaction,
    now_of,
)
from rag_loop.errors import Conflict, InvalidInput, NotFound
from rag_loop.feedback.labels import fold
from rag_loop.generation.extractive import SENTENCE, WORD  # how the answerer quotes
from rag_loop.index.chroma import ChromaStore
from rag_loop.index.embedders import EmbedderPool
from rag_loop.index.versions import champion
from rag_loop.settings import Settings

STATUSES = ("pending", "approved", "rejected", "disputed")
Mode = Literal["add", "amend"]
MODES = ("add", "amend")


class CorrectionParts(Protocol):
    """What reviewing corrections uses."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ChromaStore
    embedders: EmbedderPool  # by version: the base and the loop's fine-tuned models
    chunker: Chunker


def correction_view(
    correction: Correction,
    interaction: Interaction | None,
    reviews: list[CorrectionReview] | None = None,
) -> dict[str, Any]:
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
        "mode": correction.mode,
        "proposal": correction.proposal,
        "applied": correction.applied,
        "reviews": [
            {
                "reviewer": r.reviewer,
                "decision": r.decision,
                "note": r.note,
                "at": r.created_at.isoformat(),
            }
            for r in reviews or []
        ],
        "document_id": correction.document_id,
        "chunk_id": correction.chunk_id,
        "index_version_id": correction.index_version_id,
    }


def _reviews(session: Session, ids: list[int]) -> dict[int, list[CorrectionReview]]:
    found: dict[int, list[CorrectionReview]] = {i: [] for i in ids}
    if ids:
        for review in session.scalars(
            select(CorrectionReview)
            .where(CorrectionReview.correction_id.in_(ids))
            .order_by(CorrectionReview.id)
        ):
            found[review.correction_id].append(review)
    return found


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
        reviews = _reviews(session, [c.id for c, _ in rows])
        return [correction_view(c, i, reviews[c.id]) for c, i in rows]


def _words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def propose(chunk_text: str, answer: str | None, correction: str) -> str:
    """A first draft of the amended passage (the reviewer edits it before approving): of
    the sentences the wrong answer quoted from it (all of them, for an answer in its own
    words), the one closest to the correction is replaced by the correction."""
    sentences = [s.strip() for s in SENTENCE.split(chunk_text) if s.strip()]
    said, corrected = _words(answer or ""), _words(correction)
    quoted = [s for s in sentences if _words(s) and len(_words(s) & said) >= 0.6 * len(_words(s))]
    candidates = quoted or sentences
    if not candidates:
        return correction.strip()
    best = max(
        candidates,
        key=lambda s: (len(_words(s) & corrected), len(_words(s) & said), -sentences.index(s)),
    )
    if not _words(best) & (corrected | said):
        return f"{chunk_text.rstrip()} {correction.strip()}"
    return chunk_text.replace(best, correction.strip(), 1)


def diff(old: str, new: str) -> list[tuple[str, str]]:
    """A word diff for reading: (op, text) with op in equal, delete, insert."""
    a, b = old.split(), new.split()
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op in ("equal", "delete", "replace") and i2 > i1:
            out.append(("equal" if op == "equal" else "delete", " ".join(a[i1:i2])))
        if op in ("insert", "replace") and j2 > j1:
            out.append(("insert", " ".join(b[j1:j2])))
    return out


def get_correction(services: CorrectionParts, correction_id: int) -> dict[str, Any]:
    """A correction as a reviewer sees it: the question, the answer, the chunks the answer
    was given (live or not, the user's labels, which one is pre-selected), the proposed
    amendment with its diff, every decision and every amendment."""
    with services.sessions() as session:
        correction = session.get(Correction, correction_id)
        if correction is None:
            raise NotFound(f"no correction {correction_id}; `rag-loop corrections list` shows them")
        interaction = session.get_one(Interaction, correction.interaction_id)
        events = session.scalars(
            select(FeedbackEvent)
            .where(FeedbackEvent.interaction_id == interaction.id)
            .order_by(FeedbackEvent.id)
        ).all()
        labels = fold(events)
        chunk_ids = [r.chunk_id for r in interaction.retrievals]
        live = {
            c.id
            for c in session.scalars(select(Chunk).where(Chunk.id.in_(chunk_ids)))
            if c.superseded_at is None
        }
        cited = [r for r in interaction.retrievals if r.rank in (interaction.cited_ranks or [])]
        marked = [r for r in interaction.retrievals if labels.chunks.get(r.chunk_id) is False]
        preferred = [r for r in marked + cited + list(interaction.retrievals) if r.chunk_id in live]
        selected = preferred[0].chunk_id if preferred else None
        chunks: list[dict[str, Any]] = [
            {
                "rank": r.rank,
                "chunk_id": r.chunk_id,
                "document_id": r.document_id,
                "title": r.title,
                "score": r.score,
                "text": r.text,
                "cited": r.rank in (interaction.cited_ranks or []),
                "label": labels.chunks.get(r.chunk_id),
                "live": r.chunk_id in live,
                "selected": r.chunk_id == selected,
            }
            for r in interaction.retrievals
        ]
        view = correction_view(
            correction, interaction, _reviews(session, [correction.id])[correction.id]
        )
        proposal = correction.proposal
        if proposal is None and selected is not None:
            source = next(c for c in chunks if c["chunk_id"] == selected)
            proposal = {
                "chunk_id": selected,
                "text": propose(str(source["text"]), interaction.answer, correction.text),
                "drafted": True,
            }
        if proposal is not None:
            old = next(
                (str(c["text"]) for c in chunks if c["chunk_id"] == proposal["chunk_id"]), ""
            )
            proposal = {**proposal, "diff": diff(old, proposal["text"])}
        view.update(
            chunks=chunks,
            proposal=proposal,
            amendments=[
                amendment_view(a)
                for a in amendments.list_amendments(session, correction_id=correction.id)
            ],
        )
        return view


def _decide(
    session: Session,
    correction: Correction,
    reviews: list[CorrectionReview],
    reviewer: str,
    decision: str,
    note: str | None,
) -> None:
    """Record one reviewer's decision (added to `reviews` too); the correction keeps the
    latest decision's reviewer, time and note."""
    now = now_of(session)
    review = CorrectionReview(
        correction_id=correction.id, reviewer=reviewer, decision=decision, note=note, created_at=now
    )
    session.add(review)
    reviews.append(review)
    correction.reviewer, correction.reviewed_at, correction.review_note = reviewer, now, note


def _check_reviewer(
    correction: Correction,
    reviews: list[CorrectionReview],
    reviewer: str,
    admin: bool,
    decision: str,
) -> None:
    if correction.status == "rejected":
        raise Conflict(
            f"correction {correction.id} was rejected by {correction.reviewer} at "
            f"{correction.reviewed_at}"
        )
    if correction.status == "approved" and decision == "approve":
        raise Conflict(
            f"correction {correction.id} was already approved by {correction.reviewer} at "
            f"{correction.reviewed_at}; reject it to dispute it"
        )
    if admin:
        return  # an admin may decide again: to dispute its own approval, or to settle one
    if any(r.reviewer == reviewer for r in reviews):
        raise Conflict(
            f"{reviewer} already reviewed correction {correction.id}; each reviewer decides "
            "once (an admin settles a dispute)"
        )


def approve(
    services: CorrectionParts,
    correction_id: int,
    *,
    reviewer: str,
    note: str | None = None,
    mode: Mode | None = None,
    chunk_id: str | None = None,
    text: str | None = None,
    admin: bool = True,
) -> dict[str, Any]:
    """Record an approval; the one that completes the required count (or an admin's, on a
    disputed correction) applies it. The first approval sets the mode (default `add`) and,
    for `amend`, the passage and its amended text; later approvals approve that proposal."""
    if mode is not None and mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if (chunk_id is not None or text is not None) and mode != "amend":
        raise InvalidInput("chunk_id and text belong to an amendment: pass mode=amend")
    with _serving(services) as (session, changes):
        correction = _locked(session, correction_id)
        reviews = _reviews(session, [correction.id])[correction.id]
        _check_reviewer(correction, reviews, reviewer, admin, "approve")
        interaction = session.get_one(Interaction, correction.interaction_id)
        _settle_proposal(session, correction, interaction, mode, chunk_id, text)
        _decide(session, correction, reviews, reviewer, "approve", note)
        approvals = len({r.reviewer for r in reviews if r.decision == "approve"})
        needed = services.settings.review.approvals
        settles = correction.status == "disputed" and admin
        if correction.status == "disputed" and not settles:
            pass  # the approval is recorded; an admin settles the dispute
        elif settles or approvals >= needed:
            correction.status = "approved"
            if not correction.applied:
                changes.append(_apply(services, session, correction, interaction, reviewer))
        session.add(
            AuditEntry(
                actor=reviewer,
                action="correction.approve",
                target=f"correction:{correction.id}",
                details={
                    "interaction_id": interaction.id,
                    "mode": correction.mode,
                    "approvals": approvals,
                    "needed": needed,
                    "status": correction.status,
                    "applied": correction.applied,
                    "document_id": correction.document_id,
                    "chunk_id": correction.chunk_id,
                    "index_version_id": correction.index_version_id,
                    "note": note,
                },
            )
        )
        view = correction_view(correction, interaction, reviews)
    return view


def reject(
    services: CorrectionParts,
    correction_id: int,
    *,
    reviewer: str,
    note: str | None = None,
    admin: bool = True,
) -> dict[str, Any]:
    """A rejection before any approval rejects; after one it disputes (an applied
    correction keeps serving); an admin's rejection of a disputed correction settles it and
    takes it out of the serving index."""
    with _serving(services) as (session, changes):
        correction = _locked(session, correction_id)
        reviews = _reviews(session, [correction.id])[correction.id]
        _check_reviewer(correction, reviews, reviewer, admin, "reject")
        approved_before = any(r.decision == "approve" for r in reviews)
        settles = correction.status == "disputed" and admin
        _decide(session, correction, reviews, reviewer, "reject", note)
        if settles or not approved_before:
            correction.status = "rejected"
            if correction.applied:
                changes.extend(_unapply(services, session, correction, reviewer, note))
        else:
            correction.status = "disputed"
        session.add(
            AuditEntry(
                actor=reviewer,
                action="correction.reject",
                target=f"correction:{correction.id}",
                details={"note": note, "status": correction.status},
            )
        )
        interaction = session.get(Interaction, correction.interaction_id)
        view = correction_view(correction, interaction, reviews)
    return view


@contextmanager
def _serving(services: CorrectionParts) -> Iterator[tuple[Session, list[ServingChange]]]:
    """A transaction whose changes to the serving collection are undone when it fails:
    Chroma takes a change before the SQL side commits, and has no transactions."""
    changes: list[ServingChange] = []
    try:
        with transaction(services.sessions) as session:
            yield session, changes
    except BaseException:
        for change in reversed(changes):
            change.undo(services.store)
        raise


def _locked(session: Session, correction_id: int) -> Correction:
    correction = session.get(Correction, correction_id, with_for_update=True)
    if correction is None:
        raise NotFound(f"no correction {correction_id}; `rag-loop corrections list` shows them")
    return correction


def _settle_proposal(
    session: Session,
    correction: Correction,
    interaction: Interaction,
    mode: Mode | None,
    chunk_id: str | None,
    text: str | None,
) -> None:
    if correction.mode is None:
        correction.mode = mode or "add"
        if correction.mode == "amend":
            if chunk_id is None or not (text or "").strip():
                raise InvalidInput(
                    "an amendment names the passage (chunk_id, one the answer was given) and "
                    "its amended text"
                )
            if chunk_id not in {r.chunk_id for r in interaction.retrievals}:
                raise NotFound(
                    f"chunk {chunk_id} was not among the chunks this answer was given; amend "
                    "one of those (GET /v1/corrections/{id} lists them)"
                )
            amendments.live_chunk(session, chunk_id)  # still serving
            correction.proposal = {"chunk_id": chunk_id, "text": (text or "").strip()}
        return
    asked = (mode or correction.mode, chunk_id, (text or "").strip() or None)
    proposal = correction.proposal or {}
    have = (correction.mode, proposal.get("chunk_id"), proposal.get("text"))
    if mode is not None and (
        asked[0] != have[0]
        or (asked[1] is not None and asked[1] != have[1])
        or (asked[2] is not None and asked[2] != have[2])
    ):
        raise Conflict(
            f"correction {correction.id} was first approved to {correction.mode}"
            + (f" chunk {have[1]}" if have[1] else "")
            + "; approve it as proposed, or reject it with a note to dispute the proposal"
        )


def _apply(
    services: CorrectionParts,
    session: Session,
    correction: Correction,
    interaction: Interaction,
    actor: str,
) -> ServingChange:
    index = champion(session)
    embedder = services.embedders.get(index.embedder_version)
    if correction.mode == "amend":
        proposal = correction.proposal or {}
        amendment, change = amendments.amend(
            session,
            services.store,
            embedder,
            index,
            str(proposal["chunk_id"]),
            str(proposal["text"]),
            actor=actor,
            correction_id=correction.id,
        )
        correction.document_id = amendment.document_id
        correction.chunk_id = amendment.chunk_id
    else:
        change = _add_document(services, session, correction, interaction, index)
    correction.index_version_id = index.id
    correction.applied = True
    return change


def _add_document(
    services: CorrectionParts,
    session: Session,
    correction: Correction,
    interaction: Interaction,
    index: IndexVersion,
) -> ServingChange:
    doc_id = f"correction-{correction.id}"
    title = f"Correction: {interaction.query}"[:1024]
    content_hash = hashlib.sha256(f"{title}\x00{correction.text}".encode()).hexdigest()
    document = session.get(Document, doc_id)
    if document is None:
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
        session.add(document)
    document.deleted_at = None
    specs = services.chunker.split(doc_id, 1, content_hash, correction.text)
    for s in specs:
        row = session.get(Chunk, s.id)
        if row is None:
            session.add(
                Chunk(
                    id=s.id,
                    document_id=doc_id,
                    document_version=1,
                    ordinal=s.ordinal,
                    text=s.text,
                    content_hash=s.content_hash,
                    chunking_hash=services.chunker.config_hash,
                )
            )
        else:
            row.superseded_at = None
    vectors = services.embedders.get(index.embedder_version).embed_documents(
        [embedding_input(title, s.text) for s in specs]
    )
    services.store.add(
        index.collection_name,
        [s.id for s in specs],
        vectors,
        [s.text for s in specs],
        [
            {"document_id": doc_id, "document_version": 1, "title": title, "ordinal": s.ordinal}
            for s in specs
        ],
    )
    index.n_chunks += len(specs)
    index.n_documents += 1
    index.revision += 1  # hybrid indexes rebuild their BM25 side in every process
    correction.document_id = doc_id
    correction.chunk_id = specs[0].id
    return ServingChange(index.collection_name, [s.id for s in specs], {})


def _unapply(
    services: CorrectionParts,
    session: Session,
    correction: Correction,
    actor: str,
    note: str | None,
) -> list[ServingChange]:
    """Take an applied correction out of the serving index: revert its amendments, or
    retire its added document."""
    index = champion(session)
    changes: list[ServingChange] = []
    if correction.mode == "amend":
        active = [
            a
            for a in amendments.list_amendments(session, correction_id=correction.id)
            if a.status in ("active", "flagged")
        ]
        for amendment in active:
            _revert(services, session, index, amendment.id, actor, note, changes)
    elif correction.document_id is not None:
        document = session.get_one(Document, correction.document_id)
        document.deleted_at = now_of(session)
        chunks = session.scalars(
            select(Chunk).where(Chunk.document_id == document.id, Chunk.superseded_at.is_(None))
        ).all()
        for chunk in chunks:
            chunk.superseded_at = now_of(session)
        kept = services.store.get_embeddings(index.collection_name, [c.id for c in chunks])
        services.store.delete(index.collection_name, [c.id for c in chunks])
        removed = ServingChange(
            index.collection_name,
            [],
            {
                c.id: (
                    kept[c.id],
                    c.text,
                    {
                        "document_id": document.id,
                        "document_version": c.document_version,
                        "title": document.title,
                        "ordinal": c.ordinal,
                    },
                )
                for c in chunks
                if c.id in kept
            },
        )
        changes.append(removed)
        index.n_chunks -= len(chunks)
        index.n_documents -= 1
        index.revision += 1
    correction.applied = False
    return changes


def _revert(
    services: CorrectionParts,
    session: Session,
    index: IndexVersion,
    amendment_id: int,
    actor: str,
    note: str | None,
    changes: list[ServingChange],
) -> Amendment:
    amendment, reverted = amendments.revert(
        session,
        services.store,
        services.embedders.get(index.embedder_version),
        index,
        amendment_id,
        actor=actor,
        note=note,
    )
    if reverted is not None:
        changes.append(reverted)
    return amendment


def revert_amendment(
    services: CorrectionParts, amendment_id: int, *, actor: str, note: str | None = None
) -> dict[str, Any]:
    """Serve the passage's own text again (or dismiss a flagged amendment). Its correction,
    if every amendment of it is gone, no longer serves."""
    with _serving(services) as (session, changes):
        index = champion(session)
        amendment = _revert(services, session, index, amendment_id, actor, note, changes)
        if amendment.correction_id is not None:
            correction = session.get_one(Correction, amendment.correction_id)
            others = [
                a
                for a in amendments.list_amendments(session, correction_id=correction.id)
                if a.status == "active" and a.id != amendment.id
            ]
            correction.applied = bool(others)
        view = amendment_view(amendment)
    return view


def reapply_amendment(
    services: CorrectionParts,
    amendment_id: int,
    *,
    chunk_id: str,
    text: str,
    actor: str,
) -> dict[str, Any]:
    """A flagged amendment (its passage changed in the source) applied to the passage that
    serves now, with a text the reviewer checked against it."""
    with _serving(services) as (session, changes):
        flagged = session.get(Amendment, amendment_id, with_for_update=True)
        if flagged is None:
            raise NotFound(f"no amendment {amendment_id}")
        if flagged.status != "flagged":
            raise Conflict(f"amendment {amendment_id} is {flagged.status}, not flagged")
        chunk, _ = amendments.live_chunk(session, chunk_id)
        if chunk.document_id != flagged.document_id:
            raise Conflict(
                f"chunk {chunk_id} is not a passage of {flagged.document_id}, the "
                "document this amendment belongs to"
            )
        index = champion(session)
        amendment, change = amendments.amend(
            session,
            services.store,
            services.embedders.get(index.embedder_version),
            index,
            chunk_id,
            text,
            actor=actor,
            correction_id=flagged.correction_id,
        )
        changes.append(change)
        flagged.status, flagged.closed_by, flagged.closed_at = "replaced", actor, now_of(session)
        if flagged.correction_id is not None:
            session.get_one(Correction, flagged.correction_id).applied = True
        view = amendment_view(amendment)
    return view


def list_amendment_views(
    services: CorrectionParts, status: str | None = None
) -> list[dict[str, Any]]:
    with services.sessions() as session:
        return [amendment_view(a) for a in amendments.list_amendments(session, status)]
