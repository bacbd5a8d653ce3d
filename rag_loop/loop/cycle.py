"""The loop's controller: one cycle is a persisted state machine.

    collecting        feedback -> a versioned training set (leak-guarded, held-out split)
    training          fine-tune the serving embedder on it; register the model in MLflow
    indexing          a new collection of the live corpus for it (resumable); query-side
                      training keeps the document vectors, which are copied, not re-embedded
    evaluating        candidate and champion on the held-out feedback queries and the
                      golden sets; the gate decides
    shadow            (loop.shadow_share > 0) the candidate retrieves beside the champion
                      for a share of live questions, unseen; once enough of them have
                      feedback, its labelled precision must hold up against the champion's
    awaiting_approval the gate passed and `loop.require_approval` holds it for a person
    promoted          `champion` points at the candidate; the old index stays for rollback
    rejected          the gate (or a person) said no, or there was too little feedback
    rolled_back       was promoted, then rolled back (by hand or by live metrics)
    failed            a step raised; the champion kept serving, `resume` goes on from the
                      step that failed

Every step stores what it produced on the cycle row before the state moves, so a crash
at any point leaves the champion serving and the cycle resumable from its last state
(`rag-loop loop resume ID`). Only one cycle is active at a time.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select, update

from rag_loop.db.engine import transaction
from rag_loop.db.models import (
    AuditEntry,
    EmbedderVersion,
    IndexVersion,
    LoopCycle,
    TrainingSet,
    utcnow,
)
from rag_loop.errors import Conflict, InvalidInput, NotFound, RagLoopError
from rag_loop.evaluation.runner import EvalRequest, run_evaluation
from rag_loop.index.embedders import (
    AsymmetricEmbedder,
    Embedder,
    SentenceTransformerEmbedder,
    document_side,
)
from rag_loop.index.rebuild import build_index, create_index_version
from rag_loop.index.versions import CANDIDATE, CHAMPION, champion, drop_alias, set_alias
from rag_loop.loop.gate import decide
from rag_loop.loop.live import shadow_stats
from rag_loop.loop.resources import PeakMemory
from rag_loop.registry.embedders import (
    embedder_row,
    ensure_base,
    model_folder,
    move_champion_alias,
    register_trained,
)
from rag_loop.registry.tracking import LOOP_EXPERIMENT
from rag_loop.services import Services
from rag_loop.training.dataset import build_training_set
from rag_loop.training.finetune import finetune, finetune_queries

log = logging.getLogger(__name__)

ACTIVE = ("collecting", "training", "indexing", "evaluating", "shadow", "awaiting_approval")
TERMINAL = ("promoted", "rejected", "rolled_back", "failed")
PREVIOUS = "previous_champion"
LEASE = timedelta(minutes=30)  # a running step refreshes its heartbeat more often than this


class _Stop(Exception):
    """A step ended the cycle (rejected) or paused it (awaiting approval)."""


def start_cycle(
    services: Services,
    *,
    trigger: str = "manual",
    details: dict[str, Any] | None = None,
    actor: str = "cli",
) -> int:
    """Create a cycle in `collecting`; refuses while another cycle is active."""
    with transaction(services.sessions) as session:
        active = session.scalar(select(LoopCycle).where(LoopCycle.state.in_(ACTIVE)))
        if active is not None:
            raise Conflict(
                f"loop cycle {active.id} is still {active.state}; finish it first "
                f"(rag-loop loop resume {active.id}, approve, or reject)"
            )
        serving = champion(session)
        cycle = LoopCycle(
            state="collecting",
            trigger=trigger,
            trigger_details=details or {},
            champion_index_version_id=serving.id,
            feedback_until=utcnow(),
        )
        session.add(cycle)
        session.flush()
        session.add(
            AuditEntry(
                actor=actor,
                action="loop.start",
                target=f"loop_cycle:{cycle.id}",
                details={"trigger": trigger, **(details or {})},
            )
        )
        return cycle.id


def run_cycle(
    services: Services, cycle_id: int, *, actor: str = "loop", force: bool = False
) -> dict[str, Any]:
    """Run a cycle from its current state until it ends or waits for approval."""
    _claim(services, cycle_id, force=force)
    steps = {
        "collecting": _collect,
        "training": _train,
        "indexing": _index,
        "evaluating": _evaluate,
        "shadow": _shadow,
    }
    while True:
        cycle = _get(services, cycle_id)
        step = steps.get(cycle.state)
        if step is None:
            break
        started = time.perf_counter()
        try:
            with PeakMemory() as peak:
                next_state = step(services, cycle)
        except _Stop:
            _record_stage(services, cycle_id, cycle.state, started, peak.mb)
            break
        except Exception as exc:
            message = (
                exc.message if isinstance(exc, RagLoopError) else f"{type(exc).__name__}: {exc}"
            )
            log.exception("loop cycle %s failed while %s", cycle_id, cycle.state)
            _record_stage(services, cycle_id, cycle.state, started, peak.mb)
            _set(
                services,
                cycle_id,
                state="failed",
                error=f"{cycle.state}: {message}"[:4000],
                finished_at=utcnow(),
                failed_in=cycle.state,
            )
            _audit(
                services, actor, "loop.failed", cycle_id, {"step": cycle.state, "error": message}
            )
            raise
        _record_stage(services, cycle_id, cycle.state, started, peak.mb)
        _set(services, cycle_id, state=next_state)
    with transaction(services.sessions) as session:  # release the claim: nothing runs now
        session.get_one(LoopCycle, cycle_id).heartbeat_at = None
    cycle = _get(services, cycle_id)
    if cycle.state in TERMINAL or cycle.state == "awaiting_approval":
        _log_cycle(services, cycle_id)
    return cycle_view(services, cycle_id)


def resume(
    services: Services, cycle_id: int, *, actor: str = "cli", force: bool = False
) -> dict[str, Any]:
    """Go on with a cycle that failed or was cut off, from the step it was in."""
    cycle = _get(services, cycle_id)
    if cycle.state == "failed":
        failed_in = cycle.stages.get("failed_in")
        if failed_in not in ("collecting", "training", "indexing", "evaluating"):
            raise Conflict(f"loop cycle {cycle_id} cannot be resumed (failed in {failed_in})")
        with transaction(services.sessions) as session:
            active = session.scalar(
                select(LoopCycle).where(LoopCycle.state.in_(ACTIVE), LoopCycle.id != cycle_id)
            )
            if active is not None:
                raise Conflict(f"loop cycle {active.id} is active; only one runs at a time")
        _set(services, cycle_id, state=failed_in, error=None, finished_at=None)
        _audit(services, actor, "loop.resume", cycle_id, {"step": failed_in})
    elif cycle.state not in ACTIVE or cycle.state == "awaiting_approval":
        raise Conflict(f"loop cycle {cycle_id} is {cycle.state}; there is nothing to resume")
    return run_cycle(services, cycle_id, actor=actor, force=force)


def approve(services: Services, cycle_id: int, *, actor: str) -> dict[str, Any]:
    cycle = _get(services, cycle_id)
    if cycle.state != "awaiting_approval":
        raise Conflict(f"loop cycle {cycle_id} is {cycle.state}, not awaiting approval")
    _promote(services, cycle, actor=actor)
    _log_cycle(services, cycle_id)
    return cycle_view(services, cycle_id)


def reject(services: Services, cycle_id: int, *, actor: str, reason: str = "") -> dict[str, Any]:
    cycle = _get(services, cycle_id)
    if cycle.state not in ACTIVE and cycle.state != "failed":
        raise Conflict(f"loop cycle {cycle_id} is {cycle.state}; it cannot be rejected")
    _finish_rejected(services, cycle, f"rejected by {actor}: {reason}".strip(": "), actor)
    _log_cycle(services, cycle_id)
    return cycle_view(services, cycle_id)


def rollback(
    services: Services, *, actor: str, reason: str = "manual", cycle_id: int | None = None
) -> dict[str, Any]:
    """Serve the index that served before the latest promotion (or before `cycle_id`'s)."""
    with transaction(services.sessions) as session:
        query = select(LoopCycle).where(LoopCycle.state == "promoted")
        if cycle_id is not None:
            query = query.where(LoopCycle.id == cycle_id)
        cycle = session.scalar(query.order_by(LoopCycle.id.desc()))
        if cycle is None:
            raise Conflict(
                "there is no promoted loop cycle to roll back"
                if cycle_id is None
                else f"loop cycle {cycle_id} is not promoted; only a promoted cycle rolls back"
            )
        serving = champion(session)
        if serving.id != cycle.candidate_index_version_id:
            raise Conflict(
                f"loop cycle {cycle.id} promoted index {cycle.candidate_index_version_id}, but "
                f"index {serving.id} serves now; roll back the later change first"
            )
        previous = session.get_one(IndexVersion, cycle.champion_index_version_id)
        set_alias(session, CHAMPION, previous)
        cycle.state = "rolled_back"
        cycle.updated_at = utcnow()
        cycle.decided_by = actor
        cycle.gate = {**cycle.gate, "rollback": {"reason": reason, "by": actor}}
        session.add(
            AuditEntry(
                actor=actor,
                action="loop.rollback",
                target=f"loop_cycle:{cycle.id}",
                details={"from_index": serving.id, "to_index": previous.id, "reason": reason},
            )
        )
        rolled = cycle.id
        embedder_version = previous.embedder_version
    move_champion_alias(services, embedder_version)
    _log_cycle(services, rolled)
    return cycle_view(services, rolled)


# the steps ---------------------------------------------------------------------------


def _collect(services: Services, cycle: LoopCycle) -> str:
    ensure_base(services)
    with services.sessions() as session:
        index = session.get_one(IndexVersion, cycle.champion_index_version_id)
        session.expunge(index)
    built = build_training_set(services, index, until=cycle.feedback_until)
    _set(services, cycle.id, training_set_id=built.training_set_id)
    minimum = services.settings.training.min_examples
    if built.n_examples < minimum:
        _finish_rejected(
            services,
            cycle,
            f"not enough feedback to train on: {built.n_examples} examples, "
            f"training.min_examples is {minimum}",
            "loop",
        )
        raise _Stop
    return "training"


def _train(services: Services, cycle: LoopCycle) -> str:
    if cycle.embedder_version_id is not None:
        return "indexing"
    settings = services.settings.training
    with services.sessions() as session:
        index = session.get_one(IndexVersion, cycle.champion_index_version_id)
        training_set = session.get_one(TrainingSet, cycle.training_set_id)
        session.expunge_all()
    parent = embedder_row(services, index.embedder_version)
    if parent is None or settings.init_from == "base":
        parent = ensure_base(services)
    folder = model_folder(services, cycle.id)
    folder.parent.mkdir(parents=True, exist_ok=True)
    options = {
        "batch_size": services.settings.embedder.batch_size,
        "device": services.settings.embedder.device,
    }
    embedder: Embedder
    if settings.mode == "query":
        # the documents keep the champion's vectors: the query encoder learns against them
        documents_version = document_side(index.embedder_version)
        ids = sorted(services.store.ids(index.collection_name))
        found = services.store.get_embeddings(index.collection_name, ids)
        bank = np.stack([found[i] for i in ids])
        trained = finetune_queries(
            Path(parent.path), Path(training_set.path), folder, settings, ids, bank
        )
        embedder = AsymmetricEmbedder(
            SentenceTransformerEmbedder(str(folder), **options),  # type: ignore[arg-type]
            services.embedders.get(documents_version),
        )
    else:
        documents_version = None
        trained = finetune(Path(parent.path), Path(training_set.path), folder, settings)
        embedder = SentenceTransformerEmbedder(str(folder), **options)  # type: ignore[arg-type]
    row = register_trained(
        services,
        trained,
        parent,
        training_set,
        cycle_id=cycle.id,
        version=embedder.version,
        document_version=documents_version,
    )
    services.embedders.add(embedder)
    _set(services, cycle.id, embedder_version_id=row.id)
    return "indexing"


def _index(services: Services, cycle: LoopCycle) -> str:
    with services.sessions() as session:
        model = session.get_one(EmbedderVersion, cycle.embedder_version_id)
        parent = session.get_one(IndexVersion, cycle.champion_index_version_id)
        session.expunge_all()
    embedder = services.embedders.get(model.version)
    version_id = cycle.candidate_index_version_id
    if version_id is None:
        version_id = create_index_version(
            services, embedder, parent, f"loop cycle {cycle.id}: {model.version}"
        )
        _set(services, cycle.id, candidate_index_version_id=version_id)
    same_documents = document_side(parent.embedder_version) == document_side(model.version)
    build_index(
        services,
        version_id,
        embedder,
        batch_size=256,
        reuse_from=parent.collection_name if same_documents else None,
    )
    return "evaluating"


def _evaluate(services: Services, cycle: LoopCycle) -> str:
    with services.sessions() as session:
        training_set = session.get_one(TrainingSet, cycle.training_set_id)
        serving = champion(session)
        session.expunge_all()
    datasets: list[Path] = []
    if training_set.heldout_path:
        datasets.append(Path(training_set.heldout_path))
    datasets += [p for p in services.settings.evaluation.golden_sets if p.is_file()]
    if not datasets:
        _finish_rejected(
            services,
            cycle,
            "nothing to evaluate on: no held-out feedback queries and no golden set",
            "loop",
        )
        raise _Stop
    runs: dict[str, dict[str, Any]] = dict(cycle.gate.get("runs", {}))
    for path in datasets:
        for role, version_id in (
            ("champion", serving.id),
            ("candidate", cycle.candidate_index_version_id),
        ):
            key = f"{path}|{role}"
            if key in runs:
                continue  # resumed: this evaluation is done
            outcome = run_evaluation(
                services,
                EvalRequest(
                    source="golden",
                    golden_path=path,
                    index_version_id=version_id,
                    use_judge=False,
                    trigger="loop",
                    retrieval_only=True,
                ),
            )
            runs[key] = {
                "dataset": str(path),
                "kind": "heldout" if str(path) == training_set.heldout_path else "golden",
                "role": role,
                "index_version": version_id,
                "eval_run_id": outcome.run_id,
                "mlflow_run_id": outcome.mlflow_run_id,
                "n_samples": outcome.n_samples,
                "metrics": outcome.metrics,
            }
            _set(services, cycle.id, gate={**cycle.gate, "runs": runs})
    verdict = decide(runs, services.settings.loop, services.settings.evaluation.k)
    gate = {**cycle.gate, "runs": runs, "champion_index_version": serving.id, **verdict}
    _set(services, cycle.id, gate=gate)
    cycle = _get(services, cycle.id)
    if not verdict["passed"]:
        _finish_rejected(services, cycle, "; ".join(verdict["reasons"]), "gate")
        raise _Stop
    if services.settings.loop.shadow_share > 0:
        with transaction(services.sessions) as session:
            set_alias(
                session, CANDIDATE, session.get_one(IndexVersion, cycle.candidate_index_version_id)
            )
        _set(services, cycle.id, gate={**gate, "shadow_since": utcnow().isoformat()})
        _audit(services, "gate", "loop.shadow", cycle.id, verdict)
        return "shadow"
    _after_gate(services, cycle, "gate")
    raise _Stop


def _shadow(services: Services, cycle: LoopCycle) -> str:
    """Decide once enough shadowed questions have feedback; until then the cycle waits
    here (the loop's tick looks again)."""
    settings = services.settings.loop
    since = datetime.fromisoformat(cycle.gate["shadow_since"])
    assert cycle.candidate_index_version_id is not None
    stats = shadow_stats(services, cycle.candidate_index_version_id, since)
    _set(services, cycle.id, gate={**cycle.gate, "shadow": stats})
    if stats["labelled"] < settings.shadow_min_labelled:
        raise _Stop  # wait for more live traffic and feedback
    cycle = _get(services, cycle.id)
    drop = (stats["champion_precision"] or 0) - (stats["candidate_precision"] or 0)
    if drop > settings.shadow_max_precision_drop:
        _finish_rejected(
            services,
            cycle,
            f"shadow: labelled precision {stats['candidate_precision']:.3f} vs the champion's "
            f"{stats['champion_precision']:.3f} on {stats['labelled']} questions "
            f"(allowed drop {settings.shadow_max_precision_drop})",
            "shadow",
        )
        raise _Stop
    _after_gate(services, cycle, "shadow")
    raise _Stop


def _after_gate(services: Services, cycle: LoopCycle, actor: str) -> None:
    _drop_candidate_alias(services)
    if services.settings.loop.require_approval:
        _set(services, cycle.id, state="awaiting_approval")
        _audit(services, actor, "loop.awaiting_approval", cycle.id, {})
        return
    _promote(services, cycle, actor=actor)


def _drop_candidate_alias(services: Services) -> None:
    with transaction(services.sessions) as session:
        drop_alias(session, CANDIDATE)


# promotion and endings -------------------------------------------------------------------


def _promote(services: Services, cycle: LoopCycle, *, actor: str) -> None:
    assert cycle.candidate_index_version_id is not None
    with services.sessions() as session:
        candidate = session.get_one(IndexVersion, cycle.candidate_index_version_id)
        session.expunge(candidate)
    embedder = services.embedders.get(candidate.embedder_version)
    # catch up with ingests and corrections since the candidate was built
    build_index(services, candidate.id, embedder, actor=actor)
    with transaction(services.sessions) as session:
        row = session.get_one(LoopCycle, cycle.id)
        if row.state not in ("evaluating", "shadow", "awaiting_approval"):
            raise Conflict(f"loop cycle {cycle.id} is {row.state}; it cannot be promoted")
        old = champion(session)
        new = session.get_one(IndexVersion, candidate.id)
        set_alias(session, PREVIOUS, old)
        set_alias(session, CHAMPION, new)  # the very next request retrieves from it
        row.state = "promoted"
        row.decided_by = actor
        row.updated_at = row.finished_at = utcnow()
        row.champion_index_version_id = old.id
        session.add(
            AuditEntry(
                actor=actor,
                action="loop.promote",
                target=f"loop_cycle:{cycle.id}",
                details={
                    "from_index": old.id,
                    "to_index": new.id,
                    "embedder_version": new.embedder_version,
                },
            )
        )
    move_champion_alias(services, candidate.embedder_version)


def _finish_rejected(services: Services, cycle: LoopCycle, reason: str, actor: str) -> None:
    _drop_candidate_alias(services)
    _set(
        services,
        cycle.id,
        state="rejected",
        error=reason,
        decided_by=actor,
        finished_at=utcnow(),
    )
    if cycle.candidate_index_version_id is not None:
        with transaction(services.sessions) as session:
            index = session.get_one(IndexVersion, cycle.candidate_index_version_id)
            index.status = "rejected"
            collection = index.collection_name
        services.store.drop(collection)  # its numbers stay in SQL and MLflow
    _audit(services, actor, "loop.reject", cycle.id, {"reason": reason})


# bookkeeping ---------------------------------------------------------------------------


def _get(services: Services, cycle_id: int) -> LoopCycle:
    with services.sessions() as session:
        cycle = session.get(LoopCycle, cycle_id)
        if cycle is None:
            raise NotFound(f"no loop cycle {cycle_id}; `rag-loop loop list` shows them")
        session.expunge(cycle)
        return cycle


def _claim(services: Services, cycle_id: int, *, force: bool = False) -> None:
    """Take the cycle for this process; another process holding a fresh lease wins,
    unless `force` (its process is known to be gone, e.g. after a crash)."""
    now = utcnow()
    lease_over = now + LEASE if force else now - LEASE
    with transaction(services.sessions) as session:
        result: Any = session.execute(
            update(LoopCycle)
            .where(
                LoopCycle.id == cycle_id,
                (LoopCycle.heartbeat_at.is_(None)) | (LoopCycle.heartbeat_at < lease_over),
            )
            .values(heartbeat_at=now)
        )
    if not result.rowcount:
        _get(services, cycle_id)  # NotFound first
        raise Conflict(
            f"loop cycle {cycle_id} is being run by another process; if that process is "
            "gone (a crash), take it over: rag-loop loop resume --force"
        )


def _set(services: Services, cycle_id: int, **values: Any) -> None:
    failed_in = values.pop("failed_in", None)
    with transaction(services.sessions) as session:
        cycle = session.get_one(LoopCycle, cycle_id)
        for key, value in values.items():
            setattr(cycle, key, value)
        if failed_in is not None:
            cycle.stages = {**cycle.stages, "failed_in": failed_in}
        cycle.updated_at = utcnow()
        if values.get("state") in TERMINAL or values.get("state") == "awaiting_approval":
            cycle.heartbeat_at = None  # nobody runs it any more
        elif cycle.heartbeat_at is not None:
            cycle.heartbeat_at = utcnow()  # still ours


def _record_stage(
    services: Services, cycle_id: int, stage: str, started: float, peak_mb: float
) -> None:
    with transaction(services.sessions) as session:
        cycle = session.get_one(LoopCycle, cycle_id)
        stages = dict(cycle.stages)
        previous = stages.get(stage, {})
        stages[stage] = {
            "seconds": round(previous.get("seconds", 0) + time.perf_counter() - started, 3),
            "peak_rss_mb": round(max(previous.get("peak_rss_mb", 0), peak_mb), 1),
        }
        cycle.stages = stages


def _audit(
    services: Services, actor: str, action: str, cycle_id: int, details: dict[str, Any]
) -> None:
    with transaction(services.sessions) as session:
        session.add(
            AuditEntry(actor=actor, action=action, target=f"loop_cycle:{cycle_id}", details=details)
        )


def _log_cycle(services: Services, cycle_id: int) -> None:
    """One MLflow run per cycle end state: the decision, the gate's numbers, the stages."""
    view = cycle_view(services, cycle_id)
    metrics: dict[str, float] = {}
    for name, value in (view["gate"].get("deltas") or {}).items():
        metrics[f"delta.{name}"] = float(value)
    for stage, figures in view["stages"].items():
        if isinstance(figures, dict):
            metrics[f"{stage}.seconds"] = float(figures["seconds"])
            metrics[f"{stage}.peak_rss_mb"] = float(figures["peak_rss_mb"])
    try:
        run_id = services.tracker.log_run(
            LOOP_EXPERIMENT,
            f"cycle-{cycle_id}-{view['state']}",
            params={
                "cycle": cycle_id,
                "state": view["state"],
                "trigger": view["trigger"],
                "champion_index_version": view["champion_index_version_id"],
                "candidate_index_version": view["candidate_index_version_id"],
                "embedder_version": (view["embedder"] or {}).get("version"),
                "training_set": (view["training_set"] or {}).get("content_hash"),
                "decided_by": view["decided_by"],
            },
            metrics=metrics,
            tags={"rag_loop.kind": "loop_cycle", "rag_loop.loop_cycle": str(cycle_id)},
            artifacts={"cycle.json": view},
        )
    except RagLoopError:
        log.warning("could not log loop cycle %s to MLflow", cycle_id)
        return
    _set_quiet(services, cycle_id, run_id)


def _set_quiet(services: Services, cycle_id: int, run_id: str | None) -> None:
    with transaction(services.sessions) as session:
        session.get_one(LoopCycle, cycle_id).mlflow_run_id = run_id


def cycle_view(services: Services, cycle_id: int) -> dict[str, Any]:
    with services.sessions() as session:
        cycle = session.get(LoopCycle, cycle_id)
        if cycle is None:
            raise NotFound(f"no loop cycle {cycle_id}; `rag-loop loop list` shows them")
        training = (
            session.get(TrainingSet, cycle.training_set_id) if cycle.training_set_id else None
        )
        model = (
            session.get(EmbedderVersion, cycle.embedder_version_id)
            if cycle.embedder_version_id
            else None
        )
        return _view(cycle, training, model)


def list_cycles(services: Services, limit: int = 50) -> list[dict[str, Any]]:
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit must be between 1 and 1000")
    with services.sessions() as session:
        cycles = list(session.scalars(select(LoopCycle).order_by(LoopCycle.id.desc()).limit(limit)))
        return [
            _view(
                c,
                session.get(TrainingSet, c.training_set_id) if c.training_set_id else None,
                session.get(EmbedderVersion, c.embedder_version_id)
                if c.embedder_version_id
                else None,
            )
            for c in cycles
        ]


def _view(
    cycle: LoopCycle, training: TrainingSet | None, model: EmbedderVersion | None
) -> dict[str, Any]:
    return {
        "id": cycle.id,
        "state": cycle.state,
        "trigger": cycle.trigger,
        "trigger_details": cycle.trigger_details,
        "created_at": cycle.created_at.isoformat(),
        "updated_at": cycle.updated_at.isoformat(),
        "finished_at": cycle.finished_at.isoformat() if cycle.finished_at else None,
        "feedback_until": cycle.feedback_until.isoformat(),
        "champion_index_version_id": cycle.champion_index_version_id,
        "candidate_index_version_id": cycle.candidate_index_version_id,
        "training_set": None
        if training is None
        else {
            "id": training.id,
            "content_hash": training.content_hash,
            "n_examples": training.n_examples,
            "n_queries": training.n_queries,
            "n_heldout": training.n_heldout,
            "stats": training.stats,
            "mlflow_run_id": training.mlflow_run_id,
        },
        "embedder": None
        if model is None
        else {
            "id": model.id,
            "version": model.version,
            "parent_version": model.parent_version,
            "base_version": model.base_version,
            "mlflow_model": f"{model.mlflow_model_name}/{model.mlflow_model_version}"
            if model.mlflow_model_name
            else None,
            "mlflow_run_id": model.mlflow_run_id,
        },
        "gate": cycle.gate,
        "stages": cycle.stages,
        "error": cycle.error,
        "decided_by": cycle.decided_by,
        "mlflow_run_id": cycle.mlflow_run_id,
    }
