"""Embedder versions: a row in SQL (what the service loads) and a version of one registered
model in MLflow (`<prefix>-embedder`), whose `champion` alias follows the serving index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.db.engine import transaction
from rag_loop.db.models import EmbedderVersion, TrainingSet
from rag_loop.index.embedders import DEFAULT_MODEL, Embedder, resolve_model_path
from rag_loop.registry import outbox
from rag_loop.registry.outbox import Outbox
from rag_loop.settings import Settings

CHAMPION_ALIAS = outbox.CHAMPION_ALIAS


class RegistryParts(Protocol):
    """What recording embedder versions uses."""

    settings: Settings
    sessions: sessionmaker[Session]
    embedder: Embedder  # the service's configured (base) model
    outbox: Outbox


@dataclass(frozen=True)
class TrainedModel:
    """A fine-tuned model on disk, as the trainer hands it to the registry."""

    folder: Path
    version: str  # folder name @ weights hash, as SentenceTransformerEmbedder names it
    seconds: float
    params: dict[str, Any]
    metrics: dict[str, float]


def model_name(services: RegistryParts) -> str:
    return f"{services.settings.mlflow.experiment_prefix}-embedder"


def embedder_row(services: RegistryParts, version: str) -> EmbedderVersion | None:
    with services.sessions() as session:
        row = session.scalar(select(EmbedderVersion).where(EmbedderVersion.version == version))
        if row is not None:
            session.expunge(row)
        return row


def ensure_base(services: RegistryParts) -> EmbedderVersion:
    """The service's configured model as an embedder version: its SQL row and, through the
    outbox, its MLflow run and registered model version (once)."""
    embedder = services.embedder
    row = embedder_row(services, embedder.version)
    if row is not None:
        return row
    folder = resolve_model_path(services.settings.embedder.model)
    with transaction(services.sessions) as session:
        existing = session.scalar(
            select(EmbedderVersion).where(EmbedderVersion.version == embedder.version)
        )
        if existing is None:
            existing = EmbedderVersion(
                version=embedder.version,
                name=embedder.name,
                path=str(folder),
                base_version=embedder.version,
            )
            session.add(existing)
            outbox.register_embedder(
                session,
                existing,
                run_name=f"embedder-{embedder.name}",
                params={"embedder_version": embedder.version, "path": str(folder), "kind": "base"},
                metrics={},
                tags={"rag_loop.embedder_version": embedder.version, "rag_loop.kind": "base"},
                folder=folder,
                description=f"base model {embedder.name}",
                packaged=services.settings.embedder.model == DEFAULT_MODEL,  # shipped by a package
            )
            session.flush()
        session.expunge(existing)
    services.outbox.flush_quietly()
    return embedder_row(services, embedder.version) or existing


def register_trained(
    services: RegistryParts,
    trained: TrainedModel,
    parent: EmbedderVersion,
    training_set: TrainingSet,
    *,
    cycle_id: int,
    version: str,
    document_version: str | None,
) -> EmbedderVersion:
    """Record a fine-tuned model: the SQL row the service loads it by and, through the
    outbox, an MLflow run with its parameters, loss and training set as a dataset input,
    the weights as the run's artifact and a new registered model version tagged with its
    lineage."""
    tags = {
        "rag_loop.kind": "embedder",
        "rag_loop.embedder_version": version,
        "rag_loop.document_encoder": document_version or "same",
        "rag_loop.parent_embedder": parent.version,
        "rag_loop.base_embedder": parent.base_version,
        "rag_loop.training_set": training_set.content_hash,
        "rag_loop.loop_cycle": str(cycle_id),
    }
    params: dict[str, Any] = {
        **trained.params,
        "embedder_version": version,
        "document_encoder": document_version or "same",
        "parent_embedder": parent.version,
        "base_embedder": parent.base_version,
        "training_set": training_set.content_hash,
        "training_set_run": training_set.mlflow_run_id or "none",
    }
    with transaction(services.sessions) as session:
        row = EmbedderVersion(
            version=version,
            name=trained.folder.name,
            path=str(trained.folder),
            document_version=document_version,
            parent_version=parent.version,
            base_version=parent.base_version,
            training_set_id=training_set.id,
            train_seconds=trained.seconds,
            params=params,
        )
        session.add(row)
        outbox.register_embedder(
            session,
            row,
            run_name=f"embedder-{trained.folder.name}",
            params=params,
            metrics=trained.metrics,
            tags=tags,
            folder=trained.folder,
            description=f"fine-tuned from {parent.version} on training set "
            f"{training_set.content_hash[:12]} (loop cycle {cycle_id})",
            dataset={
                "rows": [{"path": training_set.path, "examples": training_set.n_examples}],
                "name": f"feedback-{training_set.content_hash[:12]}",
                "digest": training_set.content_hash[:36],
                "source": training_set.path,
                "context": "training",
            },
        )
        session.flush()
        row_id = row.id
    services.outbox.flush_quietly()
    with services.sessions() as session:
        found = session.get_one(EmbedderVersion, row_id)
        session.expunge(found)
    return found


def model_folder(services: RegistryParts, cycle_id: int) -> Path:
    return services.settings.data_dir / "models" / f"embedder-c{cycle_id:04d}"
