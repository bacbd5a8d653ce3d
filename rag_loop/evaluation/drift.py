"""Drift: has what users ask changed (data drift), or how well we answer (concept drift)?

The current window is the latest N questions (`window_size`); the reference window is the
first `reference_windows` x N questions answered after the last drift event (from the start
when there was none): what users asked once the service last noticed a change. Comparing
with a reference that stays put finds a shift that comes slowly, over days, which two
consecutive windows never show (each differs too little from the one before); the next
drift event moves the reference to what came after it. While fewer than reference and
window are there, what there is after the event is split: the latest half, at most N, is
the current window and the rest the reference.

Data drift compares the query embeddings of the two windows by the maximum mean discrepancy
(MMD, Gretton et al. 2012) with a Gaussian kernel whose bandwidth is the median pairwise
distance, and a permutation test: the windows' labels are shuffled `permutations` times
(seeded) and the p-value is the share of shuffles with an MMD at least as large as the
observed one. Drift is flagged when p < `alpha`, so an unchanged distribution is flagged
with probability ~alpha.

Concept drift compares rates between the same two windows (thumbs-down rate, two-proportion
z-test and a minimum change) and the latest production evaluation with the one before it
(faithfulness or its proxy, ID-based context precision): a drop beyond `max_metric_drop`.

A shift of the questions or of the thumbs-down rate is confirmed before it is raised: a
flagged check leaves its reference window pending, and the next `confirm_windows` windows
of N new questions are each tested against that same reference; only if they flag too is
the drift raised. Checks run every few hours for months, so a test of size alpha on each
would raise a false alarm every 1/alpha checks; confirmed, a steady stream raises one about
every 1/alpha^(1 + confirm_windows) checks, and a real shift, which persists, is raised one
window later. A check run before a whole window of new questions arrived waits (skipped).

Every check is stored in `drift_checks`; when any check drifts an event of kind `drift` is
written to `events`, which the training loop reads (`events_since`).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.db.engine import transaction
from rag_loop.db.models import DriftCheck, EvalRun, Event, FeedbackEvent, Interaction
from rag_loop.index.embedders import Embedder
from rag_loop.settings import DriftSettings, Settings

CONCEPT_METRICS = ("faithfulness", "groundedness_proxy", "id_context_precision")


class DriftParts(Protocol):
    """What a drift check uses."""

    settings: Settings
    sessions: sessionmaker[Session]
    engine: Engine
    embedder: Embedder  # the service's configured (base) model


@dataclass
class MMDResult:
    statistic: float
    p_value: float
    bandwidth: float


def mmd_permutation_test(
    reference: np.ndarray, current: np.ndarray, *, permutations: int, seed: int
) -> MMDResult:
    """Unbiased MMD^2 with a Gaussian kernel (median heuristic) and its permutation p-value."""
    pooled = np.vstack([reference, current]).astype(np.float64)
    n, m = len(reference), len(current)
    squared = np.maximum(
        (pooled**2).sum(1)[:, None] + (pooled**2).sum(1)[None, :] - 2 * pooled @ pooled.T, 0.0
    )
    upper = squared[np.triu_indices(len(pooled), k=1)]
    bandwidth = float(np.sqrt(np.median(upper[upper > 0]) / 2)) if np.any(upper > 0) else 1.0
    kernel = np.exp(-squared / (2 * bandwidth**2))
    # every labelling at once: row p of `first` marks the points labelled reference in
    # shuffle p (row 0: the observed labels), `second` the others
    rng = np.random.default_rng(seed)
    orders = [np.arange(n + m), *(rng.permutation(n + m) for _ in range(permutations))]
    first = np.zeros((len(orders), n + m))
    for row, order in enumerate(orders):
        first[row, order[:n]] = 1.0
    second = 1.0 - first
    spread, diagonal = first @ kernel, np.diag(kernel)
    within_first = (spread * first).sum(1) - first @ diagonal
    within_second = ((second @ kernel) * second).sum(1) - second @ diagonal
    between = (spread * second).sum(1)
    mmd = within_first / (n * (n - 1)) + within_second / (m * (m - 1)) - 2 * between / (n * m)
    observed = float(mmd[0])
    exceed = int((mmd[1:] >= observed).sum())
    return MMDResult(observed, (exceed + 1) / (permutations + 1), bandwidth)


@dataclass
class DriftReport:
    checks: list[dict[str, Any]] = field(default_factory=list)
    drifted: bool = False
    event_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"drifted": self.drifted, "event_id": self.event_id, "checks": self.checks}


Window = list[Any]  # rows of (id, query, created_at), oldest first


def _windows(engine: Engine, settings: DriftSettings) -> tuple[Window, Window]:
    """The reference window (the first `reference_windows` x `window_size` answered
    questions after the last drift event) and the current one (the latest `window_size`
    after those); with fewer, what there is split: the latest half, at most
    `window_size`, is current."""
    size, reference_size = settings.window_size, settings.reference_windows * settings.window_size
    columns = (Interaction.id, Interaction.query, Interaction.created_at)
    order = (Interaction.created_at, Interaction.id)
    with engine.connect() as conn:
        since = conn.scalar(select(func.max(Event.created_at)).where(Event.kind == "drift"))
        answered = select(*columns).where(Interaction.status == "ok")
        if since is not None:
            answered = answered.where(Interaction.created_at > since)
        first = list(conn.execute(answered.order_by(*order).limit(reference_size + size)))
        if len(first) < reference_size + size:
            current = min(size, len(first) // 2)
            return first[: len(first) - current], first[len(first) - current :]
        latest = conn.execute(answered.order_by(*(c.desc() for c in order)).limit(size)).all()
    return first[:reference_size], list(reversed(latest))


def _rows(engine: Engine, ids: list[str]) -> Window:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Interaction.id, Interaction.query, Interaction.created_at).where(
                Interaction.id.in_(ids)
            )
        ).all()
    return sorted(rows, key=lambda r: (r.created_at, r.id))


def _pending(services: DriftParts) -> dict[str, Any] | None:
    """A shift flagged by the last check and waiting for its confirmation, if any: the
    reference window it was flagged against, the questions already used, how many
    windows confirmed it so far."""
    with services.sessions() as session:
        last = session.scalar(
            select(DriftCheck)
            .where(DriftCheck.metric == "query_embedding_mmd")
            .order_by(DriftCheck.id.desc())
            .limit(1)
        )
    return last.details.get("pending") if last is not None else None


def _thumbs_down_rate(engine: Engine, ids: list[str]) -> tuple[int, int]:
    """(down, thumbed) over the interactions, counting each one's latest thumb."""
    latest: dict[str, str | None] = {}
    with engine.connect() as conn:
        for interaction_id, thumb in conn.execute(
            select(FeedbackEvent.interaction_id, FeedbackEvent.thumb)
            .where(FeedbackEvent.interaction_id.in_(ids), FeedbackEvent.kind == "thumb")
            .order_by(FeedbackEvent.id)
        ):
            latest[interaction_id] = thumb
    return sum(1 for t in latest.values() if t == "down"), len(latest)


class QuestionVectors:
    """The base model's vectors of answered questions by interaction id, kept between
    checks (the latest `kept`): the reference window stays put for days and each check
    brings one window of new questions, so a check embeds only those."""

    def __init__(self, kept: int = 20_000) -> None:
        self._kept = kept
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, embedder: Embedder, rows: Window) -> np.ndarray:
        model = embedder.version
        with self._lock:
            missing = [r for r in rows if (model, r.id) not in self._vectors]
            if missing:
                fresh = embedder.embed_documents([r.query for r in missing])
                for row, vector in zip(missing, fresh, strict=True):
                    self._vectors[(model, row.id)] = vector
            for row in rows:
                self._vectors.move_to_end((model, row.id))
            vectors = np.vstack([self._vectors[(model, r.id)] for r in rows])
            while len(self._vectors) > self._kept:
                self._vectors.popitem(last=False)
            return vectors


QUESTION_VECTORS = QuestionVectors()  # one per process: interaction ids are unique


def check_data_drift(
    services: DriftParts, settings: DriftSettings, windows: tuple[Window, Window]
) -> dict[str, Any]:
    reference, current = windows
    check: dict[str, Any] = {
        "kind": "data",
        "metric": "query_embedding_mmd",
        "threshold": settings.alpha,
        "details": {"reference_n": len(reference), "current_n": len(current)},
    }
    if min(len(reference), len(current)) < settings.min_samples:
        check.update(drifted=False, details={**check["details"], "skipped": "too few queries"})
        return check
    vectors = QUESTION_VECTORS.of(services.embedder, reference + current)
    result = mmd_permutation_test(
        vectors[: len(reference)],
        vectors[len(reference) :],
        permutations=settings.permutations,
        seed=settings.seed,
    )
    check.update(
        statistic=result.statistic,
        p_value=result.p_value,
        drifted=result.p_value < settings.alpha,
        details={**check["details"], "bandwidth": result.bandwidth},
    )
    return check


def check_thumbs(
    engine: Engine, settings: DriftSettings, ids: tuple[list[str], list[str]]
) -> dict[str, Any]:
    (ref_down, ref_n), (cur_down, cur_n) = (_thumbs_down_rate(engine, w) for w in ids)
    check: dict[str, Any] = {
        "kind": "concept",
        "metric": "thumbs_down_rate",
        "threshold": settings.max_thumbs_down_increase,
        "details": {"reference_thumbs": ref_n, "current_thumbs": cur_n},
    }
    if min(ref_n, cur_n) < settings.min_samples:
        check.update(drifted=False, details={**check["details"], "skipped": "too few thumbs"})
        return check
    p1, p2 = ref_down / ref_n, cur_down / cur_n
    pooled = (ref_down + cur_down) / (ref_n + cur_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / ref_n + 1 / cur_n)) or 1e-12
    z = (p2 - p1) / se
    p_value = 0.5 * math.erfc(z / math.sqrt(2))  # one-sided: the rate went up
    check.update(
        reference_value=p1,
        current_value=p2,
        statistic=z,
        p_value=p_value,
        drifted=(p2 - p1) > settings.max_thumbs_down_increase and p_value < settings.alpha,
    )
    return check


def check_eval_metrics(services: DriftParts, settings: DriftSettings) -> list[dict[str, Any]]:
    """The latest production evaluation against the one before it."""
    with services.sessions() as session:
        runs = list(
            session.scalars(
                select(EvalRun)
                .where(EvalRun.status == "done", EvalRun.source == "production")
                .order_by(EvalRun.created_at.desc())
                .limit(2)
            )
        )
    if len(runs) < 2:
        return []
    current, reference = runs
    checks = []
    for metric in CONCEPT_METRICS:
        before, now = reference.metrics.get(metric), current.metrics.get(metric)
        if before is None or now is None:
            continue
        checks.append(
            {
                "kind": "concept",
                "metric": metric,
                "reference_value": before,
                "current_value": now,
                "statistic": now - before,
                "threshold": settings.max_metric_drop,
                "drifted": before - now > settings.max_metric_drop,
                "details": {"reference_run": reference.id, "current_run": current.id},
            }
        )
    return checks


def check_drift(services: DriftParts, *, actor: str = "system") -> DriftReport:
    """Run every drift check, store them, and raise a `drift` event if any drifted (a shift
    of the questions or the thumbs once `confirm_windows` more windows confirmed it)."""
    settings = services.settings.drift
    reference, current = _windows(services.engine, settings)
    pending = _pending(services)
    if pending is not None:
        seen = set(pending["seen"])
        if any(r.id in seen for r in current):  # not a whole window of new questions yet
            awaiting = _awaiting(pending, settings)
            return _store(services, actor, awaiting, check_eval_metrics(services, settings))
        reference = _rows(services.engine, pending["reference"])
    windows = [
        check_data_drift(services, settings, (reference, current)),
        check_thumbs(
            services.engine, settings, ([r.id for r in reference], [r.id for r in current])
        ),
    ]
    if any(c["drifted"] for c in windows):
        confirmed = pending["confirmed"] + 1 if pending is not None else 0
        if confirmed < settings.confirm_windows:
            for check in windows:  # flagged, not yet raised
                check["details"].update(
                    flagged=check["drifted"],
                    confirmations=f"{confirmed} of {settings.confirm_windows}",
                )
                check["drifted"] = False
            windows[0]["details"]["pending"] = {
                "reference": [r.id for r in reference],
                "seen": [*(pending["seen"] if pending else []), *(r.id for r in current)],
                "confirmed": confirmed,
            }
    return _store(services, actor, windows, check_eval_metrics(services, settings))


def _awaiting(pending: dict[str, Any], settings: DriftSettings) -> list[dict[str, Any]]:
    """The checks of a round that waits for a whole window of new questions to confirm a
    flagged shift: skipped, the shift still pending."""
    details = {
        "skipped": f"awaiting {settings.window_size} new questions to confirm a flagged shift",
        "pending": pending,
    }
    return [
        {"kind": "data", "metric": "query_embedding_mmd", "drifted": False, "details": details},
        {
            "kind": "concept",
            "metric": "thumbs_down_rate",
            "drifted": False,
            "details": {"skipped": details["skipped"]},
        },
    ]


def _store(
    services: DriftParts,
    actor: str,
    windows: list[dict[str, Any]],
    metrics: list[dict[str, Any]],
) -> DriftReport:
    checks = [*windows, *metrics]
    report = DriftReport(checks=checks, drifted=any(c["drifted"] for c in checks))
    with transaction(services.sessions) as session:
        for check in checks:
            session.add(
                DriftCheck(
                    kind=check["kind"],
                    metric=check["metric"],
                    reference_value=check.get("reference_value"),
                    current_value=check.get("current_value"),
                    statistic=check.get("statistic"),
                    threshold=check.get("threshold"),
                    p_value=check.get("p_value"),
                    drifted=bool(check["drifted"]),
                    details=check.get("details", {}),
                )
            )
        if report.drifted:
            event = Event(
                kind="drift",
                payload={
                    "actor": actor,
                    "checks": [c for c in checks if c["drifted"]],
                },
            )
            session.add(event)
            session.flush()
            report.event_id = event.id
    return report


def events_since(engine: Engine, kind: str, after_id: int = 0) -> list[dict[str, Any]]:
    """Events of a kind after a given id, oldest first: how the loop subscribes."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Event.id, Event.created_at, Event.kind, Event.payload)
            .where(Event.kind == kind, Event.id > after_id)
            .order_by(Event.id)
        ).all()
    return [
        {"id": r.id, "created_at": r.created_at.isoformat(), "kind": r.kind, "payload": r.payload}
        for r in rows
    ]


def recent_checks(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = (
            conn.execute(
                select(*DriftCheck.__table__.columns).order_by(DriftCheck.id.desc()).limit(limit)
            )
            .mappings()
            .all()
        )
    return [
        {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dict(r).items()}
        for r in rows
    ]
