"""Amendments: a reviewer's text for one passage, served in its place.

    source chunk ──amend──> amended chunk (serves)      the source chunk is superseded
                 <─revert──                             the source chunk serves again

An amendment supersedes the passage's chunk with a chunk of the amended text, in SQL and in
the serving collection, in one step; every later index version has it because it is a live
chunk like any other (candidate builds and training read the live chunks). The old text is
kept twice: in the superseded chunk row and in the amendment's `source_text`.

Re-ingesting the document (`carry_over`): while a new version of the document still has
the amended passage word for word, the amendment replaces it there too; when the passage
itself changed, the amendment is `flagged` and the new passage serves, for a reviewer to
re-apply or dismiss (`rag-loop corrections amendments --status flagged`). Neither text
wins silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from rag_loop.corpus.chunking import ChunkSpec, embedding_input
from rag_loop.db.models import Amendment, AuditEntry, Chunk, Document, IndexVersion, now_of
from rag_loop.errors import Conflict, InvalidInput, NotFound
from rag_loop.index.chroma import ChromaStore
from rag_loop.index.embedders import Embedder

STATUSES = ("active", "flagged", "reverted", "replaced")
MAX_TEXT = 8000


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def amended_chunk_id(source_chunk_id: str, text: str) -> str:
    """Deterministic: the same text for the same passage is the same chunk."""
    key = f"amend\x00{source_chunk_id}\x00{content_hash(text)}"
    return "a" + hashlib.sha256(key.encode()).hexdigest()[:31]


def amendment_view(amendment: Amendment) -> dict[str, Any]:
    return {
        "id": amendment.id,
        "correction_id": amendment.correction_id,
        "document_id": amendment.document_id,
        "source_chunk_id": amendment.source_chunk_id,
        "source_text": amendment.source_text,
        "chunk_id": amendment.chunk_id,
        "text": amendment.text,
        "status": amendment.status,
        "created_by": amendment.created_by,
        "created_at": amendment.created_at.isoformat(),
        "closed_by": amendment.closed_by,
        "closed_at": amendment.closed_at.isoformat() if amendment.closed_at else None,
        "flag": amendment.flag,
    }


@dataclass
class ServingChange:
    """What an amend or revert did to the serving collection, and how to undo it when the
    SQL side fails after (Chroma has no transactions)."""

    collection: str
    added: list[str]
    removed: dict[str, tuple[Any, str, dict[str, Any]]]  # id -> (vector, text, metadata)

    def undo(self, store: ChromaStore) -> None:
        store.delete(self.collection, self.added)
        if self.removed:
            ids = list(self.removed)
            store.add(
                self.collection,
                ids,
                np.stack([self.removed[i][0] for i in ids]),
                [self.removed[i][1] for i in ids],
                [self.removed[i][2] for i in ids],
            )


def _metadata(chunk: Chunk, title: str) -> dict[str, Any]:
    return {
        "document_id": chunk.document_id,
        "document_version": chunk.document_version,
        "title": title,
        "ordinal": chunk.ordinal,
    }


def _swap(
    store: ChromaStore,
    embedder: Embedder,
    index: IndexVersion,
    out: Chunk,
    into: Chunk,
    title: str,
) -> ServingChange:
    """Serve `into` in place of `out` in the index's collection."""
    collection = index.collection_name
    kept = store.get_embeddings(collection, [out.id])
    vector = embedder.embed_documents([embedding_input(title, into.text)])
    store.add(collection, [into.id], vector, [into.text], [_metadata(into, title)])
    change = ServingChange(collection, [into.id], {})
    try:
        store.delete(collection, [out.id])
    except BaseException:
        change.undo(store)
        raise
    if out.id in kept:
        change.removed[out.id] = (kept[out.id], out.text, _metadata(out, title))
    index.revision += 1  # hybrid indexes rebuild their BM25 side in every process
    return change


def live_chunk(session: Session, chunk_id: str) -> tuple[Chunk, Document]:
    chunk = session.get(Chunk, chunk_id)
    if chunk is None:
        raise NotFound(f"no chunk {chunk_id!r}")
    document = session.get_one(Document, chunk.document_id)
    if chunk.superseded_at is not None or document.deleted_at is not None:
        raise Conflict(
            f"chunk {chunk_id} no longer serves (its document changed or an amendment "
            "replaced it); amend the passage that serves now"
        )
    return chunk, document


def amend(
    session: Session,
    store: ChromaStore,
    embedder: Embedder,
    index: IndexVersion,
    chunk_id: str,
    text: str,
    *,
    actor: str,
    correction_id: int | None = None,
) -> tuple[Amendment, ServingChange]:
    """Serve `text` in place of the live chunk `chunk_id`, in `session`'s transaction. The
    caller undoes the returned change if the transaction fails."""
    text = text.strip()
    if not text or len(text) > MAX_TEXT:
        raise InvalidInput(f"an amended text has 1 to {MAX_TEXT} characters")
    source, document = live_chunk(session, chunk_id)
    if text == source.text.strip():
        raise Conflict("the amended text is the passage as it is; change something")
    existing = session.scalar(
        select(Amendment).where(Amendment.chunk_id == chunk_id, Amendment.status == "active")
    )
    # amending an amended passage: the new amendment replaces the old one and keeps the
    # original passage as its source, so a revert goes back to the document's own text
    original_id = existing.source_chunk_id if existing else source.id
    original_text = existing.source_text if existing else source.text
    new = Chunk(
        id=amended_chunk_id(original_id, text),
        document_id=source.document_id,
        document_version=source.document_version,
        ordinal=source.ordinal,
        text=text,
        content_hash=content_hash(text),
        chunking_hash=source.chunking_hash,
    )
    known = session.get(Chunk, new.id)
    if known is not None:  # the same amendment again after a revert: revive its row
        known.superseded_at = None
        new = known
    else:
        session.add(new)
    source.superseded_at = now_of(session)
    if existing is not None:
        existing.status, existing.closed_by, existing.closed_at = "replaced", actor, now_of(session)
    amendment = Amendment(
        correction_id=correction_id,
        document_id=document.id,
        source_chunk_id=original_id,
        source_hash=content_hash(original_text),
        source_text=original_text,
        chunk_id=new.id,
        text=text,
        status="active",
        created_by=actor,
    )
    session.add(amendment)
    session.flush()
    change = _swap(store, embedder, index, source, new, document.title)
    session.add(
        AuditEntry(
            actor=actor,
            action="amendment.create",
            target=f"amendment:{amendment.id}",
            details={
                "correction_id": correction_id,
                "document_id": document.id,
                "replaced_chunk_id": source.id,
                "chunk_id": new.id,
                "old_text": source.text,
                "index_version_id": index.id,
            },
        )
    )
    return amendment, change


def revert(
    session: Session,
    store: ChromaStore,
    embedder: Embedder,
    index: IndexVersion,
    amendment_id: int,
    *,
    actor: str,
    note: str | None = None,
) -> tuple[Amendment, ServingChange | None]:
    """Serve the passage's own text again (an active amendment), or dismiss a flagged one
    (its document's new passage already serves)."""
    amendment = session.get(Amendment, amendment_id, with_for_update=True)
    if amendment is None:
        raise NotFound(f"no amendment {amendment_id}; `rag-loop corrections amendments` lists them")
    if amendment.status not in ("active", "flagged"):
        raise Conflict(f"amendment {amendment_id} is {amendment.status} already")
    change = None
    if amendment.status == "active":
        amended, document = live_chunk(session, amendment.chunk_id)
        source = session.get_one(Chunk, amendment.source_chunk_id)
        source.superseded_at = None
        amended.superseded_at = now_of(session)
        change = _swap(store, embedder, index, amended, source, document.title)
    amendment.status = "reverted"
    amendment.closed_by, amendment.closed_at = actor, now_of(session)
    session.add(
        AuditEntry(
            actor=actor,
            action="amendment.revert",
            target=f"amendment:{amendment.id}",
            details={
                "chunk_id": amendment.source_chunk_id,
                "note": note,
                "index_version_id": index.id,
            },
        )
    )
    return amendment, change


def list_amendments(
    session: Session, status: str | None = None, correction_id: int | None = None
) -> list[Amendment]:
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    query = select(Amendment).order_by(Amendment.id)
    if status is not None:
        query = query.where(Amendment.status == status)
    if correction_id is not None:
        query = query.where(Amendment.correction_id == correction_id)
    return list(session.scalars(query))


@dataclass(frozen=True)
class CarriedOver:
    """A re-ingested document's chunks with its amendments applied, and what to record."""

    specs: list[ChunkSpec]
    kept: list[tuple[Amendment, ChunkSpec, ChunkSpec]]  # amendment, new source, amended
    flagged: list[tuple[Amendment, str]]  # amendment, why


def carry_over(
    amendments: list[Amendment], document_id: str, specs: list[ChunkSpec]
) -> CarriedOver:
    """A new chunking of a document, with its active amendments applied wherever the amended
    passage is still there word for word; the others are to be flagged."""
    mine = [a for a in amendments if a.document_id == document_id and a.status == "active"]
    if not mine:
        return CarriedOver(specs, [], [])
    out = list(specs)
    kept: list[tuple[Amendment, ChunkSpec, ChunkSpec]] = []
    flagged: list[tuple[Amendment, str]] = []
    for amendment in mine:
        at = next((i for i, s in enumerate(out) if s.content_hash == amendment.source_hash), None)
        if at is None:
            flagged.append((amendment, "the amended passage changed in the source document"))
            continue
        source = out[at]
        amended = ChunkSpec(
            id=amended_chunk_id(source.id, amendment.text),
            document_id=document_id,
            ordinal=source.ordinal,
            text=amendment.text,
            content_hash=content_hash(amendment.text),
        )
        out[at] = amended
        kept.append((amendment, source, amended))
    return CarriedOver(out, kept, flagged)


def record_carry_over(
    session: Session,
    carried: CarriedOver,
    document_version: int,
    chunking_hash: str,
    actor: str,
) -> None:
    """In the ingest's transaction (`carried` holds rows read before it), after the
    document's chunks are recorded (the amended chunk is one of them): the new source
    passage's row (superseded from the start, for lineage and a revert), the amendment moved
    onto it, and the flags."""
    now = now_of(session)
    for kept, source, amended in carried.kept:
        amendment = session.get_one(Amendment, kept.id)
        if session.get(Chunk, source.id) is None:
            session.add(
                Chunk(
                    id=source.id,
                    document_id=source.document_id,
                    document_version=document_version,
                    ordinal=source.ordinal,
                    text=source.text,
                    content_hash=source.content_hash,
                    chunking_hash=chunking_hash,
                    superseded_at=now,
                )
            )
        amendment.source_chunk_id, amendment.chunk_id = source.id, amended.id
    for flagged, why in carried.flagged:
        amendment = session.get_one(Amendment, flagged.id)
        amendment.status = "flagged"
        amendment.flag = {"reason": why, "at": now.isoformat()}
        session.add(
            AuditEntry(
                actor=actor,
                action="amendment.flag",
                target=f"amendment:{amendment.id}",
                details={"document_id": amendment.document_id, "reason": why},
            )
        )
