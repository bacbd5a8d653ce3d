"""The one place where the service's resources are created and wired together.

`Services.from_settings` opens the database (and migrates it), the Chroma client, the
embedder, the generator and the MLflow tracker once; the API, the CLI, the scheduler, the
worker and tests receive the same object. Any part can be passed in instead (a test's
session-wide embedder, say).

Only those interfaces import this module. A domain function takes the narrow things it
uses: a session factory, or a `Protocol` of its own that names the parts it touches
(`IngestParts`, `AskParts`, `CycleParts`, ...); `Services` satisfies them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop import tasks
from rag_loop.auth.sessions import ConsoleSessions
from rag_loop.auth.tokens import FeedbackTokens, load_or_create_secret
from rag_loop.clock import Clock
from rag_loop.corpus.chunking import Chunker
from rag_loop.db.engine import create_db_engine, create_session_factory, upgrade
from rag_loop.db.models import EmbedderVersion, Job
from rag_loop.db.writer import BatchWriter
from rag_loop.errors import InvalidInput
from rag_loop.generation.base import Generator
from rag_loop.index import expansions
from rag_loop.index.chroma import ChromaStore, make_chroma_client
from rag_loop.index.embedders import Embedder, EmbedderPool, LazyEmbedder
from rag_loop.registry.outbox import Outbox
from rag_loop.registry.tracking import MlflowTracker
from rag_loop.retrieval.lexical import LexicalIndexes
from rag_loop.settings import GeneratorSettings, Settings, apply_environment


def make_generator(settings: GeneratorSettings) -> Generator:
    """The default backends, wired in one place."""
    if settings.backend == "extractive":
        from rag_loop.generation.extractive import ExtractiveGenerator

        return ExtractiveGenerator(settings.max_sentences)
    from rag_loop.generation.llm import chat_generator

    return chat_generator(settings)


def _embedder_path(sessions: sessionmaker[Session], version: str) -> tuple[Path, str | None] | None:
    """Where a registered embedder version's (query) model lives, and the version of its
    document encoder when it is asymmetric."""
    with sessions() as session:
        row = session.execute(
            select(EmbedderVersion.path, EmbedderVersion.document_version).where(
                EmbedderVersion.version == version
            )
        ).first()
    return (Path(row[0]), row[1]) if row else None


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ChromaStore
    embedder: Embedder
    generator: Generator
    tokens: FeedbackTokens
    console_sessions: ConsoleSessions
    tracker: MlflowTracker
    chunker: Chunker
    writer: BatchWriter
    embedders: EmbedderPool  # by version: the base and the loop's fine-tuned models
    lexical: LexicalIndexes  # BM25 beside the collections of hybrid index versions
    outbox: Outbox  # effects on MLflow and Chroma that follow SQL changes
    queue: Any = None  # a DramatiqQueue when RAG_LOOP_QUEUE_BROKER_URL is set
    job_handlers: Mapping[str, Callable[[Job], dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        generator: Generator | None = None,
        clock: Clock | None = None,
    ) -> Services:
        """`clock`: what time it is for every record and rule, carried by the engine (a
        replay's simulated clock; the system clock by default)."""
        apply_environment(settings)
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(
                f"cannot use the data directory {settings.data_dir}: {exc.strerror or exc}"
            ) from exc
        engine = create_db_engine(settings.database_url, echo=settings.database.echo, clock=clock)
        upgrade(engine)
        secret = (
            settings.auth.secret_key.get_secret_value()
            if settings.auth.secret_key
            else load_or_create_secret(settings.data_dir)
        )
        sessions = create_session_factory(engine)
        embedder = embedder or LazyEmbedder(
            settings.embedder.model,
            batch_size=settings.embedder.batch_size,
            device=settings.embedder.device,
        )
        queue = None
        if settings.queue.broker_url:
            from rag_loop.queue import DramatiqQueue

            queue = DramatiqQueue(settings.queue)
        store = ChromaStore(
            make_chroma_client(settings.chroma_path, settings.chroma.host, settings.chroma.port)
        )
        tracker = MlflowTracker(
            settings.mlflow_tracking_uri,
            settings.mlflow.experiment_prefix,
            enabled=settings.mlflow.enabled,
            artifact_root=settings.data_dir / "mlartifacts",
        )
        services = cls(
            queue=queue,
            settings=settings,
            engine=engine,
            sessions=sessions,
            store=store,
            lexical=LexicalIndexes(store, partial(expansions.of_collection, sessions)),
            embedder=embedder,
            generator=generator or make_generator(settings.generator),
            tokens=FeedbackTokens(secret, settings.auth.feedback_token_ttl_seconds),
            console_sessions=ConsoleSessions(secret, settings.auth.console_session_ttl_seconds),
            tracker=tracker,
            outbox=Outbox(
                sessions,
                tracker,
                store,
                model_name=f"{settings.mlflow.experiment_prefix}-embedder",
                retry_max_seconds=settings.mlflow.outbox_retry_max_seconds,
            ),
            chunker=Chunker(settings.chunking.chunk_size, settings.chunking.chunk_overlap),
            writer=BatchWriter(engine),
            embedders=EmbedderPool(
                embedder,
                partial(_embedder_path, sessions),
                batch_size=settings.embedder.batch_size,
                device=settings.embedder.device,
            ),
        )
        services.job_handlers = tasks.bind(services)
        return services

    def serving_embedder(self, embedder_version: str) -> Embedder:
        """The embedder that built an index version (the base or a fine-tuned model)."""
        return self.embedders.get(embedder_version)

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()
        self.writer.close()
        self.engine.dispose()
