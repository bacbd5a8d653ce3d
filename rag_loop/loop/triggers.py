"""When does a cycle start, and who watches a promotion? `tick(services)` answers both.

Triggers (each can be switched off in `loop` settings):

feedback   at least `trigger_feedback_count` feedback events since the last cycle's snapshot
kpi        the thumbs-up rate of the latest `kpi_window` thumbs is below
           `trigger_min_thumbs_up_rate`, with a full window of thumbs new since the last cycle
drift      a `drift` event (from the evaluation's drift checks) newer than the last cycle,
           once `trigger_drift_min_feedback` feedback events are new since that cycle (a
           cycle learns only from feedback; without new feedback it would retrain on the
           last cycle's examples)
schedule   `loop.schedule`, a cron expression (run by the scheduler, not by tick)

The watch: after a promotion, the answers of the new index are compared with the latest
answers of the index it replaced; once `rollback_min_samples` of them have thumbs, a rise of
the thumbs-down rate beyond `rollback_max_thumbs_down_increase` or a drop of the labelled
precision beyond `rollback_max_precision_drop` rolls back at once. After
`rollback_watch_samples` thumbs the promotion holds and the watch ends.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select

from rag_loop import jobs
from rag_loop.db.engine import transaction
from rag_loop.db.models import Event, FeedbackEvent, IndexVersion, LoopCycle
from rag_loop.errors import Conflict
from rag_loop.index.versions import champion
from rag_loop.jobs import JobParts
from rag_loop.loop import cycle as cycles
from rag_loop.loop.cycle import CycleParts
from rag_loop.loop.live import served_stats
from rag_loop.loop.records import Gate
from rag_loop.loop.states import ACTIVE, CycleState, values

log = logging.getLogger(__name__)


class TriggerParts(CycleParts, JobParts, Protocol):
    """What the loop's triggers use: a cycle's parts, and the jobs to hand a cycle to."""


def due_trigger(services: TriggerParts) -> tuple[str, dict[str, Any]] | None:
    settings = services.settings.loop
    with services.sessions() as session:
        last = session.scalar(select(LoopCycle).order_by(LoopCycle.id.desc()).limit(1))
        since: datetime | None = last.feedback_until if last else None

        def newer(column: Any) -> Any:
            return column > since if since is not None else column.is_not(None)

        fresh = (
            session.scalar(
                select(func.count())
                .select_from(FeedbackEvent)
                .where(newer(FeedbackEvent.created_at))
            )
            or 0
        )
        if settings.trigger_feedback_count and fresh >= settings.trigger_feedback_count:
            return "feedback", {"new_feedback_events": fresh}
        if settings.trigger_min_thumbs_up_rate is not None:
            thumbs = list(
                session.scalars(
                    select(FeedbackEvent.thumb)
                    .where(FeedbackEvent.kind == "thumb")
                    .order_by(FeedbackEvent.id.desc())
                    .limit(settings.kpi_window)
                )
            )
            new_thumbs = (
                session.scalar(
                    select(func.count())
                    .select_from(FeedbackEvent)
                    .where(FeedbackEvent.kind == "thumb", newer(FeedbackEvent.created_at))
                )
                or 0
            )
            if len(thumbs) >= settings.kpi_window and new_thumbs >= settings.kpi_window:
                rate = thumbs.count("up") / len(thumbs)
                if rate < settings.trigger_min_thumbs_up_rate:
                    return "kpi", {"thumbs_up_rate": rate, "window": len(thumbs)}
        if settings.trigger_on_drift and fresh >= settings.trigger_drift_min_feedback:
            event = session.scalar(
                select(Event)
                .where(Event.kind == "drift", newer(Event.created_at))
                .order_by(Event.id.desc())
                .limit(1)
            )
            if event is not None:
                details = {"event_id": event.id, "new_feedback_events": fresh}
                return "drift", {**details, **event.payload}
    return None


def watch(services: TriggerParts) -> dict[str, Any] | None:
    """Check the latest promotion still being watched; roll it back if live metrics
    regressed. Returns what it saw (None: nothing is watched)."""
    settings = services.settings.loop
    with services.sessions() as session:
        cycle = session.scalar(
            select(LoopCycle)
            .where(LoopCycle.state == CycleState.PROMOTED)
            .order_by(LoopCycle.id.desc())
            .limit(1)
        )
        if cycle is None or cycle.gate.get("watch", {}).get("status") in ("held", "rolled_back"):
            return None
        if champion(session).id != cycle.candidate_index_version_id:
            return None
        promoted_at = cycle.finished_at
        new_id, old_id = cycle.candidate_index_version_id, cycle.champion_index_version_id
        cycle_id = cycle.id
        assert new_id is not None and old_id is not None and promoted_at is not None
        session.get_one(IndexVersion, old_id)
    after = served_stats(
        services.sessions, new_id, after=promoted_at, last=settings.rollback_watch_samples
    )
    before = served_stats(services.sessions, old_id, last=settings.rollback_watch_samples)
    seen: dict[str, Any] = {"before": before, "after": after, "status": "watching"}
    if after["thumbs"] >= settings.rollback_min_samples:
        reasons = []
        if (
            before["thumbs_down_rate"] is not None
            and after["thumbs_down_rate"] is not None
            and after["thumbs_down_rate"] - before["thumbs_down_rate"]
            > settings.rollback_max_thumbs_down_increase
        ):
            reasons.append(
                f"thumbs-down rate {before['thumbs_down_rate']:.3f} -> "
                f"{after['thumbs_down_rate']:.3f}"
            )
        if (
            before["precision"] is not None
            and after["precision"] is not None
            and before["precision"] - after["precision"] > settings.rollback_max_precision_drop
        ):
            reasons.append(
                f"labelled precision {before['precision']:.3f} -> {after['precision']:.3f}"
            )
        if reasons:
            seen["status"] = "rolled_back"
            _store_watch(services, cycle_id, seen)
            cycles.rollback(
                services,
                actor="watch",
                reason="live metrics regressed: " + "; ".join(reasons),
                cycle_id=cycle_id,
            )
            return seen
        if after["thumbs"] >= settings.rollback_watch_samples:
            seen["status"] = "held"
    _store_watch(services, cycle_id, seen)
    return seen


def _store_watch(services: TriggerParts, cycle_id: int, seen: dict[str, Any]) -> None:
    with transaction(services.sessions) as session:
        row = session.get_one(LoopCycle, cycle_id)
        row.gate = Gate.stored({**row.gate, "watch": seen})


def _run(services: TriggerParts, cycle_id: int, actor: str = "loop") -> dict[str, Any]:
    """Run the cycle here, or, with a task queue, hand it to a worker (the API process that
    ticks stays free to serve)."""
    if services.queue is not None:
        job_id = jobs.submit(services, "loop_cycle", {"cycle_id": cycle_id}, actor=actor)
        return {"state": "queued", "job_id": job_id}
    return cycles.run_cycle(services, cycle_id, actor=actor)


def tick(services: TriggerParts) -> dict[str, Any]:
    """One look at the loop: go on with a cycle in shadow, watch the latest promotion,
    start a cycle when a trigger fires. Safe to call from several processes: a cycle is
    claimed before it runs, and only one cycle is active at a time."""
    with services.sessions() as session:
        active = session.scalar(select(LoopCycle).where(LoopCycle.state.in_(values(ACTIVE))))
        active_id, active_state = (active.id, active.state) if active else (None, None)
    if active_id is not None:
        if active_state == CycleState.SHADOW:
            try:
                return {"advanced": cycles.run_cycle(services, active_id)["state"]}
            except Conflict:
                return {"busy": active_id}
        return {"active": active_id, "state": active_state}
    watched = watch(services)
    if watched is not None and watched["status"] == "rolled_back":
        return {"watch": watched}
    trigger = due_trigger(services)
    if trigger is None:
        return {"watch": watched} if watched else {}
    name, details = trigger
    try:
        cycle_id = cycles.start_cycle(services, trigger=name, details=details, actor="loop")
    except Conflict:
        return {}
    log.info("loop cycle %s started by %s: %s", cycle_id, name, details)
    view = _run(services, cycle_id)
    return {"started": cycle_id, "trigger": name, "state": view["state"]}


def scheduled_cycle(services: TriggerParts) -> dict[str, Any]:
    """The `loop.schedule` job: start a cycle unless one is active."""
    try:
        cycle_id = cycles.start_cycle(services, trigger="schedule", actor="loop")
    except Conflict as exc:
        return {"skipped": exc.message}
    return {"started": cycle_id, "state": _run(services, cycle_id)["state"]}
