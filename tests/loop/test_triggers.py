"""What starts a cycle: feedback volume, a low thumbs-up rate, a drift event, a schedule."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

from rag_loop.corpus.ingest import ingest
from rag_loop.db.engine import transaction
from rag_loop.db.models import Event
from rag_loop.feedback.schemas import FeedbackIn
from rag_loop.feedback.service import submit_feedback
from rag_loop.interactions.ask import ask
from rag_loop.loop.triggers import due_trigger, tick
from rag_loop.scheduler import start_schedule
from rag_loop.services import Services
from tests.conftest import CORPUS
from tests.loop.conftest import GOLDEN_SHARE, questions, replay

OFF = {"trigger_feedback_count": 0, "trigger_on_drift": False}


def test_nothing_due_on_a_quiet_service(loop_services: Callable[..., Services]) -> None:
    services = loop_services()
    ingest(services, CORPUS, actor="test")
    assert due_trigger(services) is None
    assert tick(services) == {}


def test_feedback_volume_triggers(loop_services: Callable[..., Services]) -> None:
    services = loop_services(loop={**OFF, "trigger_feedback_count": 20})
    ingest(services, CORPUS, actor="test")
    replay(services, questions()[GOLDEN_SHARE : GOLDEN_SHARE + 5])  # 5 x (thumb + 5 labels)
    trigger = due_trigger(services)
    assert trigger is not None and trigger[0] == "feedback"
    assert trigger[1]["new_feedback_events"] >= 20


def _thumbs(services: Services, thumbs: str) -> None:
    for n, thumb in enumerate(thumbs):
        answer = ask(services, questions()[n]["question"])
        submit_feedback(
            services,
            FeedbackIn(
                interaction_id=answer.interaction_id,
                token=answer.feedback_token,
                thumb="up" if thumb == "+" else "down",
            ),
            actor="user",
        )


def test_low_thumbs_up_rate_triggers(loop_services: Callable[..., Services]) -> None:
    services = loop_services(loop={**OFF, "trigger_min_thumbs_up_rate": 0.5, "kpi_window": 6})
    ingest(services, CORPUS, actor="test")
    _thumbs(services, "---")
    assert due_trigger(services) is None  # not a full window of thumbs yet
    _thumbs(services, "+++---")
    assert due_trigger(services) is None  # 3 of the latest 6 are up: 0.5 is not below 0.5
    _thumbs(services, "-")
    trigger = due_trigger(services)
    assert trigger is not None and trigger[0] == "kpi"
    assert trigger[1] == {"thumbs_up_rate": 2 / 6, "window": 6}


def test_drift_event_triggers_once_feedback_arrived(
    loop_services: Callable[..., Services],
) -> None:
    services = loop_services(
        loop={**OFF, "trigger_on_drift": True, "trigger_drift_min_feedback": 6}
    )
    ingest(services, CORPUS, actor="test")
    assert due_trigger(services) is None
    with transaction(services.sessions) as session:
        session.add(Event(kind="drift", payload={"metric": "query_mmd"}))
    assert due_trigger(services) is None  # nothing new to learn from yet
    _thumbs(services, "+-+-+")
    assert due_trigger(services) is None  # 5 of the 6 feedback events it waits for
    _thumbs(services, "-")
    assert due_trigger(services) == (
        "drift",
        {"event_id": 1, "new_feedback_events": 6, "metric": "query_mmd"},
    )


def test_schedule_jobs(loop_services: Callable[..., Services]) -> None:
    services = loop_services(loop={"auto": True, "tick_seconds": 30, "schedule": "0 4 * * 1"})
    scheduler = start_schedule(services)
    try:
        assert scheduler is not None
        # the registry outbox, (without a task queue) the sweep for cut-off jobs and this
        # process's loading ahead always run
        assert {job.id for job in scheduler.get_jobs()} == {
            "loop-tick",
            "loop-cycle",
            "registry-outbox",
            "job-sweep",
            "warm",
        }
        # standard cron weekdays: 1 is Monday (APScheduler alone would read Tuesday)
        assert scheduler.get_job("loop-cycle").next_run_time.weekday() == 0
        if sys.platform == "linux":  # a scheduled run leaves its worker thread below requests
            own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            seen: dict[str, int] = {}

            def worker() -> None:
                scheduler.get_job("registry-outbox").func()
                seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

            thread = threading.Thread(target=worker)
            thread.start()
            thread.join()
            assert seen["nice"] == max(own, services.settings.queue.background_nice)
            assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
    finally:
        scheduler.shutdown(wait=False)
    quiet = start_schedule(loop_services(loop={"auto": False}))
    assert quiet is not None
    try:
        assert {job.id for job in quiet.get_jobs()} == {"registry-outbox", "job-sweep", "warm"}
    finally:
        quiet.shutdown(wait=False)
    cold = start_schedule(loop_services(loop={"auto": False}, retrieval={"warm_seconds": 0}))
    assert cold is not None
    try:
        assert {job.id for job in cold.get_jobs()} == {"registry-outbox", "job-sweep"}
    finally:
        cold.shutdown(wait=False)


def test_cron_weekdays_are_standard() -> None:
    from rag_loop.scheduler import cron_trigger

    assert str(cron_trigger("0 3 * * 0").fields[4]) == "sun"
    assert str(cron_trigger("0 3 * * 7").fields[4]) == "sun"
    assert str(cron_trigger("0 3 * * 1-5").fields[4]) == "mon-fri"
    assert str(cron_trigger("0 3 * * 1,3,5").fields[4]) == "mon,wed,fri"
    assert str(cron_trigger("*/15 3 * * *").fields[4]) == "*"
