"""BM25 over an index version's chunks, kept in memory beside its Chroma collection.

Built from the collection itself (title and text of every chunk), so it holds exactly what
the dense side can return. Keyed by (collection, revision): a correction approved in any
process bumps the version's revision, and the next query here rebuilds (once, under a lock).
Uses bm25s with a Snowball stemmer and English stopwords. A chunk's document for BM25 is its
title and text, followed by the questions users confirmed it answers when the version has
such expansions (rag_loop.index.expansions). The same questions are the dense side of the
expansion when the version retrieves with it (`question_scores`), with the vectors the
version stored when it was built; a version built without them has its questions embedded
once per process by its query encoder.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping

import numpy as np

from rag_loop.hits import Hit
from rag_loop.index.chroma import ChromaStore
from rag_loop.index.embedders import Embedder
from rag_loop.index.expansions import Expanded
from rag_loop.index.retrieval_config import RetrievalConfig


class LexicalIndex:
    def __init__(
        self,
        hits: list[Hit],
        config: RetrievalConfig,
        expansions: Mapping[str, list[str]] | None = None,
        *,
        vectors: Mapping[tuple[str, str], np.ndarray] | None = None,
        encoder: str | None = None,
    ) -> None:
        """`vectors`: stored vectors of (chunk id, question) pairs by the query encoder
        whose version is `encoder`; used when they cover every question."""
        import bm25s
        import Stemmer
        from bm25s.tokenization import Tokenizer

        self.hits = hits
        self.position = {hit.chunk_id: i for i, hit in enumerate(hits)}
        self._tokenizer = Tokenizer(
            stopwords=config.stopwords, stemmer=Stemmer.Stemmer(config.stemmer).stemWord
        )
        self._lock = threading.Lock()
        self._bm25 = bm25s.BM25(k1=config.bm25_k1, b=config.bm25_b)
        expansions = expansions or {}
        # the expansions' questions and the position of the chunk each one expands
        pairs = [
            (i, h.chunk_id, q) for i, h in enumerate(hits) for q in expansions.get(h.chunk_id, ())
        ]
        self.questions = [q for _, _, q in pairs]
        self.question_rows = np.array([i for i, _, _ in pairs], dtype=np.int64)
        # question vectors by the version of the encoder that embedded them
        self._question_vectors: dict[str, np.ndarray] = {}
        stored = vectors or {}
        if encoder is not None and pairs and all((c, q) in stored for _, c, q in pairs):
            self._question_vectors[encoder] = np.stack([stored[c, q] for _, c, q in pairs])
        self._embedding = threading.Lock()
        if hits:
            documents = [
                "\n".join([h.title, h.text, *expansions.get(h.chunk_id, ())]) for h in hits
            ]
            tokens = self._tokenizer.tokenize(documents, return_as="tuple", show_progress=False)
            self._bm25.index(tokens, show_progress=False)
        # the terms by id, once: the tokenizer's own decoding rebuilds this map on every
        # call, which costs more than the rest of a query's BM25 (queries never add terms)
        self._terms = {i: term for term, i in self._tokenizer.get_vocab_dict().items()}

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk (position order); zeros when no query term is known."""
        if not self.hits:
            return np.zeros(0, dtype=np.float32)
        with self._lock:  # the tokenizer keeps state; querying never grows the vocabulary
            ids = self._tokenizer.tokenize(
                [query], update_vocab=False, return_as="ids", show_progress=False
            )[0]
        known = [t for t in (self._terms[i] for i in ids) if t]  # unknown terms are ""
        if not known:
            return np.zeros(len(self.hits), dtype=np.float32)
        return np.asarray(self._bm25.get_scores(known), dtype=np.float32)

    def question_scores(self, embedder: Embedder, vector: np.ndarray) -> np.ndarray:
        """Per chunk (position order), the best cosine of the query embedded as `vector` with
        a question the chunk was expanded with; -1 for chunks without one. The questions are
        embedded by `embedder` (the encoder that embedded `vector`) on first use, unless the
        version stored them."""
        if not self.questions:
            return np.full(len(self.hits), -1.0, dtype=np.float32)
        with self._embedding:
            vectors = self._question_vectors.get(embedder.version)
            if vectors is None:
                vectors = np.asarray(embedder.embed_queries(self.questions), dtype=np.float32)
                self._question_vectors[embedder.version] = vectors
        unit = vector / (np.linalg.norm(vector) or 1.0)
        return best_per_row(self.question_rows, len(self.hits), vectors @ unit.astype(np.float32))


def best_per_row(rows: np.ndarray, size: int, cosines: np.ndarray) -> np.ndarray:
    """The dense side of expansion for one query: per row (of `size`), the best of the
    `cosines` of the questions that expand it (`rows[i]` is question i's); -1 where none
    does. The serving index and the loop's validation (FusionCheck) both rank with it."""
    best = np.full(size, -1.0, dtype=np.float32)
    np.maximum.at(best, rows, cosines.astype(np.float32))
    return best


class LexicalIndexes:
    """Per-process cache of lexical indexes by (collection, revision). `expansions(collection)`
    gives the expansions of the version whose collection it is, with their stored vectors.
    `builds` counts the indexes this process built (`rag_loop.loop.warm` builds them ahead
    of the asks)."""

    def __init__(
        self,
        store: ChromaStore,
        expansions: Callable[[str], Expanded] | None = None,
        keep: int = 4,
    ) -> None:
        self.store = store
        self.expansions = expansions
        self.keep = keep
        self._cache: OrderedDict[tuple[str, int], LexicalIndex] = OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0

    def get(self, collection: str, revision: int, config: RetrievalConfig) -> LexicalIndex:
        key = (collection, revision)
        index = self._cache.get(key)
        if index is not None:
            return index
        with self._lock:
            index = self._cache.get(key)
            if index is None:
                expanded = self.expansions(collection) if self.expansions else Expanded({})
                index = LexicalIndex(
                    self.store.hits(collection),
                    config,
                    expanded.questions,
                    vectors=expanded.vectors,
                    encoder=expanded.encoder,
                )
                self.builds += 1
                for stale in [k for k in self._cache if k[0] == collection]:
                    del self._cache[stale]
                self._cache[key] = index
                while len(self._cache) > self.keep:
                    self._cache.popitem(last=False)
        return index
