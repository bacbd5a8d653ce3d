"""Document expansion: the questions users confirmed a chunk answers, indexed with its text.

A chunk that feedback marked relevant to a question (a relevant label, a thumb up on the
chunk the answer cited first, a pointer, an approved correction: the training set's
positives) gets the question appended on the BM25 side of an index version, so the next
user who asks it in other words finds the chunk by the words of the first one (doc2query,
with questions people really asked instead of generated ones). A version with
`dense_expansion` uses them on the dense side too: the chunk's cosine with a query is the
best of the chunk's and its questions' (rag_loop.retrieval.search). The loop's training set
brings them; the validation part of the feedback decides whether the candidate keeps them;
the gate decides the candidate. They belong to one index version (table
`index_expansions`): a rollback serves the target's own, a re-ingest keeps those of chunks
it keeps. The gate's held-out questions are never among them: they are not in the
training set. With query association the training set also pairs every question nobody
rated with the chunk its answer was built on (part `ASSOCIATED`: a weak yes, used here
only, never to train). A chunk gets at most `training.max_questions_per_chunk` questions,
the confirmed ones first, then the latest asked, so no much-asked chunk (or one a flood of
asks was built on) grows without bound. A version with dense expansion stores each
question's vector by its query encoder when it is built (`record(..., vectors=...)`), so no
process embeds them on a request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.db.models import IndexExpansion, IndexVersion

Pairs = list[tuple[str, str]]  # (chunk id, question)

# a training set's rows that only expand documents (query association), never train
ASSOCIATED = "associated"
EVERY_PART = ("fit", "validation", ASSOCIATED)


@dataclass(frozen=True)
class Expanded:
    """An index version's expansions as retrieval reads them: the questions by chunk id and,
    when the version stored them, their vectors by its query encoder `encoder`."""

    questions: dict[str, list[str]]
    vectors: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    encoder: str | None = None  # the embedder version of the index version


def from_training_set(
    path: Path, *, per_chunk: int | None, parts: Iterable[str] = EVERY_PART
) -> Pairs:
    """The (chunk, question) pairs of a training set's positives in `parts`, each once, in
    the set's order, with at most `per_chunk` questions per chunk (None: all): the
    confirmed ones before the associated ones, the latest asked first (a row without
    `asked_at`, from a set built before it was recorded, counts as the oldest)."""
    wanted = set(parts)
    seen: set[tuple[str, str]] = set()
    pairs: Pairs = []
    preference: dict[tuple[str, str], tuple[bool, str]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("part", "fit") not in wanted:
                continue
            pair = (str(row["positive_chunk_id"]), str(row["anchor"]))
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
                # confirmed before associated, then the latest asked
                preference[pair] = (row.get("part") != ASSOCIATED, str(row.get("asked_at", "")))
    if per_chunk is None:
        return pairs
    by_chunk: dict[str, list[tuple[str, str]]] = {}
    for pair in pairs:
        by_chunk.setdefault(pair[0], []).append(pair)
    kept: set[tuple[str, str]] = set()
    for questions in by_chunk.values():
        kept.update(sorted(questions, key=preference.__getitem__, reverse=True)[:per_chunk])
    return [pair for pair in pairs if pair in kept]


def grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Questions by chunk id."""
    out: dict[str, list[str]] = {}
    for chunk_id, question in pairs:
        out.setdefault(chunk_id, []).append(question)
    return out


def of_version(session: Session, index_version_id: int) -> Pairs:
    return [(chunk_id, question) for chunk_id, question, _ in _rows(session, index_version_id)]


def _rows(session: Session, index_version_id: int) -> list[tuple[str, str, bytes | None]]:
    """(chunk id, question, stored vector) of a version's expansions, in the order recorded."""
    rows = session.execute(
        select(IndexExpansion.chunk_id, IndexExpansion.question, IndexExpansion.vector)
        .where(IndexExpansion.index_version_id == index_version_id)
        .order_by(IndexExpansion.id)
    )
    return [(c, q, v) for c, q, v in rows]


def count(session: Session, index_version_id: int) -> int:
    """How many (chunk, question) pairs an index version has."""
    return (
        session.scalar(
            select(func.count())
            .select_from(IndexExpansion)
            .where(IndexExpansion.index_version_id == index_version_id)
        )
        or 0
    )


def of_collection(sessions: sessionmaker[Session], collection: str) -> Expanded:
    """The expansions of the index version whose collection is `collection`, with the
    vectors it stored."""
    with sessions() as session:
        version = session.execute(
            select(IndexVersion.id, IndexVersion.embedder_version).where(
                IndexVersion.collection_name == collection
            )
        ).first()
        if version is None:
            return Expanded({})
        rows = _rows(session, version.id)
    vectors = {(c, q): np.frombuffer(v, dtype=np.float32) for c, q, v in rows if v is not None}
    return Expanded(grouped((c, q) for c, q, _ in rows), vectors, version.embedder_version)


def record(
    session: Session, index_version_id: int, pairs: Pairs, *, vectors: np.ndarray | None = None
) -> int:
    """Give an index version these expansions (in place of any it had), with the questions'
    vectors by the version's query encoder when given (one row per pair); how many."""
    blobs: list[bytes | None] = [None] * len(pairs)
    if vectors is not None:
        blobs = [row.tobytes() for row in np.asarray(vectors, dtype=np.float32)]
    return _write(session, index_version_id, list(zip(pairs, blobs, strict=True)))


def carry_over(
    session: Session, parent_id: int, child_id: int, chunk_ids: set[str], *, vectors: bool
) -> int:
    """A new version of the same corpus keeps its parent's expansions of the chunks it
    keeps (a changed passage is a new chunk: what users confirmed was about the old text),
    with their stored vectors when it has the parent's query encoder (`vectors`)."""
    kept = [
        ((c, q), v if vectors else None) for c, q, v in _rows(session, parent_id) if c in chunk_ids
    ]
    return _write(session, child_id, kept)


def _write(
    session: Session, index_version_id: int, rows: list[tuple[tuple[str, str], bytes | None]]
) -> int:
    session.query(IndexExpansion).filter(
        IndexExpansion.index_version_id == index_version_id
    ).delete()
    if rows:
        session.execute(
            insert(IndexExpansion),
            [
                {"index_version_id": index_version_id, "chunk_id": c, "question": q, "vector": v}
                for (c, q), v in rows
            ],
        )
    return len(rows)
