"""From one answer to everything that made its retriever: the audit walk.

interaction -> index version (collection, MLflow run) -> embedder version (model registry
version, parent, base) -> training set (content hash, MLflow run, the feedback it was built
from) -> the loop cycle that promoted the index and the evaluation runs of its gate.
The training set is the cycle's (its questions are the index's expansions, and the
encoder's examples when the cycle trained one); an index built by `ingest` with the base
model ends the walk at the embedder.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.db.models import (
    EmbedderVersion,
    EvalRun,
    IndexVersion,
    Interaction,
    LoopCycle,
    TrainingSet,
)
from rag_loop.errors import NotFound
from rag_loop.index import expansions


def trace(sessions: sessionmaker[Session], interaction_id: str) -> dict[str, Any]:
    with sessions() as session:
        interaction = session.get(Interaction, interaction_id)
        if interaction is None:
            raise NotFound(f"no interaction {interaction_id!r}")
        out: dict[str, Any] = {
            "interaction": {
                "id": interaction.id,
                "created_at": interaction.created_at.isoformat(),
                "query": interaction.query,
                "prompt_version": interaction.prompt_version,
                "generator": interaction.generator,
                "embedder_version": interaction.embedder_version,
                "sources": [
                    {"rank": r.rank, "chunk_id": r.chunk_id, "document_id": r.document_id}
                    for r in interaction.retrievals
                ],
            },
            "index_version": None,
            "embedder": None,
            "training_set": None,
            "promoted_by": None,
        }
        index = (
            session.get(IndexVersion, interaction.index_version_id)
            if interaction.index_version_id
            else None
        )
        if index is None:
            return out
        out["index_version"] = {
            "id": index.id,
            "collection": index.collection_name,
            "embedder_version": index.embedder_version,
            "corpus_hash": index.corpus_hash,
            "parent_id": index.parent_id,
            "reason": index.reason,
            "mlflow_run_id": index.mlflow_run_id,
            "expansions": expansions.count(session, index.id),
        }
        model = session.scalar(
            select(EmbedderVersion).where(EmbedderVersion.version == index.embedder_version)
        )
        out["embedder"] = {
            "version": index.embedder_version,
            "parent_version": model.parent_version if model else None,
            "base_version": model.base_version if model else index.embedder_version,
            "path": model.path if model else None,
            "mlflow_model": f"{model.mlflow_model_name}/{model.mlflow_model_version}"
            if model and model.mlflow_model_name
            else None,
            "mlflow_run_id": model.mlflow_run_id if model else None,
            "training_params": model.params if model else {},
            "training_set_id": model.training_set_id if model else None,
        }
        cycle = session.scalar(
            select(LoopCycle)
            .where(LoopCycle.candidate_index_version_id == index.id)
            .order_by(LoopCycle.id.desc())
            .limit(1)
        )
        # the feedback this index learned from: its cycle's training set (the questions it
        # indexes as expansions, and the encoder's when the cycle trained one), else the
        # training set of the encoder it kept
        training_set_id = (cycle.training_set_id if cycle is not None else None) or (
            model.training_set_id if model is not None else None
        )
        if training_set_id is not None:
            training = session.get_one(TrainingSet, training_set_id)
            out["training_set"] = {
                "id": training.id,
                "content_hash": training.content_hash,
                "path": training.path,
                "n_examples": training.n_examples,
                "n_queries": training.n_queries,
                "n_heldout": training.n_heldout,
                "stats": training.stats,
                "rules": training.rules,
                "mlflow_run_id": training.mlflow_run_id,
                "feedback_interactions": len(training.interaction_ids),
                "feedback_interaction_ids": training.interaction_ids,
            }
        if cycle is not None:
            run_ids = [r["eval_run_id"] for r in cycle.gate.get("runs", {}).values()]
            runs = session.scalars(select(EvalRun).where(EvalRun.id.in_(run_ids)))
            out["promoted_by"] = {
                "loop_cycle": cycle.id,
                "state": cycle.state,
                "trigger": cycle.trigger,
                "decided_by": cycle.decided_by,
                "finished_at": cycle.finished_at.isoformat() if cycle.finished_at else None,
                "gate": {k: v for k, v in cycle.gate.items() if k != "runs"},
                "evaluations": [
                    {
                        "eval_run_id": r.id,
                        "dataset": r.dataset,
                        "index_version": r.index_version_id,
                        "primary_metric": r.primary_metric,
                        "metrics": {
                            k: v
                            for k, v in r.metrics.items()
                            if k.startswith(("ndcg", "recall", "mrr"))
                        },
                        "mlflow_run_id": r.mlflow_run_id,
                    }
                    for r in runs
                ],
                "mlflow_run_id": cycle.mlflow_run_id,
            }
        return out
