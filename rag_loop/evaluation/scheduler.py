"""The in-process schedule of the embedded default: APScheduler with a cron trigger.

`start_schedule(services)` runs `scheduled_round` (golden sets, production window, drift)
on `RAG_LOOP_EVALUATION_SCHEDULE` in a background thread of the API process; one round at
a time (a round still running when the next is due is skipped, not stacked). A distributed
deployment runs the same function from its workers instead.
"""

from __future__ import annotations

import logging
from typing import Any

from rag_loop.services import Services

log = logging.getLogger(__name__)


def start_schedule(services: Services) -> Any | None:
    """Start the scheduler if a schedule is set; returns it (call `.shutdown()`) or None."""
    expression = services.settings.evaluation.schedule
    if not expression:
        return None
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    from rag_loop.evaluation.service import scheduled_round

    def job() -> None:
        try:
            result = scheduled_round(services)
            log.info("scheduled evaluation round: %s", result)
        except Exception:  # the scheduler thread must survive any one round
            log.exception("scheduled evaluation round failed")

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(
        job,
        CronTrigger.from_crontab(expression, timezone="UTC"),
        id="evaluation-round",
        max_instances=1,
        coalesce=True,
    )
    scheduler.start()
    log.info("evaluation schedule %r started", expression)
    return scheduler
