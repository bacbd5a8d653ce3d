"""Load ahead, in every serving process, the index versions that serve or may serve next.

A promotion, an approval, a rollback or a correction in any process is seen by the very next
ask in every process (`index.versions.serving_index`). What that ask needs of the version
lives in the process, though: its query encoder (`EmbedderPool`, loaded from its folder)
and, for a hybrid version, the BM25 side with its expansions (`LexicalIndexes`, built from
the collection). The first ask that finds them missing pays for loading them: about
150 ms for a fine-tuned MiniLM and about 1.2 s for the BM25 side of SciFact's 12,411
chunks on 2 cores (`evals/bench_serving.py --parts warm`), more on a larger corpus, and
every ask behind it waits.

`warm(parts)` loads them ahead for the versions that serve or may serve next:

- the champion and a candidate in shadow mode (what serves now);
- the candidate of a cycle being evaluated or awaiting approval (what a promotion or an
  approval would serve next);
- the rollback target (what a rollback would serve).

The API runs it before it takes its first request and then every
`RAG_LOOP_RETRIEVAL_WARM_SECONDS` on its schedule's thread (`rag_loop.scheduler`), so a
version made to serve by another process (a worker's cycle, the CLI) is usually loaded
before any ask needs it. What is loaded already costs one SQL query to confirm; the pools
keep the last few of each (`EmbedderPool`, `LexicalIndexes`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.db.models import Alias, IndexVersion, LoopCycle
from rag_loop.errors import RagLoopError
from rag_loop.index.embedders import EmbedderPool
from rag_loop.index.versions import CANDIDATE, CHAMPION, PREVIOUS, retrieval_of
from rag_loop.loop.states import CycleState
from rag_loop.retrieval.lexical import LexicalIndexes

log = logging.getLogger(__name__)

#: a cycle in one of these has a candidate that one step (a promotion, an approval) serves
NEXT: tuple[CycleState, ...] = (CycleState.EVALUATING, CycleState.AWAITING_APPROVAL)


class WarmParts(Protocol):
    sessions: sessionmaker[Session]
    embedders: EmbedderPool
    lexical: LexicalIndexes


def ahead(session: Session) -> list[IndexVersion]:
    """The index versions that serve or may serve next, what serves first."""
    rows = session.execute(
        select(Alias.name, IndexVersion).join(
            IndexVersion, Alias.index_version_id == IndexVersion.id
        )
    ).all()
    aliased: dict[str, IndexVersion] = {name: version for name, version in rows}
    candidates = session.scalars(
        select(IndexVersion)
        .join(LoopCycle, LoopCycle.candidate_index_version_id == IndexVersion.id)
        .where(LoopCycle.state.in_([s.value for s in NEXT]))
        .order_by(LoopCycle.id)
    ).all()
    ordered = [aliased.get(CHAMPION), aliased.get(CANDIDATE), *candidates, aliased.get(PREVIOUS)]
    found: dict[int, IndexVersion] = {}
    for version in ordered:
        if version is not None and version.status == "ready":
            found.setdefault(version.id, version)
    return list(found.values())


@dataclass(frozen=True)
class Warmed:
    loaded: list[int]  # ids of the versions loaded (now or before)
    failed: dict[int, str]  # versions that cannot be loaded here, and why


def warm(parts: WarmParts, *, embed: bool = False) -> Warmed:
    """Load the query encoder and (hybrid versions) the BM25 side of every version that
    serves or may serve next; `embed` also embeds one query with each encoder (at start,
    on the thread pool that serves the asks). A version that cannot be loaded here (its
    encoder's folder missing, its collection gone) is skipped with why: the ask that needs
    it reports it."""
    with parts.sessions() as session:
        versions = ahead(session)
        session.expunge_all()
    loaded, failed = [], {}
    for version in versions:
        try:
            embedder = parts.embedders.get(version.embedder_version)
            if embed:
                embedder.embed_query("warm-up")
            config = retrieval_of(version)
            if config.hybrid:
                parts.lexical.get(version.collection_name, version.revision, config)
        except RagLoopError as exc:
            failed[version.id] = str(exc)
            continue
        loaded.append(version.id)
    return Warmed(loaded, failed)


class Ahead:
    """`warm`, again and again (the schedule's job, every `RAG_LOOP_RETRIEVAL_WARM_SECONDS`).
    What fails is logged when it starts failing and when it works again, not on every
    pass: a database or Chroma outage, or a version whose encoder is missing here, would
    otherwise log every few seconds for as long as it lasts."""

    def __init__(self, parts: WarmParts) -> None:
        self.parts = parts
        self.failing: dict[int | None, str] = {}  # None: the pass itself

    def __call__(self) -> None:
        try:
            failed: dict[int | None, str] = {
                key: why for key, why in warm(self.parts).failed.items()
            }
        except Exception as exc:  # the database or Chroma: the job must survive it
            failed = {None: f"{type(exc).__name__}: {exc}"}
        for key, why in failed.items():
            if self.failing.get(key) != why:
                what = "loading index versions ahead" if key is None else f"index version {key}"
                log.warning("%s failed (logged again when this changes): %s", what, why)
        for key in self.failing.keys() - failed.keys():
            what = "loading index versions ahead" if key is None else f"index version {key}"
            log.info("%s works again", what)
        self.failing = failed
