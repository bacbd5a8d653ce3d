"""One clock for every record and rule: given to `Services`, carried by the engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from rag_loop.clock import SimulatedClock
from rag_loop.corpus.ingest import ingest
from rag_loop.db.models import (
    Document,
    DriftCheck,
    EvalRun,
    FeedbackEvent,
    Interaction,
    Job,
    LoopCycle,
    now_of,
)
from rag_loop.evaluation.report import thumbs_by_day
from rag_loop.feedback.schemas import FeedbackIn
from rag_loop.feedback.service import submit_feedback
from rag_loop.interactions.ask import ask
from rag_loop.loop.cycle import start_cycle
from rag_loop.loop.triggers import due_trigger
from rag_loop.scheduler import SimulatedSchedule, scheduled_jobs
from rag_loop.services import Services
from rag_loop.settings import Settings
from tests.conftest import CORPUS

START = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)


def test_a_simulated_clock_stamps_every_record_and_rule(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    """Rows written by the ORM, by Core inserts (an answer) and by the batch writer (feedback)
    all carry the simulated time, and the loop's snapshot compares like with like: feedback
    given two simulated days after a cycle's snapshot is new to the trigger."""
    clock = SimulatedClock(START)
    services = Services.from_settings(
        make_settings(loop={"trigger_feedback_count": 1}), embedder=embedder, clock=clock
    )
    try:
        ingest(services, CORPUS, actor="test")
        answered = ask(services, "How do I reset the Kestrel device?")
        clock.advance(timedelta(days=1))
        submit_feedback(
            services,
            FeedbackIn.model_validate({"interaction_id": answered.interaction_id, "thumb": "up"}),
            actor="test",
        )
        assert due_trigger(services) == ("feedback", {"new_feedback_events": 1})
        clock.advance(timedelta(hours=5))
        cycle_id = start_cycle(services, trigger="manual", actor="test")
        with services.sessions() as session:
            assert now_of(session) == START + timedelta(days=1, hours=5)
            assert {d.created_at for d in session.scalars(select(Document))} == {START}
            assert session.get_one(Interaction, answered.interaction_id).created_at == START
            thumb = session.scalars(select(FeedbackEvent)).one()
            assert thumb.created_at == START + timedelta(days=1)
            cycle = session.get_one(LoopCycle, cycle_id)
            assert cycle.created_at == cycle.feedback_until == now_of(session)
        assert due_trigger(services) is None  # the thumb is in the cycle's snapshot
        assert thumbs_by_day(services) == [{"day": "2031-03-01", "up_rate": 1.0, "thumbs": 1}]
    finally:
        services.close()


def test_a_simulated_clock_only_moves_forward() -> None:
    clock = SimulatedClock(START)
    with clock.running():  # work takes its wall time on the clock too
        time.sleep(0.05)
        assert clock.now() > START
        with pytest.raises(ValueError, match="running"):
            clock.advance(timedelta(hours=1))
    moved = clock.now()
    assert timedelta(seconds=0.05) <= moved - START < timedelta(seconds=30)
    assert clock.now() == moved  # and stands still again
    clock = SimulatedClock(START)
    assert clock.advance_to(START - timedelta(hours=1)) == START  # the past: it stays put
    assert clock.advance(timedelta(minutes=30)) == START + timedelta(minutes=30)
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(timedelta(seconds=-1))
    with pytest.raises(ValueError, match="timezone-aware"):
        SimulatedClock(datetime(2031, 3, 1))


def test_the_schedule_fires_on_a_simulated_clock(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    """The jobs the settings schedule, fired by their own triggers on simulated time: the
    hourly evaluation round fires on each simulated hour that has asks (a job due several
    times in between runs once, as APScheduler coalesces), and what it writes carries the
    simulated time. The clock starts on the hour: the first round has nothing to score."""
    clock = SimulatedClock(START)
    settings = make_settings(
        evaluation={"schedule": "0 * * * *", "golden_sets": []}, loop={"auto": False}
    )
    services = Services.from_settings(settings, embedder=embedder, clock=clock)
    try:
        ingest(services, CORPUS, actor="test")
        schedule = SimulatedSchedule(scheduled_jobs(services), clock)
        assert set(schedule.runs) == {"evaluation-round", "job-sweep", "registry-outbox"}
        for minutes in range(0, 180, 20):  # an ask every 20 minutes for three hours
            schedule.run_until(START + timedelta(minutes=minutes))
            clock.advance_to(START + timedelta(minutes=minutes))
            ask(services, "How do I reset the Kestrel device?")
        schedule.run_until(START + timedelta(hours=6))  # three more firings, nothing between
        assert schedule.runs["evaluation-round"] == 4
        with services.sessions() as session:
            fired = sorted(
                job.payload["fired_at"]
                for job in session.scalars(select(Job).where(Job.kind == "scheduled"))
            )
            runs = session.scalars(select(EvalRun).order_by(EvalRun.created_at)).all()
            checks = session.scalars(select(DriftCheck)).all()
        assert fired == [(START + timedelta(hours=h)).isoformat() for h in (0, 1, 2, 6)]
        assert [r.status for r in runs] == ["failed", "done", "done", "done"]
        assert runs[1].created_at >= START + timedelta(hours=1)
        assert runs[-1].created_at >= START + timedelta(hours=6)
        assert len(checks) >= 4 and all(c.created_at >= START for c in checks)
    finally:
        services.close()
