"""How an index version retrieves: dense only, or hybrid (BM25 fused with dense).

The configuration is part of the index version (column `index_versions.retrieval`), like its
embedder: a loop candidate is gated with the configuration it will serve with, and changing
`RAG_LOOP_RETRIEVAL_MODE` takes effect through a new index version, never under a running one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any, Literal

from rag_loop.settings import RetrievalSettings


@dataclass(frozen=True)
class RetrievalConfig:
    mode: Literal["dense", "hybrid"] = "dense"
    # hybrid: fused = dense_weight * minmax(cosine) + (1 - dense_weight) * minmax(BM25), over
    # the union of the dense and the BM25 top `candidates`
    dense_weight: float = 0.5
    candidates: int = 100
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    stemmer: str = "english"
    stopwords: str = "english"
    # dense side of document expansion (rag_loop.index.expansions): a chunk's cosine is the
    # best of the query's with the chunk and with each question users confirmed it answers.
    # Chosen by the loop on the validation feedback, never a setting; versions stored
    # before it existed read False and retrieve as they were gated.
    dense_expansion: bool = False

    @property
    def hybrid(self) -> bool:
        return self.mode == "hybrid"

    def as_dict(self) -> dict[str, Any] | None:
        """What the index version stores; None means dense (the pre-hybrid default)."""
        return asdict(self) if self.hybrid else None

    @property
    def label(self) -> str:
        if not self.hybrid:
            return "dense"
        return (
            f"hybrid(dense_weight={self.dense_weight}, candidates={self.candidates}, "
            f"bm25 k1={self.bm25_k1} b={self.bm25_b}"
            + (", dense expansion" if self.dense_expansion else "")
            + ")"
        )

    @classmethod
    def from_settings(cls, settings: RetrievalSettings) -> RetrievalConfig:
        return cls(
            mode=settings.mode,
            dense_weight=settings.dense_weight,
            candidates=settings.hybrid_candidates,
            bm25_k1=settings.bm25_k1,
            bm25_b=settings.bm25_b,
        )

    @classmethod
    def for_new_version(
        cls, settings: RetrievalSettings, serving: RetrievalConfig | None
    ) -> RetrievalConfig:
        """How a new index version retrieves: as the settings say, with the dense weight and
        dense expansion the loop chose for the serving version when it fuses the same way
        otherwise (the setting's weight is where the loop starts, not a value it must keep)."""
        configured = cls.from_settings(settings)
        if (
            serving is not None
            and configured.hybrid
            and replace(serving, dense_weight=configured.dense_weight, dense_expansion=False)
            == configured
        ):
            return serving
        return configured

    def with_weight(self, dense_weight: float | None) -> RetrievalConfig:
        return self if dense_weight is None else replace(self, dense_weight=dense_weight)

    def with_dense_expansion(self, on: bool) -> RetrievalConfig:
        return replace(self, dense_expansion=on and self.hybrid)

    @classmethod
    def stored(cls, value: dict[str, Any] | str | None) -> RetrievalConfig:
        """From the column: a dict, JSON text (a raw SQLite cursor) or None (dense)."""
        if value is None:
            return DENSE
        if isinstance(value, str):
            return _parse(value)
        return cls(**value)


DENSE = RetrievalConfig()


@lru_cache(maxsize=64)
def _parse(text: str) -> RetrievalConfig:
    value = json.loads(text)
    return DENSE if value is None else RetrievalConfig(**value)
