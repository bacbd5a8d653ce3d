"""The in-process schedule of the embedded default: APScheduler in the API process.

`start_schedule(services)` runs, in background threads:

- `scheduled_round` (golden sets, production window, drift) on `RAG_LOOP_EVALUATION_SCHEDULE`;
- the loop's `tick` (shadow mode, the rollback watch, triggers) every
  `RAG_LOOP_LOOP_TICK_SECONDS` when `RAG_LOOP_LOOP_AUTO` is on;
- a loop cycle on `RAG_LOOP_LOOP_SCHEDULE`;
- the registry outbox (MLflow runs and aliases, collection drops) every
  `RAG_LOOP_MLFLOW_OUTBOX_INTERVAL_SECONDS`;
- without a task queue, the sweep for jobs whose process was cut off (a restart), every
  half `RAG_LOOP_QUEUE_LEASE_SECONDS`, as queue workers do;
- for this process only, loading ahead the index versions that serve or may serve next
  (`rag_loop.loop.warm`), every `RAG_LOOP_RETRIEVAL_WARM_SECONDS`.

The schedule's threads run at `RAG_LOOP_QUEUE_BACKGROUND_NICE` (`rag_loop.priority`), below
the requests. One run of a job at a time (a run still going when the next is due is skipped, not
stacked). Several API processes may run the schedule: each cron firing is a row in `jobs`
(kind `scheduled`, its id derived from the job name and the minute it fired) that every
process records and one takes, with the same lease as any job (`db.leases`), so exactly one
process runs it and everyone can see it in `GET /v1/jobs`. The loop tick is safe
to run everywhere (a cycle is claimed before it runs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rag_loop.clock import SimulatedClock
from rag_loop.cron import cron_trigger
from rag_loop.priority import lower_this_thread
from rag_loop.services import Services

__all__ = [
    "ScheduledJob",
    "SimulatedSchedule",
    "cron_trigger",
    "scheduled_jobs",
    "start_schedule",
]

log = logging.getLogger(__name__)


def _guarded(name: str, fn: Callable[[], Any]) -> Callable[[], None]:
    def job() -> None:
        try:
            result = fn()
            if result:
                log.info("%s: %s", name, result)
        except Exception:  # the scheduler thread must survive any one run
            log.exception("%s failed", name)

    return job


def _in_background(run: Callable[[], None], nice: int) -> Callable[[], None]:
    """`run` on one of the scheduler's worker threads, which only ever run the schedule:
    they yield the CPU to the process's requests (`rag_loop.priority`)."""

    def job() -> None:
        lower_this_thread(nice)
        run()

    return job


def _once_per_firing(services: Services, name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run `fn` in the one process that claims this firing of the cron job `name`."""

    def claimed() -> Any:
        import contextlib
        import hashlib

        from sqlalchemy.exc import IntegrityError

        from rag_loop.db import leases
        from rag_loop.db.engine import transaction
        from rag_loop.db.models import Job, now_of

        # cron fires on the minute: the nearest minute names this firing in every process,
        # however late a process's thread wakes (up to 30 s)
        now = now_of(services.sessions)
        fired = (now + timedelta(seconds=30)).replace(second=0, microsecond=0)
        job_id = hashlib.sha256(f"{name}@{fired.isoformat()}".encode()).hexdigest()[:32]
        # every process records the firing (the first insert wins)...
        with contextlib.suppress(IntegrityError), transaction(services.sessions) as session:
            session.add(
                Job(
                    id=job_id,
                    kind="scheduled",
                    payload={"name": name, "fired_at": fired.isoformat()},
                    actor="schedule",
                )
            )
        with transaction(services.sessions) as session:  # ...and one takes its lease
            stamp = now_of(session)
            taken = leases.take(
                session,
                Job.heartbeat_at,
                Job.id == job_id,
                Job.status == "queued",
                stale_before=stamp,
                stamp=stamp,
                values={"status": "running", "attempts": 1, "started_at": stamp},
            )
        if not taken:
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
                job.status, job.error, job.finished_at = status, error, now_of(session)
                job.heartbeat_at = None  # released
                job.result = result if isinstance(result, dict) else {}

    return claimed


@dataclass(frozen=True)
class ScheduledJob:
    id: str
    trigger: Any  # an APScheduler trigger: when it fires
    run: Callable[[], None]  # guarded: logs a failure instead of raising


def scheduled_jobs(services: Services) -> list[ScheduledJob]:
    """The schedule the settings ask for (none when nothing is configured). The API process
    runs it on APScheduler (`start_schedule`); a replay on a simulated clock can fire the
    same jobs by their triggers (`trigger.get_next_fire_time`)."""
    evaluation = services.settings.evaluation.schedule
    loop = services.settings.loop
    outbox_every = services.settings.mlflow.outbox_interval_seconds
    if not (evaluation or loop.auto or loop.schedule or outbox_every):
        return []
    from apscheduler.triggers.interval import IntervalTrigger

    from rag_loop.evaluation.service import scheduled_round
    from rag_loop.loop.triggers import scheduled_cycle, tick

    jobs = []
    if evaluation:
        jobs.append(
            ScheduledJob(
                "evaluation-round",
                cron_trigger(evaluation),
                _guarded(
                    "scheduled evaluation round",
                    _once_per_firing(
                        services, "evaluation-round", lambda: scheduled_round(services)
                    ),
                ),
            )
        )
    if loop.auto:
        jobs.append(
            ScheduledJob(
                "loop-tick",
                IntervalTrigger(seconds=loop.tick_seconds, timezone="UTC"),
                _guarded("loop tick", lambda: tick(services)),
            )
        )
    if services.queue is None:
        # embedded mode: jobs run on threads of API processes; one cut off by a restart
        # (its heartbeat goes stale) is taken over here, as queue workers do
        from rag_loop.jobs import sweep

        jobs.append(
            ScheduledJob(
                "job-sweep",
                IntervalTrigger(seconds=services.settings.queue.lease_seconds / 2, timezone="UTC"),
                _guarded("job sweep", lambda: sweep(services)),
            )
        )
    if outbox_every:
        jobs.append(
            ScheduledJob(
                "registry-outbox",
                IntervalTrigger(seconds=outbox_every, timezone="UTC"),
                _guarded("registry outbox", lambda: services.outbox.flush().as_dict()["applied"]),
            )
        )
    if loop.schedule:
        jobs.append(
            ScheduledJob(
                "loop-cycle",
                cron_trigger(loop.schedule),
                _guarded(
                    "scheduled loop cycle",
                    _once_per_firing(services, "loop-cycle", lambda: scheduled_cycle(services)),
                ),
            )
        )
    return jobs


class SimulatedSchedule:
    """Fires the scheduled jobs by their own triggers on a simulated clock: a replay of
    days of traffic in minutes. `run_until(moment)` runs every job due by then once, at its
    latest firing (APScheduler's `coalesce`), oldest first; while a job runs the clock
    moves with wall time (`SimulatedClock.running`), as if the replayed traffic went on
    meanwhile."""

    def __init__(self, jobs: list[ScheduledJob], clock: SimulatedClock) -> None:
        self.jobs, self.clock = jobs, clock
        now = clock.now()
        self.due = {job.id: job.trigger.get_next_fire_time(None, now) for job in jobs}
        self.runs: dict[str, int] = {job.id: 0 for job in jobs}

    def run_until(self, moment: datetime) -> None:
        while True:
            latest: dict[str, datetime] = {}
            for job in self.jobs:
                fire, last = self.due[job.id], None
                while fire is not None and fire <= moment:
                    last, fire = fire, job.trigger.get_next_fire_time(fire, fire)
                if last is not None:
                    latest[job.id] = last
            if not latest:
                return
            job_id = min(latest, key=lambda j: latest[j])
            job = next(j for j in self.jobs if j.id == job_id)
            self.clock.advance_to(latest[job_id])
            with self.clock.running():
                job.run()
            self.runs[job_id] += 1
            # the firing after the one run (a later one missed meanwhile is caught up above)
            self.due[job_id] = job.trigger.get_next_fire_time(latest[job_id], self.clock.now())


def process_jobs(services: Services) -> list[ScheduledJob]:
    """What each API process does for itself, beside the schedule: load ahead the index
    versions that serve or may serve next (`rag_loop.loop.warm`), every
    `RAG_LOOP_RETRIEVAL_WARM_SECONDS`. Not part of `scheduled_jobs`: a replay on a simulated
    clock serves from the process that runs its cycles, which has them loaded already."""
    every = services.settings.retrieval.warm_seconds
    if not every:
        return []
    from apscheduler.triggers.interval import IntervalTrigger

    from rag_loop.loop.warm import Ahead

    return [
        ScheduledJob(
            "warm",
            IntervalTrigger(seconds=every, timezone="UTC"),
            _guarded("loading index versions ahead", Ahead(services)),
        )
    ]


def start_schedule(services: Services) -> Any | None:
    """Start the scheduler if any job is configured; returns it (call `.shutdown()`)."""
    jobs = scheduled_jobs(services) + process_jobs(services)
    if not jobs:
        return None
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone="UTC")
    nice = services.settings.queue.background_nice
    for job in jobs:
        # one run at a time: a run still going when the next is due is skipped, not stacked
        scheduler.add_job(
            _in_background(job.run, nice), job.trigger, id=job.id, max_instances=1, coalesce=True
        )
    scheduler.start()
    log.info("schedule started: %s", [job.id for job in scheduler.get_jobs()])
    return scheduler
