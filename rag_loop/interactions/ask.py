"""Answer a question from the serving index and log it as one interaction.

Every call writes exactly one interaction row with its retrievals (rank, chunk id, score and
the text as served), the versions used and a latency breakdown, also when the generator
fails: then the row has status `error` and the caller gets a 502/503 naming it.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert

from rag_loop.db.engine import write_connection
from rag_loop.db.models import Interaction, Retrieval, ShadowRetrieval, utcnow
from rag_loop.errors import InvalidInput, RagLoopError
from rag_loop.index.chroma import Hit
from rag_loop.index.versions import ServingIndex, serving_index
from rag_loop.retrieval.dense import retrieve
from rag_loop.services import Services

log = logging.getLogger(__name__)


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
    services: Services,
    query: str,
    *,
    top_k: int | None = None,
    api_key_id: str | None = None,
    client: str | None = None,
) -> AskResult:
    started = time.perf_counter()
    limits = services.settings.limits
    query = query.strip()
    if not query:
        raise InvalidInput("the question is empty")
    if len(query) > limits.max_query_chars:
        raise InvalidInput(
            f"the question has {len(query)} characters; the limit is {limits.max_query_chars}"
        )
    k = top_k or services.settings.retrieval.top_k
    if not 1 <= k <= 100:
        raise InvalidInput(f"top_k must be between 1 and 100, not {k}")

    index = serving_index(services.engine)
    versions = {
        "index_version": index.id,
        "collection": index.collection_name,
        "embedder_version": index.embedder_version,
        "prompt_version": services.generator.prompt_version,
        "generator": services.generator.name,
    }
    embedder = services.embedders.get(index.embedder_version)
    retrieved = retrieve(embedder, services.store, index.collection_name, query, k)

    error: RagLoopError | None = None
    answer, cited = None, []
    t_gen = time.perf_counter()
    try:
        generation = services.generator.generate(query, retrieved.hits)
        answer, cited = generation.text, generation.cited_ranks
    except RagLoopError as exc:
        error = exc
    latency = {
        "embed": round(retrieved.embed_ms, 3),
        "search": round(retrieved.search_ms, 3),
        "generate": round((time.perf_counter() - t_gen) * 1000, 3),
    }
    latency["total"] = round((time.perf_counter() - started) * 1000, 3)

    interaction_id = uuid.uuid4().hex
    with write_connection(services.engine) as conn:
        conn.execute(
            insert(Interaction),
            [
                {
                    "id": interaction_id,
                    "created_at": utcnow(),
                    "query": query,
                    "answer": answer,
                    "status": "error" if error else "ok",
                    "error": f"{error.code}: {error.message}" if error else None,
                    "index_version_id": index.id,
                    "collection_name": index.collection_name,
                    "embedder_version": index.embedder_version,
                    "prompt_version": versions["prompt_version"],
                    "generator": versions["generator"],
                    "top_k": k,
                    "cited_ranks": cited,
                    "latency_ms": latency,
                    "api_key_id": api_key_id,
                    "client": client,
                }
            ],
        )
        if retrieved.hits:
            conn.execute(
                insert(Retrieval),
                [
                    {
                        "interaction_id": interaction_id,
                        "rank": rank,
                        "chunk_id": hit.chunk_id,
                        "document_id": hit.document_id,
                        "title": hit.title,
                        "score": hit.score,
                        "text": hit.text,
                    }
                    for rank, hit in enumerate(retrieved.hits, start=1)
                ],
            )
    if index.shadow is not None and error is None:
        _shadow(services, index.shadow, interaction_id, query, k, retrieved.hits, latency)
    if error is not None:
        error.details.append({"interaction_id": interaction_id})
        raise error
    assert answer is not None
    return AskResult(
        interaction_id=interaction_id,
        answer=answer,
        sources=[_source(rank, hit) for rank, hit in enumerate(retrieved.hits, start=1)],
        cited_ranks=cited,
        versions=versions,
        latency_ms=latency,
        feedback_token=services.tokens.issue(interaction_id),
    )


def in_shadow_share(interaction_id: str, share: float) -> bool:
    """A stable draw per interaction: the same id is always in or out."""
    digest = hashlib.sha256(interaction_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def _shadow(
    services: Services,
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
        hits = retrieve(embedder, services.store, candidate.collection_name, query, k).hits
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
                        "created_at": utcnow(),
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
