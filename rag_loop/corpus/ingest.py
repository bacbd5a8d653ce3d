"""Ingest a folder or file: diff it against the store, build a new index version if needed.

Unchanged input changes nothing. New and changed documents get new chunk versions, removed
ones are tombstoned, and a new Chroma collection is built beside the serving one (reusing
the embeddings of unchanged chunks). Only when it is complete does one SQL transaction
record the new document and chunk versions, move the `champion` alias to it and write the
outbox entries for its MLflow run and the MLflow alias (applied after commit; an MLflow
outage delays them, never the ingest). A failure before that leaves the store and the
serving index as they were.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from rag_loop.corpus.amendments import (
    CarriedOver,
    carry_over,
    list_amendments,
    record_carry_over,
)
from rag_loop.corpus.build import (
    BuildParts,
    Entry,
    corpus_hash,
    create_index_version,
    embed_into,
    fill_collection,
)
from rag_loop.corpus.chunking import Chunker, ChunkSpec
from rag_loop.corpus.loaders import LoadedDocument, load_path
from rag_loop.db.engine import transaction
from rag_loop.db.models import (
    Amendment,
    AuditEntry,
    Chunk,
    Document,
    EmbedderVersion,
    IndexVersion,
    now_of,
)
from rag_loop.index import expansions
from rag_loop.index.embedders import Embedder, EmbedderPool
from rag_loop.index.retrieval_config import RetrievalConfig
from rag_loop.index.versions import CHAMPION, champion_or_none, set_alias
from rag_loop.registry import outbox
from rag_loop.registry.embedders import RegistryParts, ensure_base

log = logging.getLogger(__name__)


class IngestParts(BuildParts, RegistryParts, Protocol):
    """What ingesting a corpus uses: an index build's parts, the registry's, the chunker."""

    embedders: EmbedderPool  # by version: the base and the loop's fine-tuned models
    chunker: Chunker


@dataclass(frozen=True)
class IngestResult:
    changed: bool
    index_version_id: int | None
    collection_name: str | None
    documents_added: int
    documents_updated: int
    documents_unchanged: int
    documents_deleted: int
    chunks_total: int
    chunks_embedded: int
    chunks_reused: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _TargetDoc:
    """A document as it will be in the new index version."""

    id: str
    title: str
    version: int
    chunks: list[ChunkSpec]
    loaded: LoadedDocument | None = None  # set when this ingest brings new content


def ingest(
    services: IngestParts, path: Path, *, actor: str = "cli", progress: bool = False
) -> IngestResult:
    started = time.perf_counter()
    began = now_of(services.sessions)  # corrections and amendments approved from now on are "late"
    root, loaded = load_path(path)
    chunker = services.chunker

    with services.sessions() as session:
        existing = {d.id: d for d in session.scalars(select(Document))}
        amendments = list_amendments(session, "active")
        current_chunks: dict[str, list[Chunk]] = {}
        for chunk in session.scalars(
            select(Chunk).where(Chunk.superseded_at.is_(None)).order_by(Chunk.ordinal)
        ):
            current_chunks.setdefault(chunk.document_id, []).append(chunk)
        serving = champion_or_none(session)
        embedder = _ingest_embedder(services, session, serving)

    serving_retrieval = RetrievalConfig.stored(serving.retrieval) if serving else None
    retrieval = RetrievalConfig.for_new_version(services.settings.retrieval, serving_retrieval)
    rebuild_all = (
        serving is None
        or serving.chunking_hash != chunker.config_hash
        or serving.embedder_version != embedder.version
        # a changed RAG_LOOP_RETRIEVAL_* makes a new version (the embeddings are reused)
        or serving_retrieval != retrieval
    )
    loaded_ids = {d.id for d in loaded}
    added = [d for d in loaded if d.id not in existing or existing[d.id].deleted_at is not None]
    updated = [
        d
        for d in loaded
        if d.id in existing
        and existing[d.id].deleted_at is None
        and existing[d.id].content_hash != d.content_hash
    ]
    removed = [
        d
        for d in existing.values()
        if d.deleted_at is None
        and d.kind == "file"
        and d.source_root == root
        and d.id not in loaded_ids
    ]
    unchanged = len(loaded) - len(added) - len(updated)
    if not (added or updated or removed or rebuild_all):
        assert serving is not None
        return IngestResult(
            changed=False,
            index_version_id=serving.id,
            collection_name=serving.collection_name,
            documents_added=0,
            documents_updated=0,
            documents_unchanged=unchanged,
            documents_deleted=0,
            chunks_total=serving.n_chunks,
            chunks_embedded=0,
            chunks_reused=0,
            seconds=time.perf_counter() - started,
        )

    if embedder.version == services.embedder.version:
        ensure_base(services)  # the registered model has a version for `champion` to name
    # the document set of the new version; a document chunked anew keeps its amendments
    # where the amended passage is still there (corpus/amendments.py)
    targets: dict[str, _TargetDoc] = {}
    carried: list[tuple[CarriedOver, int]] = []

    def rechunk(doc_id: str, version: int, content: str, text: str) -> list[ChunkSpec]:
        result = carry_over(amendments, doc_id, chunker.split(doc_id, version, content, text))
        if result.kept or result.flagged:
            carried.append((result, version))
        return result.specs

    removed_ids = {d.id for d in removed}
    for doc in existing.values():
        if doc.deleted_at is not None or doc.id in removed_ids:
            continue
        chunks = (
            rechunk(doc.id, doc.version, doc.content_hash, doc.text)
            if rebuild_all or doc.id not in current_chunks
            else [_spec(c) for c in current_chunks[doc.id]]
        )
        targets[doc.id] = _TargetDoc(doc.id, doc.title, doc.version, chunks)
    for new in [*added, *updated]:
        version = existing[new.id].version + 1 if new.id in existing else 1
        targets[new.id] = _TargetDoc(
            new.id,
            new.title,
            version,
            rechunk(new.id, version, new.content_hash, new.text),
            loaded=new,
        )

    all_specs = [(t, spec) for t in targets.values() for spec in t.chunks]
    entries = [
        Entry(spec.id, t.id, t.version, spec.ordinal, t.title, spec.text) for t, spec in all_specs
    ]
    corpus = corpus_hash(embedder.version, (e.id for e in entries))
    version_id, collection = create_index_version(
        services,
        embedder,
        serving,
        f"ingest {root}",
        chunking=(chunker.chunk_size, chunker.chunk_overlap, chunker.config_hash),
        corpus=corpus,
        retrieval=retrieval,
    )

    try:
        reusable = serving is not None and serving.embedder_version == embedder.version
        filled = fill_collection(
            services.store,
            collection,
            entries,
            embedder,
            index_version=version_id,
            chunking_hash=chunker.config_hash,
            reuse_from=serving.collection_name if serving is not None and reusable else None,
            progress=progress,
        )
        build_seconds = time.perf_counter() - started
        counts = {
            "documents_added": len(added),
            "documents_updated": len(updated),
            "documents_unchanged": unchanged,
            "documents_deleted": len(removed),
            "n_documents": len(targets),
            "n_chunks": len(all_specs),
            "chunks_embedded": filled.embedded,
            "chunks_reused": filled.reused,
            "build_seconds": build_seconds,
        }
        with transaction(services.sessions) as session:
            _record_documents(
                session, targets, removed_ids, current_chunks, root, chunker.config_hash
            )
            for result, document_version in carried:
                record_carry_over(session, result, document_version, chunker.config_hash, actor)
            rechunked = {t.id for t in targets.values() if t.loaded is not None or rebuild_all}
            _catch_up(services, session, embedder, collection, entries, rechunked, began, actor)
            if serving is not None and retrieval.hybrid:
                expansions.carry_over(
                    session,
                    serving.id,
                    version_id,
                    {e.id for e in entries},
                    vectors=serving.embedder_version == embedder.version,
                )
            row = session.get_one(IndexVersion, version_id)
            row.status = "ready"
            row.n_documents = len(targets)
            row.n_chunks = len(all_specs)
            row.build_seconds = build_seconds
            set_alias(session, CHAMPION, row)
            outbox.log_index_version(
                session,
                version_id,
                collection=collection,
                embedder_name=embedder.name,
                embedder_version=embedder.version,
                params={
                    **{f"chunking.{k}": v for k, v in chunker.config.items()},
                    "chunking_hash": chunker.config_hash,
                    "corpus_hash": corpus,
                    "source_root": root,
                    "parent_index_version": serving.id if serving else "none",
                    "retrieval": retrieval.label,
                },
                metrics=counts,
            )
            outbox.sync_champion_alias(session, f"index version {version_id} serves (ingest)")
            session.add(
                AuditEntry(
                    actor=actor,
                    action="index.build",
                    target=f"index_version:{version_id}",
                    details={"collection": collection, "source_root": root, **counts},
                )
            )
    except BaseException as exc:
        with transaction(services.sessions) as session:
            row = session.get_one(IndexVersion, version_id)
            row.status = "failed"
            row.reason = f"{row.reason}: failed: {type(exc).__name__}: {exc}"[:256]
            outbox.drop_collection(session, collection, f"index version {version_id} failed")
        services.outbox.flush_quietly()
        raise
    services.outbox.flush_quietly()

    return IngestResult(
        changed=True,
        index_version_id=version_id,
        collection_name=collection,
        documents_added=len(added),
        documents_updated=len(updated),
        documents_unchanged=unchanged,
        documents_deleted=len(removed),
        chunks_total=len(all_specs),
        chunks_embedded=filled.embedded,
        chunks_reused=filled.reused,
        seconds=time.perf_counter() - started,
    )


def _spec(chunk: Chunk) -> ChunkSpec:
    return ChunkSpec(chunk.id, chunk.document_id, chunk.ordinal, chunk.text, chunk.content_hash)


def _record_documents(
    session: Session,
    targets: dict[str, _TargetDoc],
    removed_ids: set[str],
    current_chunks: dict[str, list[Chunk]],
    root: str,
    chunking_hash: str,
) -> None:
    now = now_of(session)
    for target in targets.values():
        new = target.loaded
        if new is None:
            continue
        doc = session.get(Document, new.id)
        if doc is None:
            session.add(
                Document(
                    id=new.id,
                    kind="file",
                    source_root=root,
                    source_path=new.source_path,
                    title=new.title,
                    text=new.text,
                    content_hash=new.content_hash,
                    version=target.version,
                )
            )
        else:
            doc.kind, doc.source_root, doc.source_path = "file", root, new.source_path
            doc.title, doc.text, doc.content_hash = new.title, new.text, new.content_hash
            doc.version, doc.updated_at, doc.deleted_at = target.version, now, None
    for doc_id in removed_ids:
        session.get_one(Document, doc_id).deleted_at = now
    session.flush()

    target_ids = {s.id for t in targets.values() for s in t.chunks}
    current_ids = {c.id for chunks in current_chunks.values() for c in chunks}
    stale = sorted(current_ids - target_ids)
    new_ids = sorted(target_ids - current_ids)
    for batch in _batches(stale):
        session.execute(
            update(Chunk)
            .where(Chunk.id.in_(batch))
            .values(superseded_at=now)
            .execution_options(synchronize_session=False)
        )
    # a chunk of the same document version may come back (e.g. a chunking config was
    # restored): revive its row instead of inserting a duplicate
    known: set[str] = set()
    for batch in _batches(new_ids):
        known.update(session.scalars(select(Chunk.id).where(Chunk.id.in_(batch))))
    for batch in _batches(sorted(known)):
        session.execute(
            update(Chunk)
            .where(Chunk.id.in_(batch))
            .values(superseded_at=None)
            .execution_options(synchronize_session=False)
        )
    fresh = set(new_ids) - known
    session.add_all(
        Chunk(
            id=spec.id,
            document_id=target.id,
            document_version=target.version,
            ordinal=spec.ordinal,
            text=spec.text,
            content_hash=spec.content_hash,
            chunking_hash=chunking_hash,
        )
        for target in targets.values()
        for spec in target.chunks
        if spec.id in fresh
    )


def _batches(items: list[str], size: int = 500) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _ingest_embedder(
    services: IngestParts, session: Session, serving: IndexVersion | None
) -> Embedder:
    """New documents are embedded by the serving index's embedder when the loop fine-tuned
    it from the service's configured model; a different configured model rebuilds all."""
    if serving is None or serving.embedder_version == services.embedder.version:
        return services.embedder
    base = session.scalar(
        select(EmbedderVersion.base_version).where(
            EmbedderVersion.version == serving.embedder_version
        )
    )
    if base == services.embedder.version:
        return services.embedders.get(serving.embedder_version)
    return services.embedder


def _catch_up(
    services: IngestParts,
    session: Session,
    embedder: Embedder,
    collection: str,
    entries: list[Entry],
    rechunked: set[str],
    began: datetime,
    actor: str,
) -> None:
    """Corrections and amendments approved while this version was building must not be
    lost from it: live chunks made since `began` that it lacks are embedded into it, and
    chunks it holds that an amendment superseded since leave it. An amendment made
    meanwhile on a document this ingest chunked anew is flagged: its passage belongs to the
    document's old version (the new version's serves)."""
    included = {e.id for e in entries}
    late = [
        (chunk, title, amendment)
        for chunk, title, amendment in session.execute(
            select(Chunk, Document.title, Amendment)
            .join(Document, Document.id == Chunk.document_id)
            .outerjoin(Amendment, (Amendment.chunk_id == Chunk.id) & (Amendment.status == "active"))
            .where(
                Chunk.created_at >= began,
                Chunk.superseded_at.is_(None),
                Document.deleted_at.is_(None),
            )
        ).all()
        if chunk.id not in included
    ]
    added = []
    for chunk, title, amendment in late:
        if amendment is not None and chunk.document_id in rechunked:
            chunk.superseded_at = now_of(session)
            amendment.status = "flagged"
            amendment.flag = {
                "reason": "the document was re-ingested while the amendment was approved",
                "at": now_of(session).isoformat(),
            }
            session.add(
                AuditEntry(
                    actor=actor,
                    action="amendment.flag",
                    target=f"amendment:{amendment.id}",
                    details={"document_id": chunk.document_id, "reason": amendment.flag["reason"]},
                )
            )
        else:
            added.append(Entry.of(chunk, title))
    if added:
        embed_into(services.store, collection, added, embedder)
    gone = [
        chunk_id
        for chunk_id in session.scalars(
            select(Chunk.id).where(Chunk.superseded_at.is_not(None), Chunk.superseded_at >= began)
        )
        if chunk_id in included
    ]
    services.store.delete(collection, gone)
