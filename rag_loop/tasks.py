"""What each kind of background job does. `rag_loop.jobs` runs them (claim, heartbeat,
record the result) without knowing them: the wiring binds this table to its parts and hands
it over as `Services.job_handlers`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import update

from rag_loop.corpus.ingest import IngestParts, ingest
from rag_loop.db.engine import transaction
from rag_loop.db.models import EvalRun, Job
from rag_loop.errors import InvalidInput
from rag_loop.evaluation import service
from rag_loop.evaluation.runner import EvalParts
from rag_loop.loop import cycle
from rag_loop.loop.cycle import CycleParts


class TaskParts(CycleParts, IngestParts, EvalParts, Protocol):
    """What the jobs' work uses: a loop cycle's, an index build's and an evaluation's."""


def _evaluation(services: TaskParts, job: Job) -> dict[str, Any]:
    run_id = attempt_run_id(job.id, job.attempts)
    if job.attempts > 1:  # the run of the lost attempt never finished: say so
        previous = attempt_run_id(job.id, job.attempts - 1)
        with transaction(services.sessions) as session:
            session.execute(
                update(EvalRun)
                .where(EvalRun.id == previous, EvalRun.status == "running")
                .values(status="failed", error="its worker was lost; the job ran it again")
            )
    payload = dict(job.payload)
    eval_id = service.run(services, run_id=run_id, trigger=payload.pop("trigger", "job"), **payload)
    return {"eval_run_id": eval_id}


def attempt_run_id(job_id: str, attempt: int) -> str:
    return hashlib.sha256(f"{job_id}:{attempt}".encode()).hexdigest()[:32]


def _index_build(services: TaskParts, job: Job) -> dict[str, Any]:
    path = Path(job.payload["path"])
    if not path.exists():
        raise InvalidInput(f"{path} does not exist on the worker's machine")
    result = ingest(services, path, actor=job.actor)
    return {
        "index_version_id": result.index_version_id,
        "chunks_total": result.chunks_total,
    }


def _loop_cycle(services: TaskParts, job: Job) -> dict[str, Any]:
    cycle_id = int(job.payload["cycle_id"])
    if job.attempts > 1:
        # the worker that ran it is gone (its job heartbeat went stale): take the cycle over
        view = cycle.resume(services, cycle_id, actor=job.actor, force=True)
    elif job.payload.get("resume"):
        view = cycle.resume(services, cycle_id, actor=job.actor)
    else:
        view = cycle.run_cycle(services, cycle_id, actor=job.actor)
    return {"cycle_id": cycle_id, "state": view["state"]}


HANDLERS: dict[str, Callable[[TaskParts, Job], dict[str, Any]]] = {
    "evaluation": _evaluation,
    "index_build": _index_build,
    "loop_cycle": _loop_cycle,
}


def bind(parts: TaskParts) -> dict[str, Callable[[Job], dict[str, Any]]]:
    """The handlers, each with the parts it runs on, as `rag_loop.jobs` takes them."""
    return {kind: partial(handler, parts) for kind, handler in HANDLERS.items()}
