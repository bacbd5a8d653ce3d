"""The task queue: Dramatiq on Redis. Only job ids travel; the jobs table holds the rest.

`DramatiqQueue` is built from settings by `Services` when `queue.broker_url` is set (API
processes send; workers send and consume). `run_worker` is `rag-loop worker`: every thread
of a worker process does background work, so it runs at `queue.background_nice` like the
API process's background threads, and a worker beside an API process yields the CPU to the
asks.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from rag_loop.priority import lower_this_process
from rag_loop.settings import QueueSettings

log = logging.getLogger(__name__)

ACTOR_NAME = "rag_loop_job"
DAY_MS = 24 * 3600 * 1000
_services: Any = None  # the worker process's Services, set by run_worker


def _perform(job_id: str) -> None:
    from rag_loop import jobs

    if _services is None:
        raise RuntimeError("this process is not a rag-loop worker")
    status = jobs.execute(_services, job_id)
    log.info("job %s: %s", job_id, status)


class DramatiqQueue:
    def __init__(self, settings: QueueSettings) -> None:
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker
        from dramatiq.middleware import Retries, ShutdownNotifications, TimeLimit

        assert settings.broker_url
        self.url = settings.broker_url
        # Retries off: a job's failure is recorded on its row and is final; a lost worker is
        # handled by the lease (see rag_loop.jobs). No time limit short of a day: a loop cycle
        # on a large corpus takes long.
        self.broker = RedisBroker(
            url=settings.broker_url,
            middleware=[
                TimeLimit(time_limit=DAY_MS),
                ShutdownNotifications(),
                Retries(max_retries=0),
            ],
            heartbeat_timeout=int(settings.lease_seconds * 1000),
        )
        self.actor: Any = dramatiq.Actor(
            _perform,
            broker=self.broker,
            actor_name=ACTOR_NAME,
            queue_name=settings.queue_name,
            priority=0,
            options={},
        )

    def send(self, job_id: str) -> None:
        from rag_loop.errors import BackendUnavailable

        try:
            self.actor.send(job_id)
        except Exception as exc:  # redis down: the job row stays queued; a sweep resends it
            raise BackendUnavailable(
                f"the task queue at {self.url} cannot be reached: {exc}"
            ) from exc

    def close(self) -> None:
        self.broker.close()


def run_worker(services: Any, *, threads: int | None = None) -> None:
    """Consume jobs until SIGINT/SIGTERM; sweep for lost jobs every half lease."""
    import dramatiq

    from rag_loop import jobs

    global _services
    queue: DramatiqQueue | None = services.queue
    if queue is None:
        from rag_loop.errors import InvalidInput

        raise InvalidInput("a worker needs a task queue: set RAG_LOOP_QUEUE_BROKER_URL")
    _services = services
    settings = services.settings.queue
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    lower_this_process(settings.background_nice)  # its threads, and those they start
    worker = dramatiq.Worker(
        queue.broker, worker_threads=threads or settings.worker_threads, worker_timeout=500
    )
    worker.start()
    log.warning("rag-loop worker consuming %s on %s", settings.queue_name, queue.url)
    try:
        while not stop.wait(settings.lease_seconds / 2):
            try:
                jobs.sweep(services)
            except Exception:
                log.warning("sweep failed", exc_info=True)
            services.outbox.flush_quietly()  # the registry follows SQL from workers too
    finally:
        worker.stop(timeout=10_000)
        _services = None
