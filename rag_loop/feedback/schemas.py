"""What a feedback submission may contain (shared by the API and the CLI)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rag_loop.inputs import Text


class ChunkLabel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    chunk_id: Text = Field(min_length=1, max_length=64)
    relevant: bool


def _given(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema: `field` is present and matches `schema` (null does not count)."""
    return {"required": [field], "properties": {field: schema}}


class SourcePointer(BaseModel):
    """Where the right answer is: a document, or one chunk of it."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "anyOf": [
                _given("document_id", {"type": "string"}),
                _given("chunk_id", {"type": "string"}),
            ]
        },
    )

    document_id: Text | None = Field(default=None, min_length=1, max_length=512)
    chunk_id: Text | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_target(self) -> SourcePointer:
        if not self.document_id and not self.chunk_id:
            raise ValueError("give document_id or chunk_id")
        return self


# a text that says something: not empty, not only white space
SAYS_SOMETHING = {"type": "string", "pattern": r"\S"}


class FeedbackIn(BaseModel):
    """At least one of thumb, chunk_labels, correction, source and comment says something."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "anyOf": [
                _given("thumb", {"enum": ["up", "down"]}),
                _given("chunk_labels", {"type": "array", "minItems": 1}),
                _given("correction", SAYS_SOMETHING),
                _given("source", {"type": "object"}),
                _given("comment", SAYS_SOMETHING),
            ]
        },
    )

    interaction_id: Text = Field(min_length=1, max_length=36)
    token: Text | None = Field(
        default=None, max_length=512, description="The feedback_token of the answer."
    )
    idempotency_key: Text | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Retries with the same key are answered once; reusing it for a different "
        "payload is a 409.",
    )
    thumb: Literal["up", "down"] | None = None
    chunk_labels: list[ChunkLabel] = Field(default_factory=list)
    correction: Text | None = Field(default=None, description="A corrected answer.")
    source: SourcePointer | None = None
    comment: Text | None = None

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackIn:
        if self.is_empty():
            raise ValueError(
                "the feedback is empty; give a thumb, chunk_labels, a correction, a source or "
                "a comment"
            )
        return self

    def is_empty(self) -> bool:
        return (
            self.thumb is None
            and not self.chunk_labels
            and not (self.correction or "").strip()
            and self.source is None
            and not (self.comment or "").strip()
        )
