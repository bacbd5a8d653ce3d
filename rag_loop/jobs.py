"""Background jobs: evaluations, index builds and loop cycles.

Every job is a row in `jobs` first (queued -> running -> done | failed), then work:

- with `RAG_LOOP_QUEUE_BROKER_URL` set, a message on a Dramatiq queue in Redis, executed by
  `rag-loop worker` processes (on any machine that shares the database);
- without one, a thread of the process that submitted it, at a lower CPU priority than the
  requests it serves (`queue.background_nice`, `rag_loop.priority`).

Exactly-once execution comes from the row, not the queue: a worker claims the job by
compare-and-set, so a message delivered twice (or sent twice) runs once; while it runs, the
worker refreshes `heartbeat_at` every few seconds. A worker that dies (killed, OOM, machine
gone) stops refreshing; after `queue.lease_seconds` the job counts as lost, and the next
worker to look (every worker sweeps for such jobs, and Dramatiq requeues the dead worker's
message too) takes it over, with `attempts + 1`, continuing where it can (a loop cycle resumes
from its step). After `queue.max_attempts` runs the job is marked failed with the reason. A
job is never dropped without a row saying what happened to it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Literal, Protocol, get_args

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.db import leases
from rag_loop.db.engine import transaction
from rag_loop.db.models import Job, now_of
from rag_loop.errors import InvalidInput, NotFound, RagLoopError
from rag_loop.priority import lower_this_thread
from rag_loop.settings import Settings

log = logging.getLogger(__name__)


class JobParts(Protocol):
    """What running jobs uses; `job_handlers` says what each kind does (`rag_loop.tasks`)."""

    settings: Settings
    sessions: sessionmaker[Session]
    queue: Any  # a DramatiqQueue, or None: a thread of this process runs the job
    job_handlers: Mapping[str, Callable[[Job], dict[str, Any]]]


KINDS = ("evaluation", "index_build", "loop_cycle")
Status = Literal["queued", "running", "done", "failed"]
STATUSES: tuple[str, ...] = get_args(Status)
ACTOR_NAME = "rag_loop_job"
DAY_MS = 24 * 3600 * 1000


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


# -- submitting ------------------------------------------------------------------------------


def submit(services: JobParts, kind: str, payload: dict[str, Any], *, actor: str) -> str:
    """Record a job and hand it to the queue (or to a thread when there is no broker)."""
    if kind not in KINDS:
        raise InvalidInput(f"unknown job kind {kind!r}; one of {', '.join(KINDS)}")
    job_id = uuid.uuid4().hex
    with transaction(services.sessions) as session:
        session.add(Job(id=job_id, kind=kind, payload=payload, actor=actor))
    dispatch(services, job_id)
    return job_id


def dispatch(services: JobParts, job_id: str) -> None:
    queue = services.queue
    if queue is None:
        thread = threading.Thread(
            target=_run_quietly, args=(services, job_id), name=f"job-{job_id[:8]}", daemon=True
        )
        thread.start()
    else:
        queue.send(job_id)


def _run_quietly(services: JobParts, job_id: str) -> None:
    """A job's own thread in the process that submitted it, which may be answering
    questions: it runs at `queue.background_nice`."""
    lower_this_thread(services.settings.queue.background_nice)
    try:
        execute(services, job_id)
    except Exception:  # execute records failures itself; this is a last resort
        log.exception("job %s", job_id)


# -- running ---------------------------------------------------------------------------------


def execute(services: JobParts, job_id: str, *, worker: str | None = None) -> str:
    """Claim and run one job; returns its final status, or `skipped` when someone else has it
    (or had it). Failures are recorded on the job, not raised."""
    worker = worker or worker_name()
    job = _claim(services, job_id, worker)
    if job is None:
        return "skipped"
    limit = services.settings.queue.max_attempts
    if job.attempts > limit:
        _finish(services, job_id, worker, "failed", error=_lost(job.attempts - 1))
        return "failed"
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(services, job_id, worker, stop), name="job-heartbeat", daemon=True
    )
    beat.start()
    try:
        result = services.job_handlers[job.kind](job)
    except RagLoopError as exc:
        _finish(services, job_id, worker, "failed", error=exc.message)
        return "failed"
    except Exception as exc:
        log.exception("job %s (%s) failed", job_id, job.kind)
        _finish(services, job_id, worker, "failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    finally:
        stop.set()
        beat.join(timeout=5)
    _finish(services, job_id, worker, "done", result=result)
    return "done"


def _lost(times: int) -> str:
    return f"the job lost its worker {times} time(s) (killed or gone); not retried again"


def _claim(services: JobParts, job_id: str, worker: str) -> Job | None:
    now = now_of(services.sessions)
    stale = now - timedelta(seconds=services.settings.queue.lease_seconds)
    with transaction(services.sessions) as session:
        if session.get(Job, job_id) is None:
            raise NotFound(f"no job {job_id!r}")
        # queued jobs have no heartbeat; a running one whose heartbeat went stale lost its worker
        claimed = leases.take(
            session,
            Job.heartbeat_at,
            Job.id == job_id,
            Job.status.in_(("queued", "running")),
            stale_before=stale,
            stamp=now,
            values={
                "status": "running",
                "worker": worker,
                "attempts": Job.attempts + 1,
                "started_at": now,
            },
        )
        if not claimed:
            return None
        job = session.get_one(Job, job_id)
        session.refresh(job)
        session.expunge(job)
        return job


def _heartbeat(services: JobParts, job_id: str, worker: str, stop: threading.Event) -> None:
    every = max(services.settings.queue.lease_seconds / 4, 0.5)
    while not stop.wait(every):
        try:
            with transaction(services.sessions) as session:
                leases.renew(
                    session,
                    Job.heartbeat_at,
                    Job.id == job_id,
                    Job.worker == worker,
                    Job.status == "running",
                    stamp=now_of(session),
                )
        except Exception:  # a database blip: the next beat tries again
            log.warning("job %s: heartbeat failed", job_id, exc_info=True)


def _finish(
    services: JobParts,
    job_id: str,
    worker: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    with transaction(services.sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == worker)
            .values(
                status=status,
                finished_at=now_of(session),
                heartbeat_at=None,
                result=result or {},
                error=error[:4000] if error else None,
            )
        )


def sweep(services: JobParts) -> list[str]:
    """Hand lost jobs to the queue again: running ones whose worker stopped checking in, and
    queued ones nobody took for a lease (a broker that lost its messages, say). Returns the
    ids sent; a job sent twice still runs once."""
    lease = timedelta(seconds=services.settings.queue.lease_seconds)
    now = now_of(services.sessions)
    with services.sessions() as session:
        ids = session.scalars(
            select(Job.id).where(
                Job.kind.in_(KINDS),  # not schedule firings: their process runs them itself
                or_(
                    (Job.status == "running") & (Job.heartbeat_at < now - lease),
                    (Job.status == "queued") & (Job.created_at < now - lease),
                ),
            )
        ).all()
    for job_id in ids:
        log.warning("job %s lost its worker or its message; sending it again", job_id)
        dispatch(services, job_id)
    return list(ids)


# -- reading ---------------------------------------------------------------------------------


def view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "payload": job.payload,
        "attempts": job.attempts,
        "worker": job.worker,
        "actor": job.actor,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "result": job.result,
        "error": job.error,
    }


def get(services: JobParts, job_id: str) -> dict[str, Any]:
    with services.sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}; `rag-loop jobs list` or GET /v1/jobs lists them")
        return view(job)


def list_jobs(
    services: JobParts, limit: int = 50, status: str | None = None
) -> list[dict[str, Any]]:
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    with services.sessions() as session:
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if status:
            query = query.where(Job.status == status)
        return [view(j) for j in session.scalars(query)]
