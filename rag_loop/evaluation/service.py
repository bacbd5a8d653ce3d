"""What the API, the CLI and the scheduler call: evaluations, drift, events, the report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from rag_loop.errors import NotFound, RagLoopError
from rag_loop.evaluation import drift as drift_checks
from rag_loop.evaluation import report, runner
from rag_loop.evaluation.runner import EvalParts

log = logging.getLogger(__name__)


def golden_path(services: EvalParts, name: str | None) -> Path | None:
    """A configured golden set by name (file stem or file name); None: the default."""
    if name is None:
        return None
    sets = services.settings.evaluation.golden_sets
    for path in sets:
        if name in (path.stem, path.name, str(path)):
            return path
    known = ", ".join(p.stem for p in sets) or "none configured"
    raise NotFound(f"no golden set {name!r}; configured: {known}")


def check_request(
    services: EvalParts, *, golden_set: str | None, index_version: int | None
) -> None:
    """What can be refused before an evaluation is queued: an unknown golden set or index
    version (404), or an index version that is not ready (400)."""
    golden_path(services, golden_set)
    if index_version is not None:
        runner.version_to_score(services, index_version)


def run(
    services: EvalParts,
    *,
    source: Literal["golden", "production"] = "golden",
    golden_set: str | None = None,
    path: Path | None = None,
    window: int | None = None,
    index_version: int | None = None,
    use_judge: bool = True,
    limit: int | None = None,
    trigger: str = "manual",
    run_id: str | None = None,
) -> str:
    """Run one evaluation; returns its id (failed runs raise, and are recorded)."""
    request = runner.EvalRequest(
        source=source,
        golden_path=path or golden_path(services, golden_set),
        window=window,
        index_version_id=index_version,
        use_judge=use_judge,
        limit=limit,
        trigger=trigger,
        run_id=run_id,
    )
    return runner.run_evaluation(services, request).run_id


def get(services: EvalParts, run_id: str) -> dict[str, Any]:
    return runner.get_run(services, run_id)


def list_runs(
    services: EvalParts, limit: int = 50, dataset: str | None = None
) -> list[dict[str, Any]]:
    return runner.list_runs(services, limit=limit, dataset=dataset)


def compare(services: EvalParts, dataset: str | None = None) -> list[dict[str, Any]]:
    return runner.compare_by_version(services, dataset)


def drift(services: EvalParts, *, actor: str = "system") -> dict[str, Any]:
    return drift_checks.check_drift(services, actor=actor).as_dict()


def events(services: EvalParts, kind: str, after: int = 0) -> list[dict[str, Any]]:
    return drift_checks.events_since(services.engine, kind, after)


def summary(services: EvalParts, cycles: list[dict[str, Any]]) -> dict[str, Any]:
    return report.build_summary(services, cycles)


def html(summary: dict[str, Any]) -> str:
    return report.render_html(summary)


def scheduled_round(services: EvalParts) -> dict[str, Any]:
    """What the schedule runs: every golden set, the production window, a drift check.
    One failing part does not stop the others; each failure is recorded and logged."""
    done: dict[str, Any] = {"runs": [], "failed": [], "drift": None}
    parts: list[tuple[str, dict[str, Any]]] = [
        (str(p), {"source": "golden", "path": p}) for p in services.settings.evaluation.golden_sets
    ]
    parts.append(("production", {"source": "production"}))
    for name, kwargs in parts:
        try:
            done["runs"].append(run(services, trigger="schedule", **kwargs))
        except RagLoopError as exc:
            log.warning("scheduled evaluation of %s failed: %s", name, exc.message)
            done["failed"].append({"dataset": name, "error": exc.message})
    done["drift"] = drift(services, actor="schedule")
    return done
