"""Typed request and response bodies of the API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, description="The question.")
    top_k: int | None = Field(default=None, ge=1, le=100)


class Source(BaseModel):
    rank: int
    chunk_id: str
    document_id: str
    title: str
    text: str
    score: float


class Versions(BaseModel):
    index_version: int
    collection: str
    embedder_version: str
    prompt_version: str
    generator: str


class AskOut(BaseModel):
    interaction_id: str
    answer: str
    sources: list[Source]
    cited_ranks: list[int]
    versions: Versions
    latency_ms: dict[str, float]
    feedback_token: str = Field(
        description="Signed and expiring; authorises feedback on this interaction only."
    )
    feedback_token_expires_in: int = Field(description="Seconds.")


class FeedbackOut(BaseModel):
    submission_id: str
    interaction_id: str
    created: bool = Field(description="False when this was a retry of an earlier submission.")
    event_ids: list[int]
    correction_id: int | None


class CorrectionOut(BaseModel):
    id: int
    status: str
    text: str
    interaction_id: str
    query: str | None
    answer: str | None
    created_at: str
    reviewer: str | None
    reviewed_at: str | None
    review_note: str | None
    document_id: str | None
    chunk_id: str | None
    index_version_id: int | None


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=2000)


class InteractionOut(BaseModel):
    interaction_id: str
    created_at: str
    query: str
    answer: str | None
    status: str
    error: str | None
    cited_ranks: list[int]
    top_k: int
    latency_ms: dict[str, float]
    client: str | None
    api_key_id: str | None
    versions: dict[str, Any]
    index_version: dict[str, Any] | None
    sources: list[Source]
    feedback: list[dict[str, Any]]
    labels: dict[str, Any]
    corrections: list[CorrectionOut]


class IndexVersionOut(BaseModel):
    id: int
    collection: str
    status: str
    aliases: list[str]
    embedder_version: str
    chunk_size: int
    chunk_overlap: int
    corpus_hash: str
    n_documents: int
    n_chunks: int
    mlflow_run_id: str | None
    created_at: str
    reason: str


class Health(BaseModel):
    status: str
    index_version: int | None
