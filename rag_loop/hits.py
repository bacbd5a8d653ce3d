"""The core value type of retrieval: one chunk as a retriever returns it. It lives low, not
in the Chroma adapter: the generator, retrieval and serving all speak it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    document_id: str
    title: str
    text: str
    score: float  # cosine similarity; for a hybrid index the fused score (0..1)
