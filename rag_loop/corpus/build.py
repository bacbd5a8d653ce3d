"""Build an index version of the live corpus with another embedder, beside the serving one.

The loop's candidate index: every live chunk (documents and approved corrections) embedded
by a fine-tuned model into a new Chroma collection while the champion keeps serving.

Resumable: the collection is filled in batches, and a build that was cut off goes on from
what the collection already holds (an embedder is deterministic, so a chunk embedded before
the crash is as good as one embedded now). Calling `build_index` on a finished version
syncs it with the corpus as it is now (chunks added or superseded since), which is how a
candidate catches up with ingests and corrections just before it is promoted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.corpus.chunking import embedding_input
from rag_loop.db.engine import transaction
from rag_loop.db.models import AuditEntry, Chunk, Document, IndexVersion
from rag_loop.errors import InvalidInput
from rag_loop.index.chroma import ChromaStore
from rag_loop.index.embedders import Embedder
from rag_loop.index.retrieval_config import RetrievalConfig
from rag_loop.registry import outbox
from rag_loop.registry.outbox import Outbox
from rag_loop.settings import Settings


class BuildParts(Protocol):
    """What building an index version uses."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ChromaStore
    outbox: Outbox


@dataclass(frozen=True)
class Entry:
    """One chunk as an index version's collection holds it."""

    id: str
    document_id: str
    document_version: int
    ordinal: int
    title: str
    text: str

    @classmethod
    def of(cls, chunk: Chunk, title: str) -> Entry:
        return cls(
            chunk.id, chunk.document_id, chunk.document_version, chunk.ordinal, title, chunk.text
        )

    @property
    def metadata(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "document_version": self.document_version,
            "title": self.title,
            "ordinal": self.ordinal,
        }


@dataclass(frozen=True)
class Filled:
    embedded: int
    reused: int
    removed: int


def fill_collection(
    store: ChromaStore,
    collection: str,
    entries: list[Entry],
    embedder: Embedder,
    *,
    index_version: int,
    chunking_hash: str,
    reuse_from: str | None = None,
    batch_size: int = 512,
    progress: bool = False,
) -> Filled:
    """The one index builder, for ingests and the loop's candidates alike: make the
    collection hold exactly `entries`. It is created when missing; entries it holds are
    kept, others removed; vectors `reuse_from` holds (a collection whose vectors the same
    document encoder made) are copied; the rest are embedded in batches. Resumable: a build
    that was cut off goes on from what the collection holds."""
    if not store.exists(collection):
        store.create(
            collection,
            {
                "index_version": index_version,
                "embedder_version": embedder.version,
                "chunking_hash": chunking_hash,
            },
        )
    present = store.ids(collection)
    wanted = {e.id for e in entries}
    stale = sorted(present - wanted)
    store.delete(collection, stale)
    missing = [e for e in entries if e.id not in present]
    reused = 0
    if reuse_from is not None and missing:
        known = store.get_embeddings(reuse_from, [e.id for e in missing])
        have = [e for e in missing if e.id in known]
        for start in range(0, len(have), 5000):
            part = have[start : start + 5000]
            _add(store, collection, part, np.stack([known[e.id] for e in part]))
        reused = len(have)
        missing = [e for e in missing if e.id not in known]
    embed_into(store, collection, missing, embedder, batch_size=batch_size, progress=progress)
    return Filled(embedded=len(missing), reused=reused, removed=len(stale))


def embed_into(
    store: ChromaStore,
    collection: str,
    entries: list[Entry],
    embedder: Embedder,
    *,
    batch_size: int = 512,
    progress: bool = False,
) -> None:
    """Embed entries with the collection's embedder and add them, batch by batch."""
    bar: Any = None
    if progress and entries:
        from tqdm import tqdm

        bar = tqdm(total=len(entries), unit="chunk", desc=collection)
    for start in range(0, len(entries), batch_size):
        batch = entries[start : start + batch_size]
        vectors = embedder.embed_documents([embedding_input(e.title, e.text) for e in batch])
        _add(store, collection, batch, np.asarray(vectors))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()


def _add(store: ChromaStore, collection: str, entries: list[Entry], vectors: Any) -> None:
    store.add(
        collection,
        [e.id for e in entries],
        vectors,
        [e.text for e in entries],
        [e.metadata for e in entries],
    )


def corpus_hash(embedder_version: str, chunk_ids: Iterable[str]) -> str:
    """What an index version holds: its embedder and its chunks."""
    return hashlib.sha256("\n".join([embedder_version, *sorted(chunk_ids)]).encode()).hexdigest()


@dataclass(frozen=True)
class BuildResult:
    index_version_id: int
    collection_name: str
    chunks_total: int
    chunks_embedded: int
    chunks_reused: int
    chunks_removed: int
    seconds: float


def create_index_version(
    services: BuildParts,
    embedder: Embedder,
    parent: IndexVersion | None,
    reason: str,
    *,
    chunking: tuple[int, int, str] | None = None,
    corpus: str = "",
    retrieval: RetrievalConfig | None = None,
) -> tuple[int, str]:
    """A `building` index version row for `embedder` with `retrieval` (by default the
    configured one, keeping the parent's learned weight) and `chunking` (size, overlap,
    hash; the parent's when not given); its id and collection."""
    if retrieval is None:
        retrieval = RetrievalConfig.for_new_version(
            services.settings.retrieval,
            RetrievalConfig.stored(parent.retrieval) if parent is not None else None,
        )
    if chunking is None:
        assert parent is not None, "a first index version names its chunking"
        chunking = (parent.chunk_size, parent.chunk_overlap, parent.chunking_hash)
    size, overlap, chunking_hash = chunking
    with transaction(services.sessions) as session:
        row = IndexVersion(
            collection_name=f"pending-{time.time_ns()}",
            status="building",
            embedder=embedder.name,
            embedder_version=embedder.version,
            chunk_size=size,
            chunk_overlap=overlap,
            chunking_hash=chunking_hash,
            corpus_hash=corpus,
            parent_id=parent.id if parent else None,
            reason=reason[:256],
            retrieval=retrieval.as_dict(),
        )
        session.add(row)
        session.flush()
        row.collection_name = f"{services.settings.chroma.collection_prefix}_v{row.id:05d}"
        return row.id, row.collection_name


def live_chunks(services: BuildParts) -> list[tuple[Chunk, str]]:
    with services.sessions() as session:
        rows = session.execute(
            select(Chunk, Document.title)
            .join(Document, Document.id == Chunk.document_id)
            .where(Chunk.superseded_at.is_(None), Document.deleted_at.is_(None))
            .order_by(Chunk.id)
        ).all()
        session.expunge_all()
    return [(c, t) for c, t in rows]


def build_index(
    services: BuildParts,
    version_id: int,
    embedder: Embedder,
    *,
    batch_size: int = 512,
    progress: bool = False,
    actor: str = "loop",
    reuse_from: str | None = None,
) -> BuildResult:
    """Fill (or sync) the version's collection; `reuse_from` names a collection whose
    vectors were made by the same document encoder, copied instead of embedded again."""
    started = time.perf_counter()
    with services.sessions() as session:
        version = session.get(IndexVersion, version_id)
        if version is None:
            raise InvalidInput(f"no index version {version_id}")
        session.expunge(version)
    if version.embedder_version != embedder.version:
        raise InvalidInput(
            f"index version {version_id} is built with {version.embedder_version}, "
            f"not {embedder.version}"
        )
    collection = version.collection_name
    chunks = live_chunks(services)
    filled = fill_collection(
        services.store,
        collection,
        [Entry.of(c, t) for c, t in chunks],
        embedder,
        index_version=version_id,
        chunking_hash=version.chunking_hash,
        reuse_from=reuse_from,
        batch_size=batch_size,
        progress=progress,
    )
    corpus = corpus_hash(embedder.version, (c.id for c, _ in chunks))
    seconds = time.perf_counter() - started
    n_documents = len({c.document_id for c, _ in chunks})
    first_build = version.status != "ready"
    with transaction(services.sessions) as session:
        row = session.get_one(IndexVersion, version_id)
        row.status = "ready" if row.status == "building" else row.status
        row.corpus_hash = corpus
        row.n_documents = n_documents
        row.n_chunks = len(chunks)
        if first_build:
            outbox.log_index_version(
                session,
                version_id,
                collection=collection,
                embedder_name=embedder.name,
                embedder_version=embedder.version,
                params={
                    "chunking_hash": version.chunking_hash,
                    "chunk_size": version.chunk_size,
                    "chunk_overlap": version.chunk_overlap,
                    "corpus_hash": corpus,
                    "parent_index_version": version.parent_id or "none",
                    "reason": version.reason,
                    "retrieval": RetrievalConfig.stored(version.retrieval).label,
                },
                metrics={
                    "n_documents": n_documents,
                    "n_chunks": len(chunks),
                    "chunks_embedded": filled.embedded,
                    "chunks_reused": filled.reused,
                    "build_seconds": seconds,
                },
            )
        if first_build:
            row.build_seconds = seconds
        elif filled.embedded or filled.reused or filled.removed:
            row.revision += 1  # chunks came or went under a live version
        session.add(
            AuditEntry(
                actor=actor,
                action="index.build" if first_build else "index.sync",
                target=f"index_version:{version_id}",
                details={
                    "collection": collection,
                    "embedder_version": embedder.version,
                    "chunks_embedded": filled.embedded,
                    "chunks_reused": filled.reused,
                    "chunks_removed": filled.removed,
                },
            )
        )
    if first_build:
        services.outbox.flush_quietly()
    return BuildResult(
        version_id, collection, len(chunks), filled.embedded, filled.reused, filled.removed, seconds
    )
