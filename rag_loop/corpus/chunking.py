"""Split documents into chunks with LangChain's text splitters; the config is hashed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from langchain_text_splitters import RecursiveCharacterTextSplitter

SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]


@dataclass(frozen=True)
class ChunkSpec:
    id: str
    document_id: str
    ordinal: int
    text: str
    content_hash: str


class Chunker:
    """RecursiveCharacterTextSplitter with a recorded, hashed configuration."""

    splitter_name = "langchain.RecursiveCharacterTextSplitter"

    def __init__(self, chunk_size: int, chunk_overlap: int) -> None:
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self._splitter = RecursiveCharacterTextSplitter(
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            separators=SEPARATORS,
            keep_separator="end",
            strip_whitespace=True,
        )

    @property
    def config(self) -> dict[str, Any]:
        return {
            "splitter": self.splitter_name,
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.chunk_overlap,
            "separators": SEPARATORS,
            # what the embedder sees: "title\n\nchunk text"
            "embed_title": True,
        }

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()

    def split(
        self, document_id: str, document_version: int, document_hash: str, text: str
    ) -> list[ChunkSpec]:
        pieces = [p for p in self._splitter.split_text(text) if p.strip()] or [text.strip()]
        chunks = []
        for ordinal, piece in enumerate(pieces):
            key = (
                f"{document_id}\x00{document_version}\x00{document_hash}\x00"
                f"{self.config_hash}\x00{ordinal}"
            )
            chunks.append(
                ChunkSpec(
                    id="c" + hashlib.sha256(key.encode()).hexdigest()[:31],
                    document_id=document_id,
                    ordinal=ordinal,
                    text=piece,
                    content_hash=hashlib.sha256(piece.encode()).hexdigest(),
                )
            )
        return chunks


def embedding_input(title: str, text: str) -> str:
    """What the embedder sees for a chunk: its document title, then its text."""
    return f"{title}\n\n{text}" if title else text
