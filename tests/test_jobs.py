"""Jobs: claimed exactly once, lost workers taken over, failures recorded, index builds over
HTTP. (Real queue workers in separate processes: tests/test_deployment.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from rag_loop import jobs, tasks
from rag_loop.db.engine import transaction
from rag_loop.db.models import EvalRun, IndexVersion, Job, now_of
from rag_loop.services import Services
from tests.conftest import CORPUS, assert_error_shape

EVAL = {"source": "golden", "limit": 5, "use_judge": False}


def add_job(services: Services, **values: Any) -> str:
    job = Job(id=values.pop("id", None) or jobs.uuid.uuid4().hex, **values)
    with transaction(services.sessions) as session:
        session.add(job)
    return job.id


def wait_job(services: Services, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.get(services, job_id)
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']}")


def test_two_workers_run_a_job_once(kestrel: Services) -> None:
    job_id = add_job(kestrel, kind="evaluation", payload=EVAL)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        barrier.wait()
        outcomes.append(jobs.execute(kestrel, job_id, worker=name))

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["done", "skipped"]
    job = jobs.get(kestrel, job_id)
    assert job["attempts"] == 1 and job["status"] == "done"
    with kestrel.sessions() as session:
        assert session.scalar(select(func.count()).select_from(EvalRun)) == 1
        assert session.get_one(EvalRun, job["result"]["eval_run_id"]).status == "done"
    assert jobs.execute(kestrel, job_id) == "skipped"  # a late duplicate message


def test_a_lost_worker_is_taken_over_and_its_run_marked(kestrel: Services) -> None:
    long_ago = now_of(kestrel.sessions) - timedelta(minutes=10)
    job_id = add_job(
        kestrel,
        kind="evaluation",
        payload=EVAL,
        status="running",
        attempts=1,
        worker="gone:1",
        heartbeat_at=long_ago,
        started_at=long_ago,
    )
    lost_run = tasks.attempt_run_id(job_id, 1)
    with transaction(kestrel.sessions) as session:  # what the dead worker had begun
        session.add(EvalRun(id=lost_run, source="golden", dataset="questions"))
    fresh = add_job(
        kestrel,
        kind="evaluation",
        payload=EVAL,
        status="running",
        attempts=1,
        worker="alive:1",
        heartbeat_at=now_of(kestrel.sessions),
    )
    assert jobs.sweep(kestrel) == [job_id]  # the live one is left alone
    job = wait_job(kestrel, job_id)
    assert (job["status"], job["attempts"]) == ("done", 2)
    with kestrel.sessions() as session:
        lost = session.get_one(EvalRun, lost_run)
        assert lost.status == "failed" and "worker was lost" in (lost.error or "")
    assert jobs.get(kestrel, fresh)["status"] == "running"


def test_a_job_that_keeps_losing_its_worker_fails_with_the_reason(kestrel: Services) -> None:
    limit = kestrel.settings.queue.max_attempts
    job_id = add_job(
        kestrel,
        kind="evaluation",
        payload=EVAL,
        status="running",
        attempts=limit,
        worker="gone:1",
        heartbeat_at=now_of(kestrel.sessions) - timedelta(minutes=10),
    )
    assert jobs.execute(kestrel, job_id) == "failed"
    job = jobs.get(kestrel, job_id)
    assert job["status"] == "failed" and f"lost its worker {limit} time(s)" in job["error"]


def test_index_build_job_over_http(
    api: httpx.Client, admin_headers: dict[str, str], kestrel: Services, tmp_path: Any
) -> None:
    extra = tmp_path / "docs"
    extra.mkdir()
    (extra / "new.md").write_text("# Loyalty points\n\nEvery ride earns one Kestrel point.\n")
    response = api.post("/v1/index-versions", json={"path": str(extra)}, headers=admin_headers)
    assert response.status_code == 202, response.text
    job = wait_job(kestrel, response.json()["id"])
    assert job["status"] == "done", job
    assert api.get(f"/v1/jobs/{job['id']}", headers=admin_headers).json()["status"] == "done"
    with kestrel.sessions() as session:
        assert session.get(IndexVersion, job["result"]["index_version_id"]) is not None

    missing = api.post(
        "/v1/index-versions", json={"path": str(tmp_path / "nope")}, headers=admin_headers
    ).json()
    failed = wait_job(kestrel, missing["id"])
    assert failed["status"] == "failed" and "does not exist" in failed["error"]
    assert [j["id"] for j in api.get("/v1/jobs?status=failed", headers=admin_headers).json()] == [
        missing["id"]
    ]
    assert_error_shape(api.get("/v1/jobs/unknown", headers=admin_headers), 404, "not_found")
    assert_error_shape(api.post("/v1/index-versions", json={"path": str(CORPUS)}), 401)
    # an admin key cannot make the service index files outside the ingest roots
    for outside in ("/etc", str(tmp_path / ".." / ".."), "relative/../../../etc"):
        assert_error_shape(
            api.post("/v1/index-versions", json={"path": outside}, headers=admin_headers),
            403,
            "forbidden",
        )


def test_unknown_job_kind(kestrel: Services) -> None:
    from rag_loop.errors import InvalidInput

    with pytest.raises(InvalidInput, match="unknown job kind"):
        jobs.submit(kestrel, "mining", {}, actor="test")


@dataclass
class Recording:
    """JobParts whose evaluation handler records the nice value of the thread running it
    and of a thread that thread starts (as torch starts its OpenMP team)."""

    settings: Any
    sessions: Any
    queue: Any = None
    seen: dict[str, int] = field(default_factory=dict)

    @property
    def job_handlers(self) -> dict[str, Any]:
        def evaluation(job: Job) -> dict[str, Any]:
            self.seen["job"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            started = threading.Thread(
                target=lambda: self.seen.update(
                    started=os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
                )
            )
            started.start()
            started.join()
            return {}

        return {"evaluation": evaluation}


@pytest.mark.skipif(sys.platform != "linux", reason="a nice value per thread is Linux's")
@pytest.mark.parametrize("nice", [0, 10])
def test_without_a_broker_a_job_runs_below_the_requests(kestrel: Services, nice: int) -> None:
    """A job's thread in the API process (no broker) runs at `queue.background_nice`, and
    so does every thread it starts; the process's other threads keep their priority."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    kestrel.settings.queue.background_nice = nice
    parts = Recording(kestrel.settings, kestrel.sessions)
    job_id = jobs.submit(parts, "evaluation", EVAL, actor="test")
    assert wait_job(kestrel, job_id)["status"] == "done"
    assert parts.seen == {"job": max(own, nice), "started": max(own, nice)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own


# run in a process of its own: a nice value once raised cannot be lowered again
WORKER_PROCESS = """
import json, os, threading
from rag_loop.priority import lower_this_process

def nice():
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

seen, go = {}, threading.Event()

def earlier():  # a thread a library started before; it starts one of its own afterwards
    go.wait()
    seen["earlier"] = nice()
    later = threading.Thread(target=lambda: seen.update(later=nice()))
    later.start()
    later.join()

thread = threading.Thread(target=earlier)
thread.start()
lower_this_process(10)
seen["main"] = nice()
go.set()
thread.join()
print(json.dumps(seen, sort_keys=True))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="a nice value per thread is Linux's")
def test_a_worker_process_runs_every_thread_below_the_requests() -> None:
    """`rag-loop worker` lowers every thread it has, those a library started before it
    among them, and so every thread any of them starts later."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    ran = subprocess.run(
        [sys.executable, "-c", WORKER_PROCESS], capture_output=True, text=True, check=True
    )
    expected = max(own, 10)
    assert json.loads(ran.stdout) == {"earlier": expected, "later": expected, "main": expected}


def test_without_a_broker_the_schedule_takes_over_a_job_cut_off_by_a_restart(
    make_settings: Any, embedder: Any
) -> None:
    """A job running on a thread of an API process that restarted stays `running` with a
    stale heartbeat; the embedded schedule sweeps for it as queue workers do."""
    from rag_loop.corpus.ingest import ingest
    from rag_loop.scheduler import start_schedule

    services = Services.from_settings(
        make_settings(queue={"lease_seconds": 2}, mlflow={"outbox_interval_seconds": 0}),
        embedder=embedder,
    )
    scheduler = None
    try:
        ingest(services, CORPUS, actor="test")
        long_ago = now_of(services.sessions) - timedelta(minutes=10)
        job_id = add_job(
            services,
            kind="evaluation",
            payload=EVAL,
            status="running",
            attempts=1,
            worker="restarted:1",
            heartbeat_at=long_ago,
            started_at=long_ago,
        )
        scheduler = start_schedule(services)
        assert scheduler is not None and scheduler.get_job("job-sweep") is not None
        job = wait_job(services, job_id)
        assert (job["status"], job["attempts"]) == ("done", 2)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=True)
        services.close()
