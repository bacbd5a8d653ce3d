"""Index versions and the aliases that point at them (`champion` serves)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from rag_loop.db.models import Alias, IndexExpansion, IndexVersion, now_of
from rag_loop.errors import NoServingIndex, NotFound
from rag_loop.index.retrieval_config import RetrievalConfig

CHAMPION = "champion"
CANDIDATE = "candidate"  # set while a loop cycle runs the candidate in shadow mode
PREVIOUS = "previous_champion"  # the rollback target: what served before the last promotion


def champion(session: Session) -> IndexVersion:
    version = session.scalar(
        select(IndexVersion)
        .join(Alias, Alias.index_version_id == IndexVersion.id)
        .where(Alias.name == CHAMPION)
    )
    if version is None:
        raise NoServingIndex(
            "there is no serving index yet; ingest documents first: rag-loop ingest PATH"
        )
    return version


@dataclass(frozen=True)
class ServingIndex:
    """What the ask path needs of the champion (and of a candidate in shadow mode), read
    with one Core query per request, so a promotion is seen by the very next request in
    every process."""

    id: int
    collection_name: str
    embedder: str
    embedder_version: str
    retrieval: RetrievalConfig
    revision: int
    shadow: ServingIndex | None = None


def serving_index(engine: Engine) -> ServingIndex:
    # The hottest read of the service (every ask): one statement on a raw pooled DBAPI
    # connection, compiled once per dialect. Through a SQLAlchemy Connection it cost about
    # 0.7 ms on SQLite (BEGIN, the query, ROLLBACK); this way about a tenth of that.
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            cursor.execute(_serving_sql(engine))
            rows = cursor.fetchall()
        finally:
            cursor.close()
    finally:
        raw.close()
    found = {
        row[0]: ServingIndex(
            int(row[1]), row[2], row[3], row[4], RetrievalConfig.stored(row[5]), int(row[6])
        )
        for row in rows
    }
    if CHAMPION not in found:
        raise NoServingIndex(
            "there is no serving index yet; ingest documents first: rag-loop ingest PATH"
        )
    serving = found[CHAMPION]
    if CANDIDATE in found:
        return dataclasses.replace(serving, shadow=found[CANDIDATE])
    return serving


_SERVING_SQL: dict[str, str] = {}


def _serving_sql(engine: Engine) -> str:
    sql = _SERVING_SQL.get(engine.dialect.name)
    if sql is None:
        statement = (
            select(
                Alias.name,
                IndexVersion.id,
                IndexVersion.collection_name,
                IndexVersion.embedder,
                IndexVersion.embedder_version,
                IndexVersion.retrieval,
                IndexVersion.revision,
            )
            .join(Alias, Alias.index_version_id == IndexVersion.id)
            .where(Alias.name.in_((CHAMPION, CANDIDATE)))
        )
        compiled = statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
        sql = _SERVING_SQL[engine.dialect.name] = str(compiled)
    return sql


def retrieval_of(version: IndexVersion) -> RetrievalConfig:
    return RetrievalConfig.stored(version.retrieval)


def champion_or_none(session: Session) -> IndexVersion | None:
    try:
        return champion(session)
    except NoServingIndex:
        return None


def set_alias(session: Session, name: str, version: IndexVersion) -> None:
    alias = session.get(Alias, name, with_for_update=True)
    if alias is None:
        session.add(Alias(name=name, index_version_id=version.id))
    else:
        alias.index_version_id = version.id
        alias.updated_at = now_of(session)


def protected_collections(session: Session) -> dict[str, str]:
    """Collections that must never be dropped, each with why: the serving index, the
    rollback target and a candidate in shadow mode (every aliased index version)."""
    rows = session.execute(
        select(IndexVersion.collection_name, Alias.name).join(
            Alias, Alias.index_version_id == IndexVersion.id
        )
    )
    return {collection: alias for collection, alias in rows}


def drop_alias(session: Session, name: str) -> None:
    alias = session.get(Alias, name, with_for_update=True)
    if alias is not None:
        session.delete(alias)


def get_version(session: Session, version_id: int) -> IndexVersion:
    version = session.get(IndexVersion, version_id)
    if version is None:
        raise NotFound(f"no index version {version_id}; `rag-loop index list` shows them")
    return version


def list_versions(session: Session) -> list[tuple[IndexVersion, list[str]]]:
    aliases: dict[int, list[str]] = {}
    for alias in session.scalars(select(Alias)):
        aliases.setdefault(alias.index_version_id, []).append(alias.name)
    versions = session.scalars(select(IndexVersion).order_by(IndexVersion.id))
    return [(v, aliases.get(v.id, [])) for v in versions]


def describe_versions(session: Session) -> list[dict[str, Any]]:
    """Every index version as operators see it (`rag-loop index list`, the admin API)."""
    expanded = dict(
        session.execute(
            select(IndexExpansion.index_version_id, func.count()).group_by(
                IndexExpansion.index_version_id
            )
        ).all()
    )
    return [
        {
            "id": v.id,
            "aliases": aliases,
            "status": v.status,
            "collection": v.collection_name,
            "embedder_version": v.embedder_version,
            "retrieval": RetrievalConfig.stored(v.retrieval).label,
            "expansions": int(expanded.get(v.id, 0)),
            "chunk_size": v.chunk_size,
            "chunk_overlap": v.chunk_overlap,
            "n_documents": v.n_documents,
            "n_chunks": v.n_chunks,
            "corpus_hash": v.corpus_hash,
            "mlflow_run_id": v.mlflow_run_id,
            "created_at": v.created_at.isoformat(),
            "reason": v.reason,
        }
        for v, aliases in list_versions(session)
    ]
