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
training set.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.db.models import IndexExpansion, IndexVersion

Pairs = list[tuple[str, str]]  # (chunk id, question)


def from_training_set(path: Path, *, parts: Iterable[str] = ("fit", "validation")) -> Pairs:
    """The (chunk, question) pairs of a training set's positives in `parts`, each once."""
    wanted = set(parts)
    seen: set[tuple[str, str]] = set()
    pairs: Pairs = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("part", "fit") not in wanted:
                continue
            pair = (str(row["positive_chunk_id"]), str(row["anchor"]))
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
    return pairs


def grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Questions by chunk id."""
    out: dict[str, list[str]] = {}
    for chunk_id, question in pairs:
        out.setdefault(chunk_id, []).append(question)
    return out


def of_version(session: Session, index_version_id: int) -> Pairs:
    rows = session.execute(
        select(IndexExpansion.chunk_id, IndexExpansion.question)
        .where(IndexExpansion.index_version_id == index_version_id)
        .order_by(IndexExpansion.id)
    )
    return [(chunk_id, question) for chunk_id, question in rows]


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


def of_collection(sessions: sessionmaker[Session], collection: str) -> dict[str, list[str]]:
    """The expansions of the index version whose collection is `collection`, by chunk id."""
    with sessions() as session:
        version_id = session.scalar(
            select(IndexVersion.id).where(IndexVersion.collection_name == collection)
        )
        return grouped(of_version(session, version_id)) if version_id is not None else {}


def record(session: Session, index_version_id: int, pairs: Pairs) -> int:
    """Give an index version these expansions (in place of any it had); how many."""
    session.query(IndexExpansion).filter(
        IndexExpansion.index_version_id == index_version_id
    ).delete()
    if pairs:
        session.execute(
            insert(IndexExpansion),
            [
                {"index_version_id": index_version_id, "chunk_id": c, "question": q}
                for c, q in pairs
            ],
        )
    return len(pairs)


def carry_over(session: Session, parent_id: int, child_id: int, chunk_ids: set[str]) -> int:
    """A new version of the same corpus keeps its parent's expansions of the chunks it
    keeps (a changed passage is a new chunk: what users confirmed was about the old text)."""
    pairs = [(c, q) for c, q in of_version(session, parent_id) if c in chunk_ids]
    return record(session, child_id, pairs)
