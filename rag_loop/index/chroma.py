"""The vector store: Chroma, embedded (PersistentClient) or a server (HttpClient).

One collection per index version. This module owns the Chroma client; nothing else
creates one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag_loop.errors import BackendUnavailable
from rag_loop.hits import Hit


def make_chroma_client(path: Path | None, host: str | None, port: int) -> Any:
    import chromadb
    from chromadb.config import Settings as ChromaClientSettings

    client_settings = ChromaClientSettings(anonymized_telemetry=False, allow_reset=False)
    try:
        if host:
            return chromadb.HttpClient(host=host, port=port, settings=client_settings)
        assert path is not None
        path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(path), settings=client_settings)
    except Exception as exc:  # chromadb raises plain ValueError/ConnectionError here
        where = f"{host}:{port}" if host else str(path)
        raise BackendUnavailable(f"cannot open Chroma at {where}: {exc}") from exc


class ChromaStore:
    """Thin, typed access to the collections of one Chroma client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _collection(self, name: str) -> Any:
        collection = self._collections.get(name)
        if collection is None:
            with self._lock:
                try:
                    collection = self.client.get_collection(name, embedding_function=None)
                except Exception as exc:
                    raise BackendUnavailable(f"Chroma collection {name!r} is missing") from exc
                self._collections[name] = collection
        return collection

    def create(self, name: str, metadata: dict[str, Any]) -> None:
        collection = self.client.create_collection(
            name,
            embedding_function=None,
            configuration={"hnsw": {"space": "cosine"}},
            metadata=metadata,
        )
        self._collections[name] = collection

    def drop(self, name: str) -> None:
        self._collections.pop(name, None)
        with contextlib.suppress(Exception):  # already gone
            self.client.delete_collection(name)

    def exists(self, name: str) -> bool:
        return name in {c.name for c in self.client.list_collections()}

    def add(
        self,
        name: str,
        ids: Sequence[str],
        embeddings: np.ndarray,
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any]],
    ) -> None:
        collection = self._collection(name)
        step = max(1, min(5000, int(self.client.get_max_batch_size())))
        for start in range(0, len(ids), step):
            end = start + step
            collection.upsert(
                ids=list(ids[start:end]),
                embeddings=embeddings[start:end],
                documents=list(texts[start:end]),
                metadatas=list(metadatas[start:end]),
            )

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            self._collection(name).delete(ids=list(ids))

    def get_embeddings(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        found: dict[str, np.ndarray] = {}
        collection = self._collection(name)
        for start in range(0, len(ids), 5000):
            result = collection.get(ids=list(ids[start : start + 5000]), include=["embeddings"])
            for chunk_id, vector in zip(result["ids"], result["embeddings"], strict=True):
                found[chunk_id] = np.asarray(vector, dtype=np.float32)
        return found

    def ids(self, name: str) -> set[str]:
        collection = self._collection(name)
        total = collection.count()
        out: set[str] = set()
        for offset in range(0, total, 5000):
            out.update(collection.get(include=[], limit=5000, offset=offset)["ids"])
        return out

    def hits(self, name: str) -> list[Hit]:
        """Every chunk of the collection (score 0), for indexes kept beside it (BM25)."""
        collection = self._collection(name)
        total = collection.count()
        out: list[Hit] = []
        for offset in range(0, total, 5000):
            page = collection.get(include=["documents", "metadatas"], limit=5000, offset=offset)
            for chunk_id, text, meta in zip(
                page["ids"], page["documents"], page["metadatas"], strict=True
            ):
                out.append(_hit(chunk_id, text, meta, 0.0))
        return out

    def count(self, name: str) -> int:
        return int(self._collection(name).count())

    def texts(self, name: str) -> list[str]:
        collection = self._collection(name)
        return [t for t in collection.get(include=["documents"])["documents"] or [] if t]

    def query(
        self, name: str, embedding: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[Hit]:
        try:
            result = self._collection(name).query(
                query_embeddings=[embedding],
                n_results=k,
                where=where,
                include=["documents", "metadatas", "distances"],
            )
        except BackendUnavailable:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"Chroma query on {name!r} failed: {exc}") from exc
        hits = []
        for chunk_id, text, meta, distance in zip(
            result["ids"][0],
            result["documents"][0],
            result["metadatas"][0],
            result["distances"][0],
            strict=True,
        ):
            hits.append(_hit(chunk_id, text, meta, round(1.0 - float(distance), 6)))
        return hits


def _hit(chunk_id: str, text: str | None, meta: Any, score: float) -> Hit:
    return Hit(
        chunk_id=chunk_id,
        document_id=str(meta["document_id"]),
        title=str(meta.get("title", "")),
        text=text or "",
        score=score,
    )
