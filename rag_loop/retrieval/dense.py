"""Dense retrieval: embed the query, search one Chroma collection."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rag_loop.index.chroma import ChromaStore, Hit
from rag_loop.index.embedders import Embedder


@dataclass(frozen=True)
class Retrieved:
    hits: list[Hit]
    embed_ms: float
    search_ms: float


def retrieve(
    embedder: Embedder, store: ChromaStore, collection: str, query: str, k: int
) -> Retrieved:
    t0 = time.perf_counter()
    vector = embedder.embed_query(query)
    t1 = time.perf_counter()
    hits = store.query(collection, vector, k)
    t2 = time.perf_counter()
    return Retrieved(hits, (t1 - t0) * 1000, (t2 - t1) * 1000)
