"""The in-process schedule of the embedded default: APScheduler in the API process.

`start_schedule(services)` runs, in background threads:

- `scheduled_round` (golden sets, production window, drift) on `RAG_LOOP_EVALUATION_SCHEDULE`;
- the loop's `tick` (shadow mode, the rollback watch, triggers) every
  `RAG_LOOP_LOOP_TICK_SECONDS` when `RAG_LOOP_LOOP_AUTO` is on;
- a loop cycle on `RAG_LOOP_LOOP_SCHEDULE`.

One run of a job at a time (a run still going when the next is due is skipped, not
stacked). Several API processes may run the schedule: each cron firing is claimed as a row
in `jobs` (kind `scheduled`, its id derived from the job name and the minute it fired), so
exactly one process runs it and everyone can see it in `GET /v1/jobs`. The loop tick is safe
to run everywhere (a cycle is claimed before it runs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rag_loop.services import Services

log = logging.getLogger(__name__)


DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def cron_trigger(expression: str) -> Any:
    """A 5-field cron expression with standard weekday numbers (0 and 7 are Sunday) as an
    APScheduler trigger in UTC. APScheduler 3 numbers weekdays from Monday, so numbers in
    the weekday field are turned into names first ("1-5" -> "mon-fri")."""
    import re

    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) == 5:
        fields[4] = re.sub(r"(?<![/\d])[0-7](?!\d)", lambda m: DAY_NAMES[int(m.group())], fields[4])
    return CronTrigger.from_crontab(" ".join(fields), timezone="UTC")


def _guarded(name: str, fn: Callable[[], Any]) -> Callable[[], None]:
    def job() -> None:
        try:
            result = fn()
            if result:
                log.info("%s: %s", name, result)
        except Exception:  # the scheduler thread must survive any one run
            log.exception("%s failed", name)

    return job


def _once_per_firing(services: Services, name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run `fn` in the one process that claims this firing of the cron job `name`."""

    def claimed() -> Any:
        import hashlib
        from datetime import timedelta

        from sqlalchemy.exc import IntegrityError

        from rag_loop.db.engine import transaction
        from rag_loop.db.models import Job, utcnow

        # cron fires on the minute: the nearest minute names this firing in every process,
        # however late a process's thread wakes (up to 30 s)
        now = utcnow()
        fired = (now + timedelta(seconds=30)).replace(second=0, microsecond=0)
        job_id = hashlib.sha256(f"{name}@{fired.isoformat()}".encode()).hexdigest()[:32]
        try:
            with transaction(services.sessions) as session:
                session.add(
                    Job(
                        id=job_id,
                        kind="scheduled",
                        payload={"name": name, "fired_at": fired.isoformat()},
                        status="running",
                        attempts=1,
                        actor="schedule",
                        started_at=utcnow(),
                    )
                )
        except IntegrityError:
            return None  # another process runs this firing
        status, error, result = "failed", None, None
        try:
            result = fn()
            status = "done"
            return result
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            with transaction(services.sessions) as session:
                job = session.get_one(Job, job_id)
                job.status, job.error, job.finished_at = status, error, utcnow()
                job.result = result if isinstance(result, dict) else {}

    return claimed


def start_schedule(services: Services) -> Any | None:
    """Start the scheduler if any job is configured; returns it (call `.shutdown()`)."""
    evaluation = services.settings.evaluation.schedule
    loop = services.settings.loop
    if not (evaluation or loop.auto or loop.schedule):
        return None
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    from rag_loop.evaluation.service import scheduled_round
    from rag_loop.loop.triggers import scheduled_cycle, tick

    scheduler = BackgroundScheduler(timezone="UTC")
    options: dict[str, Any] = {"max_instances": 1, "coalesce": True}
    if evaluation:
        scheduler.add_job(
            _guarded(
                "scheduled evaluation round",
                _once_per_firing(services, "evaluation-round", lambda: scheduled_round(services)),
            ),
            cron_trigger(evaluation),
            id="evaluation-round",
            **options,
        )
    if loop.auto:
        scheduler.add_job(
            _guarded("loop tick", lambda: tick(services)),
            IntervalTrigger(seconds=loop.tick_seconds, timezone="UTC"),
            id="loop-tick",
            **options,
        )
    if loop.schedule:
        scheduler.add_job(
            _guarded(
                "scheduled loop cycle",
                _once_per_firing(services, "loop-cycle", lambda: scheduled_cycle(services)),
            ),
            cron_trigger(loop.schedule),
            id="loop-cycle",
            **options,
        )
    scheduler.start()
    log.info("schedule started: %s", [job.id for job in scheduler.get_jobs()])
    return scheduler
