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
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from rag_loop.corpus.chunking import embedding_input
from rag_loop.db.engine import transaction
from rag_loop.db.models import AuditEntry, Chunk, Document, IndexVersion
from rag_loop.errors import InvalidInput
from rag_loop.index.embedders import Embedder
from rag_loop.index.retrieval_config import RetrievalConfig
from rag_loop.registry import outbox
from rag_loop.services import Services


def _metadata(chunk: Chunk, title: str) -> dict[str, Any]:
    return {
        "document_id": chunk.document_id,
        "document_version": chunk.document_version,
        "title": title,
        "ordinal": chunk.ordinal,
    }


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
    services: Services, embedder: Embedder, parent: IndexVersion, reason: str
) -> int:
    """A `building` index version row for `embedder`, with the parent's chunking."""
    with transaction(services.sessions) as session:
        row = IndexVersion(
            collection_name=f"pending-{time.time_ns()}",
            status="building",
            embedder=embedder.name,
            embedder_version=embedder.version,
            chunk_size=parent.chunk_size,
            chunk_overlap=parent.chunk_overlap,
            chunking_hash=parent.chunking_hash,
            corpus_hash="",
            parent_id=parent.id,
            reason=reason[:256],
            retrieval=RetrievalConfig.from_settings(services.settings.retrieval).as_dict(),
        )
        session.add(row)
        session.flush()
        row.collection_name = f"{services.settings.chroma.collection_prefix}_v{row.id:05d}"
        return row.id


def live_chunks(services: Services) -> list[tuple[Chunk, str]]:
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
    services: Services,
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
    if not services.store.exists(collection):
        services.store.create(
            collection,
            {
                "index_version": version_id,
                "embedder_version": embedder.version,
                "chunking_hash": version.chunking_hash,
            },
        )
    present = services.store.ids(collection)
    wanted = {c.id for c, _ in chunks}
    stale = sorted(present - wanted)
    services.store.delete(collection, stale)
    missing = [(c, t) for c, t in chunks if c.id not in present]
    reused = 0
    if reuse_from is not None and missing:
        known = services.store.get_embeddings(reuse_from, [c.id for c, _ in missing])
        if known:
            have = [(c, t) for c, t in missing if c.id in known]
            for start in range(0, len(have), 5000):
                part = have[start : start + 5000]
                services.store.add(
                    collection,
                    [c.id for c, _ in part],
                    np.stack([known[c.id] for c, _ in part]),
                    [c.text for c, _ in part],
                    [_metadata(c, t) for c, t in part],
                )
            reused = len(have)
            missing = [(c, t) for c, t in missing if c.id not in known]
    bar: Any = None
    if progress and missing:
        from tqdm import tqdm

        bar = tqdm(total=len(missing), unit="chunk", desc=f"index v{version_id}")
    for start in range(0, len(missing), batch_size):
        batch = missing[start : start + batch_size]
        vectors = embedder.embed_documents([embedding_input(t, c.text) for c, t in batch])
        services.store.add(
            collection,
            [c.id for c, _ in batch],
            np.asarray(vectors),
            [c.text for c, _ in batch],
            [_metadata(c, t) for c, t in batch],
        )
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    corpus_hash = hashlib.sha256(
        "\n".join([embedder.version, *sorted(wanted)]).encode()
    ).hexdigest()
    seconds = time.perf_counter() - started
    n_documents = len({c.document_id for c, _ in chunks})
    first_build = version.status != "ready"
    with transaction(services.sessions) as session:
        row = session.get_one(IndexVersion, version_id)
        row.status = "ready" if row.status == "building" else row.status
        row.corpus_hash = corpus_hash
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
                    "corpus_hash": corpus_hash,
                    "parent_index_version": version.parent_id or "none",
                    "reason": version.reason,
                    "retrieval": RetrievalConfig.stored(version.retrieval).label,
                },
                metrics={
                    "n_documents": n_documents,
                    "n_chunks": len(chunks),
                    "chunks_embedded": len(missing),
                    "chunks_reused": reused,
                    "build_seconds": seconds,
                },
            )
        if first_build:
            row.build_seconds = seconds
        elif stale or missing or reused:
            row.revision += 1  # chunks came or went under a live version
        session.add(
            AuditEntry(
                actor=actor,
                action="index.build" if first_build else "index.sync",
                target=f"index_version:{version_id}",
                details={
                    "collection": collection,
                    "embedder_version": embedder.version,
                    "chunks_embedded": len(missing),
                    "chunks_reused": reused,
                    "chunks_removed": len(stale),
                },
            )
        )
    if first_build:
        services.outbox.flush_quietly()
    return BuildResult(
        version_id, collection, len(chunks), len(missing), reused, len(stale), seconds
    )
