"""Prometheus metrics at `/metrics`.

Counted by this process (scrape every API process, as Prometheus does with instances):
request latency by route, asks by outcome, feedback items by kind. Read from the database at
scrape time, so every process reports the same: the latest evaluation scores per dataset,
loop cycles by state, and the serving index version.

Each app has its own registry (tests build several apps in one process).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag_loop.services import Services

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    def __init__(self, services_getter: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "rag_loop_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.asks = Counter(
            "rag_loop_asks",
            "Questions answered (ask and chat routes) by outcome.",
            ["route", "outcome"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "rag_loop_feedback_items",
            "Feedback items stored, by kind (retries are not counted).",
            ["kind"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(services_getter))

    def count_feedback(self, body: Any) -> None:
        """One count per item of a stored submission (a FeedbackIn)."""
        if body.thumb:
            self.feedback.labels(f"thumb_{body.thumb}").inc()
        for label in body.chunk_labels:
            self.feedback.labels("relevant" if label.relevant else "not_relevant").inc()
        for kind in ("correction", "source", "comment"):
            value = getattr(body, kind)
            if value is not None and (not isinstance(value, str) or value.strip()):
                self.feedback.labels(kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges read from SQL at scrape time."""

    def __init__(self, services_getter: Any) -> None:
        self.services_getter = services_getter

    def collect(self) -> Iterator[Metric]:
        services: Services | None = self.services_getter()
        if services is None:
            return
        from rag_loop.db.models import EvalRun, LoopCycle
        from rag_loop.index.versions import serving_index

        scores = GaugeMetricFamily(
            "rag_loop_evaluation_score",
            "The serving index's latest finished evaluation, per dataset and metric.",
            labels=["dataset", "metric"],
        )
        cycles = GaugeMetricFamily(
            "rag_loop_loop_cycles", "Loop cycles by state.", labels=["state"]
        )
        index = GaugeMetricFamily("rag_loop_serving_index_version", "The champion index.")
        outbox = GaugeMetricFamily(
            "rag_loop_outbox_pending",
            "Registry effects (MLflow runs and aliases, collection drops) not applied yet, "
            "by whether their last try failed.",
            labels=["failing"],
        )
        backlog = services.outbox.backlog()
        outbox.add_metric(["true"], backlog["failing"])
        outbox.add_metric(["false"], backlog["pending"] - backlog["failing"])
        try:
            serving: int | None = serving_index(services.engine).id
        except Exception:  # no index yet: the gauge is absent, /readyz says why
            serving = None
        with services.sessions() as session:
            if serving is not None:
                index.add_metric([], serving)
                runs = session.execute(
                    select(EvalRun.dataset, EvalRun.metrics)
                    .where(EvalRun.status == "done", EvalRun.index_version_id == serving)
                    .order_by(EvalRun.created_at.desc())
                    .limit(200)
                ).all()
                seen: set[str] = set()
                for dataset, metrics in runs:
                    if dataset in seen:
                        continue
                    seen.add(dataset)
                    for name, value in sorted((metrics or {}).items()):
                        if isinstance(value, int | float):
                            scores.add_metric([dataset, name], float(value))
            for state, count in session.execute(
                select(LoopCycle.state, func.count()).group_by(LoopCycle.state)
            ):
                cycles.add_metric([state], count)
        yield scores
        yield cycles
        yield outbox
        if index.samples:
            yield index


class LatencyMiddleware:
    """Times every request by its route template (`/v1/corrections/{correction_id}`, not the
    raw path, so the label set stays small). A pure ASGI middleware: no per-request task."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route(scope)
            self.metrics.latency.labels(route, scope["method"], str(status)).observe(
                time.perf_counter() - started
            )


def _route(scope: Scope) -> str:
    """The matched route's template (routing records it in the scope), else 'unmatched'."""
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))
