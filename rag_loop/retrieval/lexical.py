"""BM25 over an index version's chunks, kept in memory beside its Chroma collection.

Built from the collection itself (title and text of every chunk), so it holds exactly what
the dense side can return. Keyed by (collection, revision): a correction approved in any
process bumps the version's revision, and the next query here rebuilds (once, under a lock).
Uses bm25s with a Snowball stemmer and English stopwords.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from rag_loop.hits import Hit
from rag_loop.index.chroma import ChromaStore
from rag_loop.index.retrieval_config import RetrievalConfig


class LexicalIndex:
    def __init__(self, hits: list[Hit], config: RetrievalConfig) -> None:
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
        if hits:
            tokens = self._tokenizer.tokenize(
                [f"{h.title}\n{h.text}" for h in hits], return_as="tuple", show_progress=False
            )
            self._bm25.index(tokens, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk (position order); zeros when no query term is known."""
        if not self.hits:
            return np.zeros(0, dtype=np.float32)
        with self._lock:  # the tokenizer keeps state; querying never grows the vocabulary
            terms = self._tokenizer.tokenize(
                [query], update_vocab=False, return_as="string", show_progress=False
            )[0]
        known = [t for t in terms if t]  # unknown terms come back as ""
        if not known:
            return np.zeros(len(self.hits), dtype=np.float32)
        return np.asarray(self._bm25.get_scores(known), dtype=np.float32)


class LexicalIndexes:
    """Per-process cache of lexical indexes by (collection, revision)."""

    def __init__(self, store: ChromaStore, keep: int = 4) -> None:
        self.store = store
        self.keep = keep
        self._cache: OrderedDict[tuple[str, int], LexicalIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, collection: str, revision: int, config: RetrievalConfig) -> LexicalIndex:
        key = (collection, revision)
        index = self._cache.get(key)
        if index is not None:
            return index
        with self._lock:
            index = self._cache.get(key)
            if index is None:
                index = LexicalIndex(self.store.hits(collection), config)
                for stale in [k for k in self._cache if k[0] == collection]:
                    del self._cache[stale]
                self._cache[key] = index
                while len(self._cache) > self.keep:
                    self._cache.popitem(last=False)
        return index
