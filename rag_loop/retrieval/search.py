"""Retrieve from one index version the way that version is configured to retrieve.

dense   embed the query, search the version's Chroma collection (cosine).
hybrid  the dense top `candidates` and the BM25 top `candidates` (rag_loop.retrieval.lexical)
        are pooled; each side's scores are min-max normalised over the pool (a chunk that only
        BM25 found gets its exact cosine from its stored embedding) and fused as
        dense_weight * dense + (1 - dense_weight) * bm25. Convex fusion of normalised scores
        beat reciprocal-rank fusion on SciFact (README, loop benchmark). With dense expansion
        (a loop candidate's choice) a chunk's cosine is the best of the query's with the
        chunk and with the questions it was expanded with, and the chunks of the top
        `candidates` such questions join the pool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rag_loop.hits import Hit
from rag_loop.index.chroma import ChromaStore
from rag_loop.index.embedders import Embedder
from rag_loop.index.retrieval_config import RetrievalConfig
from rag_loop.retrieval.lexical import LexicalIndexes


class Target(Protocol):
    """An index version as the retriever needs it (ServingIndex or a configured row)."""

    @property
    def collection_name(self) -> str: ...
    @property
    def revision(self) -> int: ...


@dataclass(frozen=True)
class Retrieved:
    hits: list[Hit]
    embed_ms: float
    search_ms: float


def retrieve(
    embedder: Embedder,
    store: ChromaStore,
    lexical: LexicalIndexes,
    target: Target,
    config: RetrievalConfig,
    query: str,
    k: int,
) -> Retrieved:
    t0 = time.perf_counter()
    vector = embedder.embed_query(query)
    t1 = time.perf_counter()
    hits = search(store, lexical, target, config, query, vector, k, embedder)
    t2 = time.perf_counter()
    return Retrieved(hits, (t1 - t0) * 1000, (t2 - t1) * 1000)


def search(
    store: ChromaStore,
    lexical: LexicalIndexes,
    target: Target,
    config: RetrievalConfig,
    query: str,
    vector: np.ndarray,
    k: int,
    embedder: Embedder,
) -> list[Hit]:
    """The top `k` chunks for a query that `embedder` embedded as `vector`, best first (the
    encoder embeds the questions of a version with dense expansion too)."""
    if not config.hybrid:
        return store.query(target.collection_name, vector, k)
    depth = max(k, config.candidates)
    dense = store.query(target.collection_name, vector, depth)
    index = lexical.get(target.collection_name, target.revision, config)
    bm25 = index.scores(query)

    pool: dict[str, Hit] = {hit.chunk_id: hit for hit in dense}
    cosine: dict[str, float] = {hit.chunk_id: hit.score for hit in dense}
    found: list[int] = []  # positions in the lexical index of chunks the dense top missed
    if bm25.size:
        top = np.argpartition(-bm25, min(depth, bm25.size - 1))[:depth]
        found.extend(int(i) for i in top if bm25[i] > 0)
    asked = np.empty(0, dtype=np.float32)
    if config.dense_expansion and index.questions:
        asked = index.question_scores(embedder, vector)
        top = np.argpartition(-asked, min(depth, asked.size - 1))[:depth]
        found.extend(int(i) for i in top if asked[i] > -1.0)
    extra = [index.hits[i] for i in dict.fromkeys(found) if index.hits[i].chunk_id not in pool]
    if extra:
        stored = store.get_embeddings(target.collection_name, [h.chunk_id for h in extra])
        query_unit = vector / (np.linalg.norm(vector) or 1.0)
        for hit in extra:
            embedding = stored.get(hit.chunk_id)
            if embedding is None:  # removed since the lexical index was built
                continue
            pool[hit.chunk_id] = hit
            cosine[hit.chunk_id] = float(
                embedding @ query_unit / (np.linalg.norm(embedding) or 1.0)
            )
    if asked.size:
        for chunk_id in pool:
            at = index.position.get(chunk_id)
            if at is not None:
                cosine[chunk_id] = max(cosine[chunk_id], float(asked[at]))
    ids = list(pool)
    fused = fuse(
        np.array([cosine[i] for i in ids], dtype=np.float64),
        np.array(
            [bm25[index.position[i]] if i in index.position else 0.0 for i in ids],
            dtype=np.float64,
        ),
        config.dense_weight,
    )
    order = np.argsort(-fused, kind="stable")[:k]
    return [_with_score(pool[ids[i]], round(float(fused[i]), 6)) for i in order]


def fuse(cosine: np.ndarray, bm25: np.ndarray, dense_weight: float) -> np.ndarray:
    """The hybrid score of a candidate pool: each side min-max normalised over the pool,
    then dense_weight * dense + (1 - dense_weight) * BM25."""
    return dense_weight * _minmax(cosine) + (1.0 - dense_weight) * _minmax(bm25)


def _minmax(values: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return values
    low, high = values.min(), values.max()
    if high - low <= 1e-12:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _with_score(hit: Hit, score: float) -> Hit:
    return Hit(hit.chunk_id, hit.document_id, hit.title, hit.text, score)
