"""What a loop cycle records, as types: the gate (its evaluation runs, deltas and verdict,
shadow figures, the post-promotion watch, a rollback), the stages' figures, and the cycle
view that the API (`GET /v1/loop/cycles/{id}`) and the CLI (`rag-loop loop show`) both
render.

The `gate` and `stages` JSON columns are written only through these models (`Gate.stored`,
`stored_stages`), so what is in them has one shape."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rag_loop.loop.states import CycleState


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageFigures(_Record):
    seconds: float = Field(default=0.0, description="Wall-clock seconds, summed over tries.")
    peak_rss_mb: float = Field(default=0.0, description="Peak resident memory (MB).")


class GateRun(_Record):
    """One evaluation the gate ran: candidate or champion on one data set."""

    dataset: str
    kind: Literal["heldout", "golden"]
    role: Literal["champion", "candidate"]
    index_version: int | None
    revision: int | None = Field(
        default=None,
        description="The index version's revision when it was measured (corrections and "
        "amendments change it in place): the gate reuses a run only at the same revision.",
    )
    eval_run_id: str
    mlflow_run_id: str | None = None
    n_samples: int
    metrics: dict[str, float | None]


class PairedQuestions(_Record):
    """The gate's questions by how the candidate ranked each against the champion."""

    better: int
    worse: int
    alike: int


class ShadowFigures(_Record):
    shadowed: int
    labelled: int
    overlap: float | None
    champion_precision: float | None
    candidate_precision: float | None


class LiveFigures(_Record):
    thumbs: int
    thumbs_down_rate: float | None
    precision: float | None


class WatchRecord(_Record):
    status: Literal["watching", "held", "rolled_back"]
    before: LiveFigures
    after: LiveFigures


class RollbackRecord(_Record):
    reason: str
    by: str
    synced: str | None = Field(
        default=None,
        description="How the rollback target caught up with the live chunks (corrections "
        "and amendments approved since it served), or why it could not.",
    )


class GoldenSplit(_Record):
    """Whether a cycle split the golden sets into a tuning part, which validates its
    choices, and a judged part, the only one the gate judges (rag_loop.loop.golden)."""

    share: float = Field(description="loop.golden_tuning_share when the cycle collected.")
    applied: bool = Field(
        description="Split only when each part left the champion room on at least "
        "loop.min_gate_queries questions; otherwise every golden set judges whole."
    )
    tuning_room: int | None = Field(
        default=None, description="Tuning questions the champion did not score perfectly."
    )
    judged_room: int | None = Field(
        default=None, description="Judged questions the champion did not score perfectly."
    )


class Gate(_Record):
    runs: dict[str, GateRun] = Field(
        default_factory=dict, description="`<dataset>|<role>` -> the evaluation run."
    )
    champion_index_version: int | None = None
    passed: bool | None = None
    reasons: list[str] = Field(default_factory=list)
    deltas: dict[str, float] = Field(default_factory=dict)
    primary_metric: str | None = None
    primary_kind: Literal["heldout", "golden"] | None = Field(
        default=None,
        description="Where the primary metric is measured: the held-out feedback queries, or "
        "the golden sets (when there are no held-out queries, or too few with room).",
    )
    heldout_floor: str | None = Field(
        default=None,
        description="Why the held-out feedback queries could not decide (too few with room "
        "for loop.min_gate_queries), when the golden sets decide instead.",
    )
    golden_split: GoldenSplit | None = None
    primary_measured_on: list[str] = Field(default_factory=list)
    primary_delta: float | None = None
    primary_questions: PairedQuestions | None = None
    primary_p_value: float | None = Field(
        default=None,
        description="One-sided p-value of the primary gain by a paired permutation test over "
        "the questions (loop.max_p_value).",
    )
    primary_room: int | None = Field(
        default=None,
        description="Of those questions, how many the champion did not already score "
        "perfectly: the only ones on which a candidate can show a gain.",
    )
    shadow_since: str | None = None
    shadow: ShadowFigures | None = None
    watch: WatchRecord | None = None
    rollback: RollbackRecord | None = None

    @classmethod
    def stored(cls, value: dict[str, Any]) -> dict[str, Any]:
        """`value` checked against the model, as the `gate` column keeps it (parts not there
        yet, such as `shadow` or `watch`, are left out; a None inside a part is kept)."""
        dumped = cls.model_validate(value).model_dump(mode="json")
        return {key: part for key, part in dumped.items() if part is not None}


def stored_stages(value: dict[str, Any]) -> dict[str, Any]:
    """The `stages` column: stage name -> its figures."""
    return {
        CycleState(name).value: StageFigures.model_validate(figures).model_dump()
        for name, figures in value.items()
    }


class TrainingSetSummary(_Record):
    id: int
    content_hash: str
    n_examples: int
    n_queries: int
    n_heldout: int
    stats: dict[str, Any]
    mlflow_run_id: str | None


class EmbedderSummary(_Record):
    id: int
    version: str
    parent_version: str | None
    base_version: str
    mlflow_model: str | None = Field(description="`<registered model>/<version>` in MLflow.")
    mlflow_run_id: str | None


class CycleView(_Record):
    """One loop cycle, as the API and the CLI show it."""

    id: int
    state: CycleState
    trigger: str
    trigger_details: dict[str, Any]
    created_at: str
    updated_at: str
    finished_at: str | None
    feedback_until: str = Field(description="Feedback up to this time built the training set.")
    champion_index_version_id: int | None = Field(
        description="What served when the cycle started; once promoted, the rollback target."
    )
    candidate_index_version_id: int | None
    training_set: TrainingSetSummary | None
    embedder: EmbedderSummary | None
    gate: Gate = Field(
        description="Evaluation runs of candidate and champion, deltas, verdict, shadow "
        "figures, the post-promotion watch and a rollback."
    )
    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="What training chose on the validation feedback: the epochs run and the "
        "one kept, whether the encoder was trained or the champion's kept, the hybrid dense "
        "weight, and the validation nDCG@10 of every epoch (0: before training).",
    )
    stages: dict[str, StageFigures] = Field(description="Seconds and peak memory per stage.")
    failed_in: CycleState | None = Field(
        default=None, description="The step a failed cycle failed in (resume goes on there)."
    )
    error: str | None
    decided_by: str | None
    mlflow_run_id: str | None
