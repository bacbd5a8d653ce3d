"""What a feedback submission may contain (shared by the API and the CLI)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ChunkLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chunk_id: str = Field(min_length=1, max_length=64)
    relevant: bool


class SourcePointer(BaseModel):
    """Where the right answer is: a document, or one chunk of it."""

    model_config = ConfigDict(extra="forbid")

    document_id: str | None = Field(default=None, min_length=1, max_length=512)
    chunk_id: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_target(self) -> SourcePointer:
        if not self.document_id and not self.chunk_id:
            raise ValueError("give document_id or chunk_id")
        return self


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interaction_id: str = Field(min_length=1, max_length=36)
    token: str | None = Field(
        default=None, max_length=512, description="The feedback_token of the answer."
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Retries with the same key are answered once; reusing it for a different "
        "payload is a 409.",
    )
    thumb: Literal["up", "down"] | None = None
    chunk_labels: list[ChunkLabel] = Field(default_factory=list)
    correction: str | None = Field(default=None, description="A corrected answer.")
    source: SourcePointer | None = None
    comment: str | None = None

    def is_empty(self) -> bool:
        return (
            self.thumb is None
            and not self.chunk_labels
            and not (self.correction or "").strip()
            and self.source is None
            and not (self.comment or "").strip()
        )
