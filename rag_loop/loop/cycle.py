"""The loop's controller: one cycle is a persisted state machine (`loop.states` declares
its states, moves and the actions allowed in each).

    collecting        feedback -> a versioned training set (leak-guarded, held-out split);
                      the champion ranks the held-out queries (without them, the golden
                      sets), and when too few of them leave room for a gain for the gate's
                      floor, nothing is trained
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
    rejected          the gate (or a person) said no, or there was too little feedback or
                      held-out room to train a candidate for
    rolled_back       was promoted, then rolled back (by hand or by live metrics)
    failed            a step raised; the champion kept serving, `resume` goes on from the
                      step that failed

Every step stores what it produced on the cycle row before the state moves, so a crash at
any point leaves the champion serving and the cycle resumable from its last state
(`rag-loop loop resume ID`). Only one cycle is active at a time.

Every move of the state is one SQL transaction (`_move`): the state, the stage's figures,
the audit entry, the aliases it changes and the outbox entries for MLflow and Chroma
(`registry.outbox`) commit together, and only then are the outbox's effects applied. An
MLflow or Chroma outage after that delays the registry; it never undoes or blocks a move.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from rag_loop.corpus.build import BuildParts, build_index, create_index_version
from rag_loop.db import leases
from rag_loop.db.engine import transaction
from rag_loop.db.models import (
    Alias,
    AuditEntry,
    Chunk,
    Document,
    EmbedderVersion,
    EvalSample,
    IndexVersion,
    LoopCycle,
    TrainingSet,
    now_of,
)
from rag_loop.errors import BackendUnavailable, Conflict, InvalidInput, NotFound, RagLoopError
from rag_loop.evaluation.runner import EvalParts, EvalRequest, run_evaluation
from rag_loop.hits import Hit
from rag_loop.index import expansions
from rag_loop.index.embedders import (
    AsymmetricEmbedder,
    Embedder,
    SentenceTransformerEmbedder,
    document_side,
)
from rag_loop.index.retrieval_config import RetrievalConfig
from rag_loop.index.versions import (
    CANDIDATE,
    CHAMPION,
    PREVIOUS,
    champion,
    drop_alias,
    protected_collections,
    set_alias,
)
from rag_loop.loop import golden
from rag_loop.loop.gate import decide, too_few_to_judge, tracked_metrics, with_room
from rag_loop.loop.live import shadow_stats
from rag_loop.loop.records import (
    CycleView,
    EmbedderSummary,
    Gate,
    StageFigures,
    TrainingSetSummary,
    stored_stages,
)
from rag_loop.loop.resources import PeakMemory
from rag_loop.loop.states import (
    ACTIVE,
    SETTLED,
    TERMINAL,
    WORKING,
    Action,
    CycleState,
    check_action,
    check_move,
    values,
)
from rag_loop.registry import outbox
from rag_loop.registry.embedders import (
    RegistryParts,
    TrainedModel,
    embedder_row,
    ensure_base,
    model_folder,
    register_trained,
)
from rag_loop.registry.tracking import LOOP_EXPERIMENT
from rag_loop.retrieval.lexical import LexicalIndex
from rag_loop.training.dataset import DatasetParts, build_training_set
from rag_loop.training.finetune import finetune, finetune_queries
from rag_loop.training.validation import FusionCheck, Scored

log = logging.getLogger(__name__)

# a golden tuning question, its relevant chunk ids and its part (FusionCheck.parts)
TuningPair = tuple[str, list[str], str]


class CycleParts(BuildParts, EvalParts, DatasetParts, RegistryParts, Protocol):
    """What a loop cycle uses: the parts of the stages it runs (training set, fine-tuning,
    index build, evaluation, the registry)."""


S = CycleState
LEASE = timedelta(minutes=30)  # a running step refreshes its heartbeat more often than this


@dataclass
class Move:
    """What a step (or a person) decided: the next state (None: stay and wait), the columns
    it sets, the audit entry, and `effects`: more SQL in the same transaction (aliases,
    outbox entries), returning details for the audit entry."""

    to: CycleState | None
    action: str | None = None
    actor: str = "loop"
    details: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    effects: Callable[[Session, LoopCycle], dict[str, Any]] | None = None


def start_cycle(
    services: CycleParts,
    *,
    trigger: str = "manual",
    details: dict[str, Any] | None = None,
    actor: str = "cli",
) -> int:
    """Create a cycle in `collecting`; refuses while another cycle is active."""
    with transaction(services.sessions) as session:
        active = session.scalar(select(LoopCycle).where(LoopCycle.state.in_(values(ACTIVE))))
        if active is not None:
            raise Conflict(
                f"loop cycle {active.id} is still {active.state}; finish it first "
                f"(rag-loop loop resume {active.id}, approve, or reject)"
            )
        serving = champion(session)
        cycle = LoopCycle(
            state=S.COLLECTING,
            trigger=trigger,
            trigger_details=details or {},
            champion_index_version_id=serving.id,
            feedback_until=now_of(session),
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


STEPS: dict[CycleState, Callable[[CycleParts, LoopCycle], Move]] = {}


def run_cycle(
    services: CycleParts, cycle_id: int, *, actor: str = "loop", force: bool = False
) -> dict[str, Any]:
    """Run a cycle from its current state until it ends or waits (for approval, or in
    shadow mode for more live feedback)."""
    check_action(Action.RUN, cycle_id, _get(services, cycle_id).state)
    _claim(services, cycle_id, force=force)
    try:
        while True:
            cycle = _get(services, cycle_id)
            step = STEPS.get(S(cycle.state))
            if step is None:
                break
            started = time.perf_counter()
            try:
                with PeakMemory() as peak:
                    move = step(services, cycle)
            except Exception as exc:
                message = (
                    exc.message if isinstance(exc, RagLoopError) else f"{type(exc).__name__}: {exc}"
                )
                log.exception("loop cycle %s failed while %s", cycle_id, cycle.state)
                _fail(services, cycle, message, _figures(started, peak.mb))
                raise
            try:
                _move(services, cycle_id, move, stage=(cycle.state, _figures(started, peak.mb)))
            except Conflict as exc:
                # someone else decided the cycle meanwhile (a person rejected it, say)
                log.warning("loop cycle %s: %s", cycle_id, exc.message)
                break
            if move.to is None:
                break  # waiting in shadow mode
    finally:
        with transaction(services.sessions) as session:  # release the claim
            session.get_one(LoopCycle, cycle_id).heartbeat_at = None
    return cycle_view(services, cycle_id)


def resume(
    services: CycleParts, cycle_id: int, *, actor: str = "cli", force: bool = False
) -> dict[str, Any]:
    """Go on with a cycle that failed or was cut off, from the step it was in."""
    cycle = _get(services, cycle_id)
    check_action(Action.RESUME, cycle_id, cycle.state)
    if cycle.state == S.FAILED:
        failed_in = cycle.failed_in
        if _candidate_serves(services, cycle):
            # written by an older version: the promotion committed, then the cycle was
            # marked failed. It is promoted; record it so (nothing else changes).
            _move(services, cycle_id, _reconcile_promoted(actor))
            return cycle_view(services, cycle_id)
        if failed_in not in values(WORKING):
            raise Conflict(f"loop cycle {cycle_id} cannot be resumed (failed in {failed_in})")
        with services.sessions() as session:
            active = session.scalar(
                select(LoopCycle).where(
                    LoopCycle.state.in_(values(ACTIVE)), LoopCycle.id != cycle_id
                )
            )
            if active is not None:
                raise Conflict(f"loop cycle {active.id} is active; only one runs at a time")
        _move(
            services,
            cycle_id,
            Move(
                S(failed_in),
                action="loop.resume",
                actor=actor,
                details={"step": failed_in},
                fields={"error": None, "finished_at": None, "failed_in": None},
            ),
        )
    return run_cycle(services, cycle_id, actor=actor, force=force)


def approve(services: CycleParts, cycle_id: int, *, actor: str) -> dict[str, Any]:
    cycle = _get(services, cycle_id)
    check_action(Action.APPROVE, cycle_id, cycle.state)
    _move(services, cycle_id, _promotion(services, cycle, actor=actor))
    return cycle_view(services, cycle_id)


def reject(services: CycleParts, cycle_id: int, *, actor: str, reason: str = "") -> dict[str, Any]:
    cycle = _get(services, cycle_id)
    check_action(Action.REJECT, cycle_id, cycle.state)
    if _candidate_serves(services, cycle):
        raise Conflict(
            f"loop cycle {cycle_id}'s candidate index {cycle.candidate_index_version_id} "
            f"serves; resume it to record its promotion (rag-loop loop resume {cycle_id}), "
            "then roll it back (rag-loop loop rollback)"
        )
    _move(services, cycle_id, _rejection(f"rejected by {actor}: {reason}".strip(": "), actor))
    return cycle_view(services, cycle_id)


def rollback(
    services: CycleParts, *, actor: str, reason: str = "manual", cycle_id: int | None = None
) -> dict[str, Any]:
    """Serve the index that served before the latest promotion (or before `cycle_id`'s)."""
    with services.sessions() as session:
        query = select(LoopCycle).where(LoopCycle.state == S.PROMOTED)
        if cycle_id is not None:
            found = session.get(LoopCycle, cycle_id)
            if found is None:
                raise NotFound(f"no loop cycle {cycle_id}; `rag-loop loop list` shows them")
            check_action(Action.ROLLBACK, cycle_id, found.state)
            query = query.where(LoopCycle.id == cycle_id)
        cycle = session.scalar(query.order_by(LoopCycle.id.desc()))
        if cycle is None:
            raise Conflict("there is no promoted loop cycle to roll back")
        target = session.get(IndexVersion, cycle.champion_index_version_id)
        if target is not None and not _collection_present(services, target.collection_name):
            raise Conflict(
                f"the rollback target, index {target.id}, has no collection in Chroma "
                f"({target.collection_name}); serve another version: rag-loop index serve ID"
            )
    synced = _catch_up(services, target, actor) if target is not None else None

    def effects(session: Session, row: LoopCycle) -> dict[str, Any]:
        serving = champion(session)
        if serving.id != row.candidate_index_version_id:
            raise Conflict(
                f"loop cycle {row.id} promoted index {row.candidate_index_version_id}, but "
                f"index {serving.id} serves now; roll back the later change first"
            )
        previous = session.get_one(IndexVersion, row.champion_index_version_id)
        if previous.id == serving.id:
            raise Conflict(
                f"loop cycle {row.id}'s rollback target is index {previous.id}, which serves "
                "already; there is nothing to roll back to"
            )
        set_alias(session, CHAMPION, previous)
        _point_previous(session, exclude=row.id)
        row.gate = {**row.gate, "rollback": {"reason": reason, "by": actor, "synced": synced}}
        outbox.sync_champion_alias(session, f"loop cycle {row.id} rolled back")
        return {"from_index": serving.id, "to_index": previous.id, "reason": reason}

    _move(
        services,
        cycle.id,
        Move(
            S.ROLLED_BACK,
            action="loop.rollback",
            actor=actor,
            effects=effects,
            fields={"decided_by": actor},
        ),
    )
    return cycle_view(services, cycle.id)


def _catch_up(services: CycleParts, target: IndexVersion, actor: str) -> str:
    """Sync a rollback target with the live chunks, so that corrections and amendments
    approved since it served serve after the rollback. Best effort: a rollback must not
    wait on the embedder's registry; `rag-loop index serve ID` syncs it later."""
    try:
        embedder = services.embedders.get(target.embedder_version)
        result = build_index(services, target.id, embedder, actor=actor)
    except Exception as exc:  # an outage of any part it needs
        log.warning("rollback target %s not synced with the live chunks: %s", target.id, exc)
        return f"not synced: {exc}"[:300]
    added = result.chunks_embedded + result.chunks_reused
    return f"synced: {added} added, {result.chunks_removed} removed"


def serve_version(
    services: CycleParts, version_id: int, *, actor: str, reason: str = "manual"
) -> dict[str, Any]:
    """The operator's way back to any serving state: make a ready index version the
    champion (its collection is rebuilt from the live chunks first if Chroma lost it). The
    index that served becomes the rollback target; an active cycle is left as it is."""
    with services.sessions() as session:
        version = session.get(IndexVersion, version_id)
        if version is None:
            raise NotFound(f"no index version {version_id}; `rag-loop index list` shows them")
        session.expunge(version)
    if version.status != "ready":
        raise Conflict(
            f"index version {version_id} is {version.status}; only a ready version serves",
            details=[{"index_version": version_id, "status": version.status}],
        )
    # rebuilt from the live chunks if Chroma lost it; otherwise synced with them, so that
    # corrections and amendments approved since it last served serve with it
    present = _collection_present(services, version.collection_name)
    embedder = services.embedders.get(version.embedder_version)
    built = build_index(services, version_id, embedder, actor=actor).chunks_embedded
    rebuilt = None if present else built
    with transaction(services.sessions) as session:
        serving = champion(session) if _has_champion(session) else None
        if serving is not None and serving.id == version_id:
            raise Conflict(f"index version {version_id} serves already")
        target = session.get_one(IndexVersion, version_id)
        set_alias(session, CHAMPION, target)
        if serving is not None:
            set_alias(session, PREVIOUS, serving)
        outbox.sync_champion_alias(session, f"index version {version_id} served by {actor}")
        session.add(
            AuditEntry(
                actor=actor,
                action="index.serve",
                target=f"index_version:{version_id}",
                details={
                    "from_index": serving.id if serving else None,
                    "to_index": version_id,
                    "reason": reason,
                    "chunks_rebuilt": rebuilt,
                },
            )
        )
    services.outbox.flush_quietly()
    return {
        "index_version": version_id,
        "previous": serving.id if serving else None,
        "collection_rebuilt": rebuilt is not None,
    }


def _has_champion(session: Session) -> bool:
    return bool(session.scalar(select(Alias.name).where(Alias.name == CHAMPION)))


def _collection_present(services: CycleParts, name: str) -> bool:
    try:
        return bool(services.store.exists(name))
    except Exception as exc:
        raise BackendUnavailable(f"cannot reach Chroma: {exc}") from exc


def _point_previous(session: Session, *, exclude: int) -> None:
    """After a rollback, `previous_champion` names the rollback target of the promotion that
    serves now (if a promoted cycle's candidate serves), else nothing."""
    serving = champion(session)
    earlier = session.scalar(
        select(LoopCycle)
        .where(
            LoopCycle.state == S.PROMOTED,
            LoopCycle.candidate_index_version_id == serving.id,
            LoopCycle.id != exclude,
        )
        .order_by(LoopCycle.id.desc())
        .limit(1)
    )
    target = None
    if earlier is not None and earlier.champion_index_version_id != serving.id:
        target = session.get(IndexVersion, earlier.champion_index_version_id)
    if target is None:
        drop_alias(session, PREVIOUS)
    else:
        set_alias(session, PREVIOUS, target)


# the steps ---------------------------------------------------------------------------


def _collect(services: CycleParts, cycle: LoopCycle) -> Move:
    ensure_base(services)
    with services.sessions() as session:
        index = session.get_one(IndexVersion, cycle.champion_index_version_id)
        session.expunge(index)
    built = build_training_set(services, index, until=cycle.feedback_until)
    minimum = services.settings.training.min_examples
    if built.n_examples < minimum:
        move = _rejection(
            f"not enough feedback to train on: {built.n_examples} examples, "
            f"training.min_examples is {minimum}",
            "loop",
        )
        move.fields["training_set_id"] = built.training_set_id
        return move
    fields: dict[str, Any] = {"training_set_id": built.training_set_id}
    split, whole = _golden_split(services, index)
    judged = _judged_golden(services, cycle.id, split)
    measured = {} if split["applied"] else whole  # the champion on the sets the gate judges
    primary = _primary_datasets(built.heldout_path, judged)
    if not primary:
        move = _rejection(f"{NOTHING_TO_EVALUATE}, so nothing was trained", "loop")
        move.fields.update(fields)
        return move
    gate, reason = _room_to_judge(services, index, primary, measured)
    golden = _primary_datasets(None, judged)
    if reason is not None and primary[0][1] == "heldout" and golden:
        # sparse feedback: the held-out queries cannot judge, the operator's questions may
        on_golden, golden_reason = _room_to_judge(services, index, golden, measured)
        if golden_reason is None:
            on_golden.update(runs={**gate["runs"], **on_golden["runs"]}, heldout_floor=reason)
            gate, reason = on_golden, None
        else:
            reason = f"{reason}; on the golden sets too: {golden_reason}"
    fields["gate"] = {**cycle.gate, **gate, "golden_split": split}
    if reason is not None:
        reason = f"{reason}, so nothing was trained"
        fields["gate"].update(passed=False, reasons=[reason])
        move = _rejection(reason, "gate")
        move.fields.update(fields)
        return move
    return Move(S.TRAINING, fields=fields)


NOTHING_TO_EVALUATE = "nothing to evaluate on: no held-out feedback queries and no golden set"


def _primary_datasets(heldout: str | Path | None, golden: list[Path]) -> list[tuple[Path, str]]:
    """Where the gate measures its primary metric, with each data set's kind: the held-out
    feedback queries, or without them the golden sets' judged parts (`gate.decide`)."""
    if heldout is not None:
        return [(Path(heldout), "heldout")]
    return [(p, "golden") for p in golden]


def _golden_split(
    services: CycleParts, index: IndexVersion
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Whether this cycle splits the golden sets into a tuning and a judged part
    (rag_loop.loop.golden), with the champion's runs on the whole sets: only when each part
    leaves the champion room on at least `loop.min_gate_queries` questions, so that the
    tuning part can tell choices apart and the judged part can still meet the gate's floor.
    A smaller set judges whole and tunes nothing, as with `loop.golden_tuning_share` 0, and
    so does every set when training validates nothing (`training.mode` full)."""
    loop = services.settings.loop
    paths = [p for p in services.settings.evaluation.golden_sets if p.is_file()]
    split: dict[str, Any] = {"share": loop.golden_tuning_share, "applied": False}
    if loop.golden_tuning_share <= 0 or not paths or services.settings.training.mode == "full":
        return split, {}
    runs = {f"{p}|champion": _gate_run(services, p, "golden", "champion", index.id) for p in paths}
    primary = loop.primary_metric
    scores = _per_question(services, runs, [primary])
    tuning_room = judged_room = 0
    for path in paths:
        champion = scores[f"{path}|champion"][primary]
        room = golden.room_by_part(path, champion, loop.golden_tuning_share)
        tuning_room, judged_room = tuning_room + room[0], judged_room + room[1]
    floor = loop.min_gate_queries
    split.update(
        tuning_room=tuning_room,
        judged_room=judged_room,
        applied=tuning_room >= floor and judged_room >= floor,
    )
    return split, runs


def _judged_golden(services: CycleParts, cycle_id: int, split: dict[str, Any]) -> list[Path]:
    """What the gate judges of the golden sets: each set's judged part when the cycle
    splits them (`_golden_split`), else each set whole."""
    paths = [p for p in services.settings.evaluation.golden_sets if p.is_file()]
    if not split.get("applied"):
        return paths
    folder = services.settings.data_dir / "loop" / f"cycle-{cycle_id:04d}" / "golden"
    return golden.judged_sets(paths, split["share"], folder)


def _tuning(
    services: CycleParts, split: dict[str, Any], hits: Callable[[], list[Hit]]
) -> list[TuningPair]:
    """The golden sets' tuning questions with their relevant chunk ids and their part (one
    per golden set, as the gate judges each set) when the cycle splits them
    (`_golden_split`), else none (and `hits`, the collection's chunks, are not read)."""
    if not split.get("applied"):
        return []
    chunks_of: dict[str, list[str]] = {}
    for hit in hits():
        chunks_of.setdefault(hit.document_id, []).append(hit.chunk_id)
    return [
        (
            question.text,
            question.reference_ids
            if question.chunk_level
            else [c for d in question.reference_ids for c in chunks_of.get(d, [])],
            question.part,
        )
        for question in golden.tuning_questions(
            services.settings.evaluation.golden_sets, split["share"]
        )
    ]


def _room_to_judge(
    services: CycleParts,
    index: IndexVersion,
    primary: list[tuple[Path, str]],
    measured: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """The champion on the data sets of the gate's primary metric before anything is
    trained: the runs the gate compares the candidate with, and the reason no candidate
    can pass when the gate's floor cannot be met (`loop.min_gate_queries` questions the
    champion does not already score perfectly: only on those can a gain show, whatever is
    trained). Feedback that confirms what was served leaves most held-out questions without
    room (README), and training a candidate that the gate must refuse costs a cycle's CPU
    for nothing. The champion's runs in `measured` (by key) are not run again."""
    loop = services.settings.loop
    measured = measured or {}
    runs = {
        f"{path}|champion": measured.get(f"{path}|champion")
        or _gate_run(services, path, kind, "champion", index.id)
        for path, kind in primary
    }
    unanswerable: set[str] = set()
    scores = {
        f"{key}|{question}": value
        for key, by_metric in _per_question(
            services, runs, [loop.primary_metric], unanswerable
        ).items()
        for question, value in by_metric[loop.primary_metric].items()
    }
    gate = {
        "runs": runs,
        "champion_index_version": index.id,
        "primary_metric": loop.primary_metric,
        "primary_room": with_room(scores.values()),
    }
    kind = "held-out feedback queries" if primary[0][1] == "heldout" else "golden questions"
    if unanswerable:
        kind += f" that name a document of the corpus ({len(unanswerable)} name none)"
    gate["primary_kind"] = primary[0][1]
    return gate, too_few_to_judge(scores, loop, kind)


def _train(services: CycleParts, cycle: LoopCycle) -> Move:
    if cycle.embedder_version_id is not None:
        return Move(S.INDEXING)
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
    if settings.mode == "full":
        trained = finetune(Path(parent.path), Path(training_set.path), folder, settings)
        embedder = SentenceTransformerEmbedder(str(folder), **options)  # type: ignore[arg-type]
        return _trained_move(services, cycle, trained, embedder, parent, training_set, None, {})
    # the documents keep the champion's vectors: the query encoder learns against them
    documents_version = document_side(index.embedder_version)
    ids = sorted(services.store.ids(index.collection_name))
    found = services.store.get_embeddings(index.collection_name, ids)
    bank = np.stack([found[i] for i in ids])
    split = cycle.gate.get("golden_split", {})
    validation = _validation(services, index, Path(training_set.path), ids, bank, split)
    expanded, champion_figure = validation.expanded, validation.champion
    # an encoder must gain the validation queries what the gate asks of the candidate
    margin = max(services.settings.loop.min_improvement, 0.0)
    tuning = finetune_queries(
        Path(parent.path),
        Path(training_set.path),
        folder,
        settings,
        ids,
        bank,
        validation.check,
        margin=margin,
    )
    champion_retrieval = RetrievalConfig.stored(index.retrieval)
    recipe = {
        "encoder": "trained" if tuning.trained is not None else "kept",
        "epochs_run": tuning.epochs_run,
        "best_epoch": tuning.best_epoch,
        "encoder_margin": margin,
        "dense_weight": tuning.dense_weight,
        "champion_dense_weight": champion_retrieval.dense_weight
        if champion_retrieval.hybrid
        else None,
        "validation_queries": tuning.validation_queries,
        "validation": tuning.validation,
        "validation_kept": tuning.kept,
        "validation_champion": champion_figure,
        "validation_room": validation.champion_room,
        "validation_parts": validation.parts,
        "expansions": len(expanded),
        "max_questions_per_chunk": settings.max_questions_per_chunk,
        "expansion_check": validation.expansion_check,
        "dense_expansion": validation.dense_expansion,
    }
    if tuning.trained is None:
        with services.sessions() as session:
            champion_expansions = expansions.of_version(session, index.id)
        chosen = next(
            (v["ndcg_at_10"] for v in tuning.validation if v["epoch"] == tuning.best_epoch), None
        )
        room = validation.champion_room
        can_tell = room is None or room >= services.settings.loop.min_gate_queries
        if not kept_encoder_offers(
            chosen=chosen,
            champion=champion_figure,
            validated_with_champion=settings.init_from == "champion",
            changes={
                "weight": tuning.dense_weight not in (None, recipe["champion_dense_weight"]),
                "expansions": bool(expanded) and set(expanded) != set(champion_expansions),
                "dense_side": validation.dense_expansion != champion_retrieval.dense_expansion,
            },
            validation_can_tell=can_tell,
        ):
            move = _rejection(
                f"nothing learned: no epoch ranked the {tuning.validation_queries} "
                f"validation feedback queries +{margin} better than the encoder it started "
                "from, and no fusion weight or document expansion ranked them "
                + ("better than" if can_tell else "as well as")
                + f" the champion (nDCG@10 {_figure(chosen)}, the champion "
                f"{_figure(champion_figure)})",
                "loop",
            )
            move.fields["recipe"] = recipe
            return move
        # the champion's encoder with a new fusion weight, expansions or dense side: a new
        # index version
        same = services.embedders.get(index.embedder_version)
        row = embedder_row(services, same.version)
        assert row is not None, "the serving embedder is registered"
        return Move(S.INDEXING, fields={"embedder_version_id": row.id, "recipe": recipe})
    embedder = AsymmetricEmbedder(
        SentenceTransformerEmbedder(str(folder), **options),  # type: ignore[arg-type]
        services.embedders.get(documents_version),
    )
    return _trained_move(
        services, cycle, tuning.trained, embedder, parent, training_set, documents_version, recipe
    )


def kept_encoder_offers(
    *,
    chosen: float | None,
    champion: float | None,
    validated_with_champion: bool,
    changes: dict[str, bool],
    validation_can_tell: bool = True,
) -> bool:
    """Whether a cycle that kept the champion's encoder has a candidate for the gate: the
    fusion weight, expansions and dense side chosen on the validation queries (`chosen`, their
    nDCG@10) rank them better than the champion does (`champion`: its own weight, no new
    expansions), were chosen with the champion's encoder (`training.init_from`), and
    something (`changes`: weight, expansions, dense side) differs from the champion, which
    would otherwise be offered again.

    When the validation queries cannot tell (`validation_can_tell` False: fewer of them
    leave the champion room for a gain than the gate's floor, as under sparse feedback that
    confirms what was served), ranking them no worse is enough: the gate, which has room
    on its own questions (else nothing was trained), judges the change."""
    if chosen is None or champion is None:
        return False
    good = chosen > champion if validation_can_tell else chosen >= champion
    return validated_with_champion and good and any(changes.values())


def takes_dense_side(*, bm25: float, dense: float, room: int, floor: int) -> bool:
    """Whether kept expansions go to the dense side too: it ranks the validation queries
    (nDCG@10 `dense`) better than the BM25 side alone (`bm25`), or as well when fewer than
    `floor` (the gate's `min_gate_queries`) of them leave the champion `room` to tell the
    two apart; the gate, which has room on its own questions, then judges it, as it judges a
    kept encoder's change (`kept_encoder_offers`)."""
    if round(dense, 6) == round(bm25, 6):
        return room < floor
    return dense > bm25


@dataclass(frozen=True)
class _Validation:
    check: FusionCheck | None  # what query-side training validates on
    expanded: expansions.Pairs  # the document expansions the candidate gets
    expansion_check: dict[str, Any]  # validation nDCG@10 with and without them
    champion: float | None  # the champion's validation nDCG@10 (None: no validation queries)
    dense_expansion: bool = False  # the expansions' questions on the dense side too
    champion_room: int | None = None  # validation queries the champion ranks imperfectly
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)  # `_parts`


def _validation(
    services: CycleParts,
    index: IndexVersion,
    examples: Path,
    ids: list[str],
    bank: np.ndarray,
    split: dict[str, Any],
) -> _Validation:
    """What query-side training validates on, the document expansions the candidate gets
    (rag_loop.index.expansions) and the champion's validation nDCG@10 (its encoder and
    fusion weight, no new expansions). The validation queries are the training set's
    validation part and the golden sets' tuning questions when the cycle splits them
    (`split`: `_golden_split`), which are never expansions.

    A hybrid champion's validation queries are ranked with BM25 over its chunks' own text
    (not its expansions: those may hold the validation queries themselves, from earlier
    cycles) and again with the chunks expanded by the fit part's questions. The candidate
    gets every training question as expansions (the fit part's, checked on the validation
    queries, and the validation queries' own) unless the fit part's rank the validation
    queries worse with the champion's encoder, by more than the gate lets a metric drop
    (`loop.max_regression`), overall or on any part (the feedback's validation queries, each
    golden set's tuning questions: FusionCheck.guarded); when they are kept, the encoder is
    validated with them too, and every epoch and weight it chooses keeps each part within
    the same tolerance of the champion.
    Kept expansions go to the dense side as well (a chunk's cosine the best of the query's
    with the chunk and with its questions) only when that ranks the validation queries
    better than the BM25 side alone: where users ask about the same chunks in other words
    (SciFact) it finds them; where no two questions share a chunk (PubMedQA-L) it can only
    pull the wrong chunk up, and the validation queries show that. When they rank them
    alike and too few of them leave the champion room to tell (fewer than the gate's
    `min_gate_queries`, as under sparse feedback that confirms what was served), the dense
    side goes to the gate with the rest, as a kept encoder's change does
    (`kept_encoder_offers`)."""
    config = RetrievalConfig.stored(index.retrieval)
    encoder = services.embedders.get(index.embedder_version)
    tolerance = services.settings.loop.max_regression
    if not config.hybrid:
        tuning = _tuning(services, split, lambda: services.store.hits(index.collection_name))
        plain = FusionCheck.from_examples(
            examples, ids, bank, None, None, config.candidates, tuning
        )
        if plain is None:
            return _Validation(None, [], {}, None)
        scored = plain.score(encoder.embed_queries(plain.queries))
        return _Validation(
            plain.guarded(scored, tolerance),
            [],
            {},
            _at_incumbent(scored, plain),
            champion_room=_room(scored, plain),
            parts=_parts(scored, plain),
        )
    hits = services.store.hits(index.collection_name)
    tuning = _tuning(services, split, lambda: hits)

    def check_with(expanded: dict[str, list[str]] | None) -> FusionCheck | None:
        lexical = LexicalIndex(hits, config, expanded)

        def bm25_of(query: str) -> dict[str, float]:
            scores = lexical.scores(query)
            return {lexical.hits[i].chunk_id: float(scores[i]) for i in np.flatnonzero(scores)}

        return FusionCheck.from_examples(
            examples, ids, bank, bm25_of, config.dense_weight, config.candidates, tuning
        )

    unguarded = check_with(None)
    expand = services.settings.training.expand_documents
    cap = services.settings.training.max_questions_per_chunk
    if unguarded is None:  # no validation queries: the gate alone decides
        every = expansions.from_training_set(examples, per_chunk=cap) if expand else []
        return _Validation(None, every, {}, None)
    vectors = encoder.embed_queries(unguarded.queries)
    without = unguarded.score(vectors)
    champion, room = _at_incumbent(without, unguarded), _room(without, unguarded)
    parts = _parts(without, unguarded)
    plain = unguarded.guarded(without, tolerance)
    if not expand:
        return _Validation(plain, [], {}, champion, champion_room=room, parts=parts)
    fit = expansions.grouped(
        expansions.from_training_set(examples, per_chunk=cap, parts=("fit", expansions.ASSOCIATED))
    )
    expanded = check_with(fit)
    assert expanded is not None, "the same validation queries"
    expanded = expanded.guarded(without, tolerance)
    with_ = expanded.score(vectors)
    without = plain.choose(without)  # the champion's figures, the weight chosen within the guard
    figures = {
        "validation_ndcg_at_10_without": round(without.ndcg_at_10, 6),
        "validation_ndcg_at_10_with": round(with_.ndcg_at_10, 6),
    }
    # the tolerance the gate gives any tracked metric on any data set: a few validation
    # queries that share no chunk with the fit part's questions only measure noise, but
    # expansions that cost one part more (the gate's guard would find it) are dropped
    if not with_.within_guard or with_.ndcg_at_10 < without.ndcg_at_10 - tolerance:
        return _Validation(plain, [], figures, champion, champion_room=room, parts=parts)
    position = {chunk_id: i for i, chunk_id in enumerate(ids)}
    dense = expanded.with_questions(
        {position[c]: questions for c, questions in fit.items() if c in position}
    )
    with_dense = dense.score(vectors, encoder.embed_queries(dense.questions))
    figures["validation_ndcg_at_10_with_dense"] = round(with_dense.ndcg_at_10, 6)
    every = expansions.from_training_set(examples, per_chunk=cap)
    floor = services.settings.loop.min_gate_queries
    if takes_dense_side(bm25=with_.selection, dense=with_dense.selection, room=room, floor=floor):
        return _Validation(
            dense, every, figures, champion, dense_expansion=True, champion_room=room, parts=parts
        )
    return _Validation(expanded, every, figures, champion, champion_room=room, parts=parts)


def _parts(scored: Scored, check: FusionCheck) -> dict[str, dict[str, Any]]:
    """Each part of the validation queries: how many, and the champion's nDCG@10 at its own
    fusion weight (the figure the guard keeps every part near: FusionCheck.guarded)."""
    at = scored.parts_by_weight[str(check.incumbent)]
    return {
        part: {"queries": check.parts.count(part), "champion": round(value, 6)}
        for part, value in at.items()
    }


def _at_incumbent(scored: Scored, check: FusionCheck) -> float:
    """The validation nDCG@10 at the champion's own fusion weight."""
    return round(scored.by_weight[str(check.incumbent)], 6)


def _room(scored: Scored, check: FusionCheck) -> int:
    """How many validation queries the champion's own fusion weight ranks imperfectly."""
    return scored.room_by_weight[str(check.incumbent)]


def _figure(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


def _trained_move(
    services: CycleParts,
    cycle: LoopCycle,
    trained: TrainedModel,
    embedder: Embedder,
    parent: EmbedderVersion,
    training_set: TrainingSet,
    documents_version: str | None,
    recipe: dict[str, Any],
) -> Move:
    row = embedder_row(services, embedder.version)  # trained before a crash: same weights
    if row is None:
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
    return Move(S.INDEXING, fields={"embedder_version_id": row.id, "recipe": recipe})


def _index(services: CycleParts, cycle: LoopCycle) -> Move:
    with services.sessions() as session:
        model = session.get_one(EmbedderVersion, cycle.embedder_version_id)
        parent = session.get_one(IndexVersion, cycle.champion_index_version_id)
        session.expunge_all()
    embedder = services.embedders.get(model.version)
    version_id = cycle.candidate_index_version_id
    recipe = cycle.recipe or {}
    if version_id is None:
        retrieval = (
            RetrievalConfig.for_new_version(
                services.settings.retrieval, RetrievalConfig.stored(parent.retrieval)
            )
            .with_weight(recipe.get("dense_weight"))
            .with_dense_expansion(bool(recipe.get("dense_expansion")))
        )
        version_id, _ = create_index_version(
            services,
            embedder,
            parent,
            f"loop cycle {cycle.id}: {model.version}, {retrieval.label}",
            retrieval=retrieval,
        )
        _update(services, cycle.id, candidate_index_version_id=version_id)
    if recipe.get("expansions"):
        with services.sessions() as session:
            training_set = session.get_one(TrainingSet, cycle.training_set_id)
            session.expunge(training_set)
        # the cap the cycle validated with (none in recipes from before there was one)
        pairs = expansions.from_training_set(
            Path(training_set.path), per_chunk=recipe.get("max_questions_per_chunk")
        )
        # the dense side's vectors, by the encoder that will embed its queries
        vectors = (
            embedder.embed_queries([q for _, q in pairs]) if recipe.get("dense_expansion") else None
        )
        with transaction(services.sessions) as session:  # again on a resume: the same rows
            expansions.record(session, version_id, pairs, vectors=vectors)
    same_documents = document_side(parent.embedder_version) == document_side(model.version)
    build_index(
        services,
        version_id,
        embedder,
        batch_size=256,
        reuse_from=parent.collection_name if same_documents else None,
    )
    return Move(S.EVALUATING)


def _evaluate(services: CycleParts, cycle: LoopCycle) -> Move:
    with services.sessions() as session:
        training_set = session.get_one(TrainingSet, cycle.training_set_id)
        serving = champion(session)
        session.expunge_all()
    datasets: list[Path] = []
    if training_set.heldout_path:
        datasets.append(Path(training_set.heldout_path))
    datasets += _judged_golden(services, cycle.id, cycle.gate.get("golden_split", {}))
    if not datasets:  # the golden sets were removed since collecting
        return _rejection(NOTHING_TO_EVALUATE, "loop")
    runs: dict[str, dict[str, Any]] = dict(cycle.gate.get("runs", {}))
    for path in datasets:
        kind = "heldout" if str(path) == training_set.heldout_path else "golden"
        for role, version_id in (
            ("champion", serving.id),
            ("candidate", cycle.candidate_index_version_id),
        ):
            key = f"{path}|{role}"
            if key in runs and _same_index(services, runs[key], version_id):
                continue  # measured before training, or resumed: this evaluation is done
            runs[key] = _gate_run(services, path, kind, role, version_id)
            _update(services, cycle.id, gate={**cycle.gate, "runs": runs})
    k = services.settings.evaluation.k
    verdict = decide(
        runs,
        services.settings.loop,
        k,
        _per_question(services, runs, tracked_metrics(services.settings.loop, k)),
        primary_kind=cycle.gate.get("primary_kind"),
    )
    gate = {**cycle.gate, "runs": runs, "champion_index_version": serving.id, **verdict}
    if not verdict["passed"]:
        move = _rejection("; ".join(verdict["reasons"]), "gate")
        move.fields["gate"] = gate
        return move
    if services.settings.loop.shadow_share > 0:
        candidate_id = cycle.candidate_index_version_id

        def shadow(session: Session, row: LoopCycle) -> dict[str, Any]:
            set_alias(session, CANDIDATE, session.get_one(IndexVersion, candidate_id))
            return {}

        return Move(
            S.SHADOW,
            action="loop.shadow",
            actor="gate",
            details=verdict,
            fields={"gate": {**gate, "shadow_since": now_of(session).isoformat()}},
            effects=shadow,
        )
    move = _after_gate(services, cycle, "gate")
    move.fields["gate"] = gate
    return move


def _gate_run(
    services: CycleParts, path: Path, kind: str, role: str, version_id: int | None
) -> dict[str, Any]:
    """One evaluation for the gate: `version_id` ranking the questions of `path`."""
    revision = _revision(services, version_id)
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
    return {
        "dataset": str(path),
        "kind": kind,
        "role": role,
        "index_version": version_id,
        "revision": revision,
        "eval_run_id": outcome.run_id,
        "mlflow_run_id": outcome.mlflow_run_id,
        "n_samples": outcome.n_samples,
        "metrics": outcome.metrics,
    }


def _revision(services: CycleParts, version_id: int | None) -> int | None:
    if version_id is None:
        return None
    with services.sessions() as session:
        return session.get_one(IndexVersion, version_id).revision


def _same_index(services: CycleParts, run: dict[str, Any], version_id: int | None) -> bool:
    """Whether a stored gate run measured `version_id` as it is now: the same version at
    the same revision (a correction approved since changes what it retrieves)."""
    return run["index_version"] == version_id and run.get("revision") == _revision(
        services, version_id
    )


def _per_question(
    services: CycleParts,
    runs: dict[str, dict[str, Any]],
    metrics: Sequence[str],
    unanswerable: set[str] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Each gate run's `metrics` per question id (run key -> metric -> question), from the
    samples its evaluation stored, leaving out a question none of whose reference
    documents or chunks the corpus holds (e.g. a golden set written for another corpus): no
    ranking can find its answer, so it has no room for a gain and tells two versions apart
    in nothing (its id is added to `unanswerable`)."""
    run_keys = {run["eval_run_id"]: key for key, run in runs.items()}
    scores: dict[str, dict[str, dict[str, float]]] = {
        key: {metric: {} for metric in metrics} for key in runs
    }
    with services.sessions() as session:
        rows = session.execute(
            select(
                EvalSample.run_id, EvalSample.sample_id, EvalSample.scores, EvalSample.reference_ids
            ).where(EvalSample.run_id.in_(run_keys))
        ).all()
        held = _held_by_corpus(session, {str(r) for *_, refs in rows for r in refs or []})
        for run_id, sample_id, values, references in rows:
            if references and not any(str(r) in held for r in references):
                if unanswerable is not None:
                    unanswerable.add(sample_id)
                continue
            for metric in metrics:
                value = (values or {}).get(metric)
                if value is not None:
                    scores[run_keys[run_id]][metric][sample_id] = float(value)
    return scores


def _held_by_corpus(session: Session, ids: set[str]) -> set[str]:
    """Which of `ids` (document or chunk ids) the corpus holds now."""
    wanted = sorted(ids)
    held: set[str] = set()
    for start in range(0, len(wanted), 500):
        batch = wanted[start : start + 500]
        held.update(
            session.scalars(
                select(Document.id).where(Document.id.in_(batch), Document.deleted_at.is_(None))
            )
        )
        held.update(
            session.scalars(
                select(Chunk.id).where(Chunk.id.in_(batch), Chunk.superseded_at.is_(None))
            )
        )
    return held


def _shadow(services: CycleParts, cycle: LoopCycle) -> Move:
    """Decide once enough shadowed questions have feedback; until then the cycle waits
    here (the loop's tick looks again)."""
    settings = services.settings.loop
    since = datetime.fromisoformat(cycle.gate["shadow_since"])
    assert cycle.candidate_index_version_id is not None
    stats = shadow_stats(services.sessions, cycle.candidate_index_version_id, since)
    gate = {**cycle.gate, "shadow": stats}
    if stats["labelled"] < settings.shadow_min_labelled:
        return Move(None, fields={"gate": gate})  # wait for more live traffic and feedback
    drop = (stats["champion_precision"] or 0) - (stats["candidate_precision"] or 0)
    if drop > settings.shadow_max_precision_drop:
        move = _rejection(
            f"shadow: labelled precision {stats['candidate_precision']:.3f} vs the champion's "
            f"{stats['champion_precision']:.3f} on {stats['labelled']} questions "
            f"(allowed drop {settings.shadow_max_precision_drop})",
            "shadow",
        )
    else:
        move = _after_gate(services, cycle, "shadow")
    move.fields["gate"] = gate
    return move


STEPS.update(
    {
        S.COLLECTING: _collect,
        S.TRAINING: _train,
        S.INDEXING: _index,
        S.EVALUATING: _evaluate,
        S.SHADOW: _shadow,
    }
)


def _after_gate(services: CycleParts, cycle: LoopCycle, actor: str) -> Move:
    if services.settings.loop.require_approval:

        def hold(session: Session, row: LoopCycle) -> dict[str, Any]:
            drop_alias(session, CANDIDATE)
            return {}

        return Move(S.AWAITING_APPROVAL, action="loop.awaiting_approval", actor=actor, effects=hold)
    return _promotion(services, cycle, actor=actor)


# promotion and endings -------------------------------------------------------------------


def _promotion(services: CycleParts, cycle: LoopCycle, *, actor: str) -> Move:
    """Catch the candidate up with ingests and corrections since it was built, then the
    move that makes it serve: aliases, state and audit in one transaction."""
    candidate_id = cycle.candidate_index_version_id
    assert candidate_id is not None
    with services.sessions() as session:
        candidate = session.get_one(IndexVersion, candidate_id)
        session.expunge(candidate)
    embedder = services.embedders.get(candidate.embedder_version)
    build_index(services, candidate.id, embedder, actor=actor)

    def promote(session: Session, row: LoopCycle) -> dict[str, Any]:
        old = champion(session)
        new = session.get_one(IndexVersion, candidate_id)
        if old.id == new.id:
            raise Conflict(f"index {new.id} serves already; loop cycle {row.id} is not promoted")
        if new.status != "ready":
            raise Conflict(f"index {new.id} is {new.status}; only a ready index serves")
        set_alias(session, PREVIOUS, old)
        set_alias(session, CHAMPION, new)  # the very next request retrieves from it
        drop_alias(session, CANDIDATE)
        row.champion_index_version_id = old.id
        outbox.sync_champion_alias(session, f"loop cycle {row.id} promoted index {new.id}")
        return {"from_index": old.id, "to_index": new.id, "embedder_version": new.embedder_version}

    return Move(
        S.PROMOTED,
        action="loop.promote",
        actor=actor,
        fields={"decided_by": actor},
        effects=promote,
    )


def _reconcile_promoted(actor: str) -> Move:
    def record(session: Session, row: LoopCycle) -> dict[str, Any]:
        previous = session.get(IndexVersion, row.champion_index_version_id)
        if previous is not None and previous.id != row.candidate_index_version_id:
            set_alias(session, PREVIOUS, previous)
        outbox.sync_champion_alias(session, f"loop cycle {row.id}'s candidate serves")
        return {"to_index": row.candidate_index_version_id, "reconciled": True}

    return Move(
        S.PROMOTED,
        action="loop.promote",
        actor=actor,
        fields={"error": None, "decided_by": actor},
        effects=record,
    )


def _rejection(reason: str, actor: str) -> Move:
    """The end of a cycle that will not serve: its candidate alias goes, its index is marked
    rejected and its collection dropped (through the outbox, never a protected one); its
    numbers stay in SQL and MLflow."""

    def effects(session: Session, row: LoopCycle) -> dict[str, Any]:
        drop_alias(session, CANDIDATE)
        if row.candidate_index_version_id is not None:
            index = session.get_one(IndexVersion, row.candidate_index_version_id)
            protected = protected_collections(session)
            if index.collection_name in protected:
                raise Conflict(
                    f"index {index.id} is the {protected[index.collection_name]} index; "
                    f"loop cycle {row.id} cannot be rejected"
                )
            index.status = "rejected"
            outbox.drop_collection(session, index.collection_name, f"loop cycle {row.id} rejected")
        return {}

    return Move(
        S.REJECTED,
        action="loop.reject",
        actor=actor,
        details={"reason": reason},
        fields={"error": reason, "decided_by": actor},
        effects=effects,
    )


def _fail(services: CycleParts, cycle: LoopCycle, message: str, figures: dict[str, float]) -> None:
    move = Move(
        S.FAILED,
        action="loop.failed",
        details={"step": cycle.state, "error": message},
        fields={"error": f"{cycle.state}: {message}"[:4000]},
    )
    try:
        _move(services, cycle.id, move, stage=(cycle.state, figures), failed_in=cycle.state)
    except Conflict as exc:  # decided meanwhile by someone else
        log.warning("loop cycle %s: %s", cycle.id, exc.message)


# bookkeeping ---------------------------------------------------------------------------


def _figures(started: float, peak_mb: float) -> dict[str, float]:
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_mb}


def _move(
    services: CycleParts,
    cycle_id: int,
    move: Move,
    *,
    stage: tuple[str, dict[str, float]] | None = None,
    failed_in: str | None = None,
) -> None:
    """One transaction: the state (checked against the declared moves), the columns, the
    stage's figures, the effects, the audit entry and, when the cycle settles, its MLflow run
    (through the outbox). The outbox is applied after the commit."""
    with transaction(services.sessions) as session:
        row = session.get_one(LoopCycle, cycle_id, with_for_update=True)
        if move.to is not None:
            check_move(cycle_id, row.state, move.to)
        for key, value in move.fields.items():
            setattr(row, key, value)
        if stage is not None:
            name, figures = stage
            stages = dict(row.stages)
            previous = stages.get(name, {})
            stages[name] = {
                "seconds": round(previous.get("seconds", 0) + figures["seconds"], 3),
                "peak_rss_mb": round(
                    max(previous.get("peak_rss_mb", 0), figures["peak_rss_mb"]), 1
                ),
            }
            row.stages = stages
        if failed_in is not None:
            row.failed_in = failed_in
        details = dict(move.details)
        if move.effects is not None:
            details.update(move.effects(session, row))
        row.gate = Gate.stored(row.gate)  # one shape in the JSON columns
        row.stages = stored_stages(row.stages)
        now = now_of(session)
        row.updated_at = now
        if move.to is not None:
            row.state = move.to
            if move.to in SETTLED or move.to == S.FAILED:
                row.heartbeat_at = None  # nobody runs it any more
                if move.to != S.AWAITING_APPROVAL:
                    row.finished_at = now
            elif row.heartbeat_at is not None:
                row.heartbeat_at = now  # still ours
        if move.action is not None:
            session.add(
                AuditEntry(
                    actor=move.actor,
                    action=move.action,
                    target=f"loop_cycle:{cycle_id}",
                    details=details,
                )
            )
        if move.to in TERMINAL or move.to == S.AWAITING_APPROVAL:
            session.flush()
            _log_cycle(session, row)
    services.outbox.flush_quietly()


def _update(services: CycleParts, cycle_id: int, **fields: Any) -> None:
    """Columns a running step stores as it goes (not a move)."""
    with transaction(services.sessions) as session:
        row = session.get_one(LoopCycle, cycle_id)
        for key, value in fields.items():
            setattr(row, key, value)
        row.gate = Gate.stored(row.gate)
        row.updated_at = now_of(session)
        if row.heartbeat_at is not None:
            row.heartbeat_at = now_of(session)


def _candidate_serves(services: CycleParts, cycle: LoopCycle) -> bool:
    if cycle.candidate_index_version_id is None:
        return False
    with services.sessions() as session:
        serving = champion(session)
    return serving.id == cycle.candidate_index_version_id


def _get(services: CycleParts, cycle_id: int) -> LoopCycle:
    with services.sessions() as session:
        cycle = session.get(LoopCycle, cycle_id)
        if cycle is None:
            raise NotFound(f"no loop cycle {cycle_id}; `rag-loop loop list` shows them")
        session.expunge(cycle)
        return cycle


def _claim(services: CycleParts, cycle_id: int, *, force: bool = False) -> None:
    """Take the cycle for this process; another process holding a fresh lease wins,
    unless `force` (its process is known to be gone, e.g. after a crash)."""
    now = now_of(services.sessions)
    with transaction(services.sessions) as session:
        taken = leases.take(
            session,
            LoopCycle.heartbeat_at,
            LoopCycle.id == cycle_id,
            stale_before=now + LEASE if force else now - LEASE,
            stamp=now,
        )
    if not taken:
        _get(services, cycle_id)  # NotFound first
        raise Conflict(
            f"loop cycle {cycle_id} is being run by another process; if that process is "
            "gone (a crash), take it over: rag-loop loop resume --force"
        )


def _log_cycle(session: Session, cycle: LoopCycle) -> None:
    """One MLflow run per settled state (through the outbox): the decision, the gate's
    numbers, the stages."""
    view = _view(session, cycle)
    metrics: dict[str, float] = {}
    for name, value in (view["gate"].get("deltas") or {}).items():
        metrics[f"delta.{name}"] = float(value)
    for stage, figures in view["stages"].items():
        metrics[f"{stage}.seconds"] = float(figures["seconds"])
        metrics[f"{stage}.peak_rss_mb"] = float(figures["peak_rss_mb"])
    cycle.mlflow_run_id = None  # the run of this state replaces the last one
    outbox.log_run(
        session,
        LOOP_EXPERIMENT,
        f"cycle-{cycle.id}-{view['state']}",
        params={
            "cycle": cycle.id,
            "state": view["state"],
            "trigger": view["trigger"],
            "champion_index_version": view["champion_index_version_id"],
            "candidate_index_version": view["candidate_index_version_id"],
            "embedder_version": (view["embedder"] or {}).get("version"),
            "training_set": (view["training_set"] or {}).get("content_hash"),
            "decided_by": view["decided_by"],
        },
        metrics=metrics,
        tags={"rag_loop.kind": "loop_cycle", "rag_loop.loop_cycle": str(cycle.id)},
        artifacts={"cycle.json": view},
        record=("loop_cycles", cycle.id),
    )


def cycle_view(services: CycleParts, cycle_id: int) -> dict[str, Any]:
    """The cycle as the API and the CLI render it (`CycleView`, as JSON-ready values)."""
    return cycle_model(services, cycle_id).model_dump(mode="json")


def cycle_model(services: CycleParts, cycle_id: int) -> CycleView:
    with services.sessions() as session:
        cycle = session.get(LoopCycle, cycle_id)
        if cycle is None:
            raise NotFound(f"no loop cycle {cycle_id}; `rag-loop loop list` shows them")
        return _model(session, cycle)


def list_cycles(services: CycleParts, limit: int = 50) -> list[dict[str, Any]]:
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit must be between 1 and 1000")
    with services.sessions() as session:
        cycles = list(session.scalars(select(LoopCycle).order_by(LoopCycle.id.desc()).limit(limit)))
        return [_model(session, c).model_dump(mode="json") for c in cycles]


def _view(session: Session, cycle: LoopCycle) -> dict[str, Any]:
    return _model(session, cycle).model_dump(mode="json")


def _model(session: Session, cycle: LoopCycle) -> CycleView:
    training = session.get(TrainingSet, cycle.training_set_id) if cycle.training_set_id else None
    model = (
        session.get(EmbedderVersion, cycle.embedder_version_id)
        if cycle.embedder_version_id
        else None
    )
    return CycleView(
        id=cycle.id,
        state=CycleState(cycle.state),
        trigger=cycle.trigger,
        trigger_details=cycle.trigger_details,
        created_at=cycle.created_at.isoformat(),
        updated_at=cycle.updated_at.isoformat(),
        finished_at=cycle.finished_at.isoformat() if cycle.finished_at else None,
        feedback_until=cycle.feedback_until.isoformat(),
        champion_index_version_id=cycle.champion_index_version_id,
        candidate_index_version_id=cycle.candidate_index_version_id,
        training_set=None
        if training is None
        else TrainingSetSummary(
            id=training.id,
            content_hash=training.content_hash,
            n_examples=training.n_examples,
            n_queries=training.n_queries,
            n_heldout=training.n_heldout,
            stats=training.stats,
            mlflow_run_id=training.mlflow_run_id,
        ),
        embedder=None
        if model is None
        else EmbedderSummary(
            id=model.id,
            version=model.version,
            parent_version=model.parent_version,
            base_version=model.base_version,
            mlflow_model=f"{model.mlflow_model_name}/{model.mlflow_model_version}"
            if model.mlflow_model_name
            else None,
            mlflow_run_id=model.mlflow_run_id,
        ),
        gate=Gate.model_validate(cycle.gate),
        recipe=cycle.recipe or {},
        stages={k: StageFigures.model_validate(v) for k, v in cycle.stages.items()},
        failed_in=CycleState(cycle.failed_in) if cycle.failed_in else None,
        error=cycle.error,
        decided_by=cycle.decided_by,
        mlflow_run_id=cycle.mlflow_run_id,
    )
