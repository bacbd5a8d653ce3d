"""Typed request and response bodies of the API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rag_loop.inputs import INTEGRAL, NotBlank, RowId, Text
from rag_loop.loop.records import CycleView


class AskIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: NotBlank = Field(description="The question.")
    top_k: Annotated[int, Field(ge=1, le=100), INTEGRAL] | None = None


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
    retrieval: str = Field(
        description="How the index version retrieved: dense, or hybrid (BM25 + dense)."
    )


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


class ReviewOut(BaseModel):
    reviewer: str
    decision: Literal["approve", "reject"]
    note: str | None
    at: str


class CorrectionOut(BaseModel):
    id: int
    status: Literal["pending", "approved", "rejected", "disputed"]
    text: str
    interaction_id: str
    query: str | None
    answer: str | None
    created_at: str
    reviewer: str | None = Field(description="Who decided last.")
    reviewed_at: str | None
    review_note: str | None
    mode: Literal["add", "amend"] | None = Field(
        description="What approving does, set by the first approval: add the text as a new "
        "document, or amend one passage the answer was given."
    )
    proposal: dict[str, Any] | None = Field(
        description="For `amend`: the passage (`chunk_id`) and its amended `text`; in the "
        "detail view, a `diff` too, and a `drafted` one before anyone approved."
    )
    applied: bool = Field(description="Whether the correction's change serves now.")
    reviews: list[ReviewOut]
    document_id: str | None
    chunk_id: str | None
    index_version_id: int | None


class CorrectionChunkOut(BaseModel):
    rank: int
    chunk_id: str
    document_id: str
    title: str
    score: float
    text: str
    cited: bool
    label: bool | None = Field(description="The user's latest label on it, if any.")
    live: bool = Field(description="Whether it still serves (amendable).")
    selected: bool = Field(description="The passage an amendment would replace by default.")


class AmendmentOut(BaseModel):
    id: int
    correction_id: int | None
    document_id: str
    source_chunk_id: str
    source_text: str
    chunk_id: str
    text: str
    status: Literal["active", "flagged", "reverted", "replaced"]
    created_by: str
    created_at: str
    closed_by: str | None
    closed_at: str | None
    flag: dict[str, Any] | None


class CorrectionDetailOut(CorrectionOut):
    chunks: list[CorrectionChunkOut]
    amendments: list[AmendmentOut]


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    note: Text | None = Field(default=None, max_length=2000)


class ApproveIn(ReviewIn):
    """Approve as new knowledge (the default for a first approval), or as the first
    approval proposed."""

    mode: Literal["add"] | None = Field(
        default=None, description="`add`, or nothing: as the first approval proposed."
    )


class AmendIn(ReviewIn):
    """Approve as an amendment: the passage (one of the chunks the answer was given) and
    its amended text. A later approval repeats the first one's proposal, or leaves it out."""

    mode: Literal["amend"]
    chunk_id: Text = Field(min_length=1, max_length=64)
    text: NotBlank = Field(max_length=8000, description="The passage's amended text.")


class ReapplyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    chunk_id: Text = Field(max_length=64, description="The passage that serves now.")
    text: NotBlank = Field(max_length=8000, description="The amended text for it.")


class InteractionOut(BaseModel):
    interaction_id: str
    created_at: str
    query: str
    answer: str | None
    status: str = Field(description="ok, or error: the ask failed and was logged")
    error: str | None
    failed_stage: str | None = Field(description="With status error: retrieval or generation.")
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
    retrieval: str = Field(description="dense, or hybrid with its fusion settings")
    expansions: int = Field(
        description="questions users confirmed a chunk answers, indexed with it (BM25 side)"
    )
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


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, dict[str, Any]] = Field(
        description="database, chroma, serving_index: each {ok, error?}; registry_outbox: "
        "the backlog of MLflow and Chroma effects not applied yet (pending, failing, "
        "oldest_at, last_error), which never makes the service unready."
    )


class EvalIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    source: Literal["golden", "production"] = Field(
        default="golden",
        description="golden: a configured golden set against an index version; production: "
        "the latest interactions as served, with their feedback.",
    )
    golden_set: Text | None = Field(
        default=None,
        max_length=256,
        description="Name (file stem) of a configured golden set. Default: the first one.",
    )
    window: Annotated[int, Field(ge=1, le=100_000), INTEGRAL] | None = Field(
        default=None, description="production: how many recent answers."
    )
    index_version: RowId | None = Field(
        default=None, description="golden: the index version to score (default: champion)."
    )
    judge: bool = Field(default=True, description="Use the configured judge, if any.")
    limit: Annotated[int, Field(ge=1, le=100_000), INTEGRAL] | None = Field(
        default=None, description="golden: only the first N questions."
    )


class EvalSampleOut(BaseModel):
    sample_id: str
    interaction_id: str | None
    query: str
    answer: str | None
    reference: str | None
    retrieved_ids: list[str]
    reference_ids: list[str]
    scores: dict[str, float | None]
    failures: dict[str, str]


class EvalRunOut(BaseModel):
    id: str
    status: str = Field(description="running, done or failed")
    error: str | None
    trigger: str
    source: str
    dataset: str
    dataset_hash: str | None
    index_version: int | None
    embedder_version: str | None
    prompt_version: str | None
    generator: str | None
    judge: str | None
    n_samples: int
    seconds: float | None
    primary_metric: str | None
    metrics: dict[str, float] = Field(description="Exactly what the MLflow run records.")
    failures: dict[str, dict[str, int]] = Field(
        description="Judge failures per metric, by kind (timeout, unparsable, ...)."
    )
    mlflow_run_id: str | None
    created_at: str
    finished_at: str | None
    samples: list[EvalSampleOut] | None = None


class VersionComparisonOut(BaseModel):
    dataset: str
    index_version: int | None
    embedder_version: str | None
    run_id: str
    created_at: str
    primary_metric: str | None
    metrics: dict[str, float]


class DriftCheckOut(BaseModel):
    kind: str
    metric: str
    drifted: bool
    reference_value: float | None = None
    current_value: float | None = None
    statistic: float | None = None
    p_value: float | None = None
    threshold: float | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class DriftOut(BaseModel):
    drifted: bool
    event_id: int | None
    checks: list[DriftCheckOut]


class EventOut(BaseModel):
    id: int
    created_at: str
    kind: str
    payload: dict[str, Any]


# one typed model for the API and the CLI (`rag-loop loop show`)
LoopCycleOut = CycleView


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: Text = Field(default="", max_length=1000)


class DiscardIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: Text = Field(
        min_length=1, max_length=1000, description="Why the entry is given up (audit log)."
    )


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    cycle: RowId | None = Field(default=None, description="Default: the latest promotion.")
    reason: Text = Field(default="manual", max_length=1000)


class JobOut(BaseModel):
    id: str
    kind: str = Field(description="evaluation | index_build | loop_cycle")
    status: str = Field(description="queued | running | done | failed")
    payload: dict[str, Any]
    attempts: int = Field(description="Runs so far; more than 1 after a worker was lost.")
    worker: str | None
    actor: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    result: dict[str, Any]
    error: str | None


class IndexBuildIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    path: Text = Field(
        min_length=1,
        max_length=4096,
        description="A folder or file as `rag-loop ingest` takes it, on the machine that runs "
        "the job (a worker, or the API process without a broker).",
    )


class OutboxEntryOut(BaseModel):
    id: int
    kind: str = Field(description="mlflow_run, mlflow_register, mlflow_alias or drop_collection")
    created_at: str
    attempts: int
    next_attempt_at: str
    last_error: str | None
    done_at: str | None
    outcome: dict[str, Any]
    summary: dict[str, Any]


class OutboxOut(BaseModel):
    backlog: dict[str, Any] = Field(
        description="pending, failing (entries whose last try failed), oldest_at, last_error"
    )
    entries: list[OutboxEntryOut]


class OutboxFlushOut(BaseModel):
    applied: list[int]
    failed: list[int]
    postponed: list[int]
    pending: int
