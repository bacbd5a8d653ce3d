"""Index versions and the aliases that point at them (`champion` serves)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from rag_loop.db.models import Alias, IndexVersion, utcnow
from rag_loop.errors import NoServingIndex, NotFound

CHAMPION = "champion"


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
    """What the ask path needs of the champion, read with one Core query per request (so
    a promotion is seen by the very next request, in every process)."""

    id: int
    collection_name: str
    embedder: str
    embedder_version: str


def serving_index(engine: Engine) -> ServingIndex:
    with engine.connect() as conn:
        row = conn.execute(
            select(
                IndexVersion.id,
                IndexVersion.collection_name,
                IndexVersion.embedder,
                IndexVersion.embedder_version,
            )
            .join(Alias, Alias.index_version_id == IndexVersion.id)
            .where(Alias.name == CHAMPION)
        ).first()
    if row is None:
        raise NoServingIndex(
            "there is no serving index yet; ingest documents first: rag-loop ingest PATH"
        )
    return ServingIndex(*row)


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
        alias.updated_at = utcnow()


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
