"""Answer a question from the serving index and log it as one interaction.

Every call whose question passed its checks writes exactly one interaction row with its
retrievals (rank, chunk id, score and the text as served), the versions used and a latency
breakdown, also when retrieval or the generator fails: then the row has status `error`, the
stage that failed (`failed_stage`), and the caller gets a 502/503 whose details name the
interaction. Only a database that stays down through a retry leaves no row (503).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine, insert
from sqlalchemy.exc import DBAPIError

from rag_loop.auth.tokens import FeedbackTokens
from rag_loop.db.engine import insert_rows, unavailable, write_connection
from rag_loop.db.models import (
    Interaction,
    Retrieval,
    ShadowRetrieval,
    now_of,
    time_ordered_id,
)
from rag_loop.errors import InvalidInput, PayloadTooLarge, RagLoopError, UpstreamError
from rag_loop.generation.base import Generator, cited_ranks
from rag_loop.hits import Hit
from rag_loop.index.chroma import ChromaStore
from rag_loop.index.embedders import EmbedderPool
from rag_loop.index.versions import ServingIndex, serving_index
from rag_loop.retrieval.lexical import LexicalIndexes
from rag_loop.retrieval.search import retrieve
from rag_loop.settings import Settings

log = logging.getLogger(__name__)


class AskParts(Protocol):
    """What answering a question uses."""

    settings: Settings
    engine: Engine
    store: ChromaStore
    lexical: LexicalIndexes
    generator: Generator
    embedders: EmbedderPool  # by version: the base and the loop's fine-tuned models
    tokens: FeedbackTokens


@dataclass(frozen=True)
class AskResult:
    interaction_id: str
    answer: str
    sources: list[dict[str, Any]]
    cited_ranks: list[int]
    versions: dict[str, Any]
    latency_ms: dict[str, float]
    feedback_token: str


def ask(
    services: AskParts,
    query: str,
    *,
    top_k: int | None = None,
    api_key_id: str | None = None,
    client: str | None = None,
) -> AskResult:
    """Retrieve, generate, log: the whole answer at once."""
    prepared = prepare(services, query, top_k=top_k, api_key_id=api_key_id, client=client)
    t_gen = time.perf_counter()
    try:
        generation = services.generator.generate(prepared.query, prepared.hits)
    except RagLoopError as exc:
        record(services, prepared, None, [], t_gen, error=exc)
        raise
    record(services, prepared, generation.text, generation.cited_ranks, t_gen)
    return result(services, prepared, generation.text, generation.cited_ranks)


def ask_stream(services: AskParts, prepared: Prepared) -> Iterator[str]:
    """Generate for a prepared question piece by piece (a generator with a `stream` method
    streams; others yield their whole answer once). The interaction is logged when the
    answer is complete (before this iterator ends), or, if the generator fails or the
    client goes away, with status `error` and what was generated so far."""
    t_gen = time.perf_counter()
    pieces: list[str] = []
    streamer = getattr(services.generator, "stream", None)
    try:
        if streamer is None:
            pieces.append(services.generator.generate(prepared.query, prepared.hits).text)
            yield pieces[0]
        else:
            for piece in streamer(prepared.query, prepared.hits):
                if piece:
                    pieces.append(piece)
                    yield piece
    except RagLoopError as exc:
        record(services, prepared, "".join(pieces) or None, [], t_gen, error=exc)
        raise
    except GeneratorExit:  # the client went away mid-answer
        record(
            services,
            prepared,
            "".join(pieces) or None,
            [],
            t_gen,
            error=UpstreamError("the client disconnected before the answer was complete"),
        )
        raise
    text = "".join(pieces).strip()
    if not text:
        error = UpstreamError(f"the generator {services.generator.name} returned an empty answer")
        record(services, prepared, None, [], t_gen, error=error)
        raise error
    record(services, prepared, text, cited_ranks(text, len(prepared.hits)), t_gen)


@dataclass
class Prepared:
    """A question checked and retrieved for, with its interaction id, not yet answered."""

    interaction_id: str
    query: str
    k: int
    index: ServingIndex
    versions: dict[str, Any]
    hits: list[Hit]
    latency_ms: dict[str, float]
    started: float
    api_key_id: str | None
    client: str | None
    cited_ranks: list[int] = field(default_factory=list)  # set once answered


def prepare(
    services: AskParts,
    query: str,
    *,
    top_k: int | None = None,
    api_key_id: str | None = None,
    client: str | None = None,
) -> Prepared:
    """Check the question and retrieve from the serving index (nothing is written yet)."""
    started = time.perf_counter()
    limits = services.settings.limits
    query = query.strip()
    if not query:
        raise InvalidInput("the question is empty")
    if len(query) > limits.max_query_chars:
        raise PayloadTooLarge(
            f"the question has {len(query)} characters; the limit is {limits.max_query_chars}"
        )
    k = top_k or services.settings.retrieval.top_k
    if not 1 <= k <= 100:
        raise InvalidInput(f"top_k must be between 1 and 100, not {k}")

    interaction_id = time_ordered_id()
    index: ServingIndex | None = None
    try:
        index = serving_index(services.engine)
        embedder = services.embedders.get(index.embedder_version)
        retrieved = retrieve(
            embedder, services.store, services.lexical, index, index.retrieval, query, k
        )
    except (RagLoopError, DBAPIError) as exc:
        error = exc if isinstance(exc, RagLoopError) else unavailable(exc)
        if error is None:
            raise  # a database error that is not an outage: a bug, for the server log
        failure = Failure(interaction_id, query, k, index, started, api_key_id, client)
        record_failure(services, failure, "retrieval", error)
        if error is exc:
            raise
        raise error from exc
    return Prepared(
        interaction_id=interaction_id,
        query=query,
        k=k,
        index=index,
        versions=versions_of(index, services.generator),
        hits=list(retrieved.hits),
        latency_ms={
            "embed": round(retrieved.embed_ms, 3),
            "search": round(retrieved.search_ms, 3),
        },
        started=started,
        api_key_id=api_key_id,
        client=client,
    )


def versions_of(index: ServingIndex, generator: Generator) -> dict[str, Any]:
    return {
        "index_version": index.id,
        "collection": index.collection_name,
        "embedder_version": index.embedder_version,
        "prompt_version": generator.prompt_version,
        "generator": generator.name,
        "retrieval": index.retrieval.mode,
    }


@dataclass(frozen=True)
class Failure:
    """An ask that failed before there was anything to answer from."""

    interaction_id: str
    query: str
    k: int
    index: ServingIndex | None  # None when the serving index could not be read
    started: float
    api_key_id: str | None
    client: str | None


def interaction_row(
    asked: Failure | Prepared,
    *,
    prompt_version: str,
    generator: str,
    answer: str | None,
    cited: list[int],
    latency: dict[str, float],
    error: RagLoopError | None,
    stage: str | None,
) -> dict[str, Any]:
    """The `interactions` row of an ask, answered or failed (then `stage` says where)."""
    index = asked.index
    return {
        "id": asked.interaction_id,  # created_at: the column's default, the engine's clock
        "query": asked.query,
        "answer": answer,
        "status": "error" if error else "ok",
        "error": f"{error.code}: {error.message}" if error else None,
        "failed_stage": stage,
        "index_version_id": index.id if index else None,
        "collection_name": index.collection_name if index else None,
        "embedder_version": index.embedder_version if index else None,
        "prompt_version": prompt_version,
        "generator": generator,
        "top_k": asked.k,
        "cited_ranks": cited,
        "latency_ms": latency,
        "api_key_id": asked.api_key_id,
        "client": asked.client,
    }


def record_failure(services: AskParts, failure: Failure, stage: str, error: RagLoopError) -> None:
    """Log an ask that failed in `stage` as an interaction with status `error`, and name it
    in the error. If even that cannot be written (the database is down), the error goes
    out without an interaction id and the server log has the question."""
    row = interaction_row(
        failure,
        prompt_version=services.generator.prompt_version,
        generator=services.generator.name,
        answer=None,
        cited=[],
        latency={"total": round((time.perf_counter() - failure.started) * 1000, 3)},
        error=error,
        stage=stage,
    )
    try:
        insert_rows(services.engine, (Interaction, [row]))
    except RagLoopError as exc:
        log.warning(
            "an ask that failed in %s could not be logged (%s); question: %r",
            stage,
            exc.message,
            failure.query,
        )
        return
    error.details.append({"interaction_id": failure.interaction_id, "failed_stage": stage})


def record(
    services: AskParts,
    prepared: Prepared,
    answer: str | None,
    cited: list[int],
    generation_started: float,
    *,
    error: RagLoopError | None = None,
) -> None:
    """Write the interaction and its retrievals in one transaction (and the shadow
    retrieval, if a candidate is in shadow). An error names the interaction it logged."""
    interaction, retrievals = interaction_rows(
        prepared, answer, cited, generation_started, error=error
    )
    insert_rows(
        services.engine,
        (Interaction, [interaction]),
        (Retrieval, retrievals),
    )
    index = prepared.index
    if index.shadow is not None and error is None:
        _shadow(
            services,
            index.shadow,
            prepared.interaction_id,
            prepared.query,
            prepared.k,
            prepared.hits,
            prepared.latency_ms,
        )
    if error is not None and not any("interaction_id" in d for d in error.details):
        error.details.append(
            {"interaction_id": prepared.interaction_id, "failed_stage": "generation"}
        )


Rows = tuple[dict[str, Any], list[dict[str, Any]]]


def interaction_rows(
    prepared: Prepared,
    answer: str | None,
    cited: list[int],
    generation_started: float,
    *,
    error: RagLoopError | None = None,
) -> Rows:
    """The interaction row and its retrieval rows; completes the latency breakdown."""
    now = time.perf_counter()
    prepared.cited_ranks = cited
    latency = prepared.latency_ms
    latency["generate"] = round((now - generation_started) * 1000, 3)
    latency["total"] = round((now - prepared.started) * 1000, 3)
    interaction_id = prepared.interaction_id
    interaction = interaction_row(
        prepared,
        prompt_version=prepared.versions["prompt_version"],
        generator=prepared.versions["generator"],
        answer=answer,
        cited=cited,
        latency=dict(latency),
        error=error,
        stage="generation" if error else None,
    )
    retrievals = [
        {
            "interaction_id": interaction_id,
            "rank": rank,
            "chunk_id": hit.chunk_id,
            "document_id": hit.document_id,
            "title": hit.title,
            "score": hit.score,
            "text": hit.text,
        }
        for rank, hit in enumerate(prepared.hits, start=1)
    ]
    return interaction, retrievals


def result(services: AskParts, prepared: Prepared, answer: str, cited: list[int]) -> AskResult:
    return AskResult(
        interaction_id=prepared.interaction_id,
        answer=answer,
        sources=sources(prepared),
        cited_ranks=cited,
        versions=prepared.versions,
        latency_ms=prepared.latency_ms,
        feedback_token=services.tokens.issue(prepared.interaction_id),
    )


def sources(prepared: Prepared) -> list[dict[str, Any]]:
    return [_source(rank, hit) for rank, hit in enumerate(prepared.hits, start=1)]


def in_shadow_share(interaction_id: str, share: float) -> bool:
    """A stable draw per interaction: the same id is always in or out."""
    digest = hashlib.sha256(interaction_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def _shadow(
    services: AskParts,
    candidate: ServingIndex,
    interaction_id: str,
    query: str,
    k: int,
    served: list[Hit],
    latency: dict[str, float],
) -> None:
    """Shadow mode: the candidate retrieves for a share of live questions; what it would
    have shown is logged beside what was served, never shown. A failing candidate never
    fails the answer."""
    if not in_shadow_share(interaction_id, services.settings.loop.shadow_share):
        return
    started = time.perf_counter()
    try:
        embedder = services.embedders.get(candidate.embedder_version)
        hits = retrieve(
            embedder, services.store, services.lexical, candidate, candidate.retrieval, query, k
        ).hits
        shown = {h.chunk_id for h in served}
        with write_connection(services.engine) as conn:
            conn.execute(
                insert(ShadowRetrieval),
                [
                    {
                        "interaction_id": interaction_id,
                        "index_version_id": candidate.id,
                        "chunk_ids": [h.chunk_id for h in hits],
                        "document_ids": [h.document_id for h in hits],
                        "overlap": len(shown & {h.chunk_id for h in hits}) / k,
                        "created_at": now_of(conn),
                    }
                ],
            )
    except RagLoopError as exc:
        log.warning("shadow retrieval on index %s failed: %s", candidate.id, exc.message)
    latency["shadow"] = round((time.perf_counter() - started) * 1000, 3)


def _source(rank: int, hit: Hit) -> dict[str, Any]:
    return {
        "rank": rank,
        "chunk_id": hit.chunk_id,
        "document_id": hit.document_id,
        "title": hit.title,
        "text": hit.text,
        "score": hit.score,
    }
