"""The evaluation report: a JSON summary for machines and an HTML page for people.

`build_summary` reads SQL only (runs, samples, drift checks, interactions and feedback);
`render_html` turns that summary into one self-contained page: plots are PNGs drawn with
matplotlib and inlined as data URIs, styles are inline, there is no script and nothing is
fetched from a network, so the page renders offline and can be mailed or archived.

Sections: latest runs; trends over time (thumbs-up rate per day, faithfulness and
hallucination rate with their proxies, ID-based context precision/recall, nDCG); the index
versions side by side on each golden set; drift status; the worst interactions with their
query, answer, chunks as served and feedback.
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from rag_loop.db.models import (
    Correction,
    EvalRun,
    EvalSample,
    FeedbackEvent,
    Interaction,
    Retrieval,
    now_of,
)
from rag_loop.evaluation.drift import recent_checks
from rag_loop.evaluation.runner import EvalParts, compare_by_version, run_view
from rag_loop.feedback.labels import fold_by_interaction

TEMPLATE = Path(__file__).with_name("templates") / "report.html"
TREND_METRICS = {
    "answers": (
        "faithfulness",
        "hallucination_rate",
        "groundedness_proxy",
        "hallucination_rate_proxy",
    ),
    "retrieval": (
        "id_context_precision",
        "id_context_recall",
        "llm_context_precision",
        "llm_context_recall",
    ),
    "golden": ("ndcg_at_10", "recall_at_10", "mrr_at_10"),
}
WORST = 10
REPORT_CYCLES = 20  # the latest loop cycles the report lists


def build_summary(
    services: EvalParts,
    cycles: list[dict[str, Any]],
    *,
    runs: int = 200,
    worst: int = WORST,
) -> dict[str, Any]:
    """Everything the report shows, as JSON-able data; `cycles` are the latest loop cycles
    as the loop's views (`rag_loop.loop.cycle.list_cycles`)."""
    k = services.settings.evaluation.k
    with services.sessions() as session:
        history = list(
            session.scalars(
                select(EvalRun).where(EvalRun.status == "done").order_by(EvalRun.created_at)
            )
        )[-runs:]
        failed = list(
            session.scalars(
                select(EvalRun)
                .where(EvalRun.status == "failed")
                .order_by(EvalRun.created_at.desc())
                .limit(10)
            )
        )
        latest = [run_view(r) for r in reversed(history[-10:])]
        trends: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for run in history:
            for metric, value in run.metrics.items():
                trends[f"{run.source}:{metric}"].append(
                    {
                        "at": run.created_at.isoformat(),
                        "value": value,
                        "run": run.id,
                        "dataset": run.dataset,
                        "index_version": run.index_version_id,
                    }
                )
        production = next((r for r in reversed(history) if r.source == "production"), None)
    return {
        "generated_at": now_of(services.sessions).isoformat(),
        "k": k,
        "latest_runs": latest,
        "failed_runs": [run_view(r) for r in failed],
        "trends": dict(trends),
        "thumbs_by_day": thumbs_by_day(services),
        "versions": compare_by_version(services),
        "drift": recent_checks(services.engine, limit=20),
        "loop_cycles": loop_cycles(cycles),
        "worst_interactions": worst_interactions(services, production, worst),
    }


def loop_cycles(cycles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The loop cycles' lines: state, trigger, the gate's numbers, stage times."""
    return [
        {
            "id": c["id"],
            "state": c["state"],
            "trigger": c["trigger"],
            "created_at": c["created_at"],
            "decided_by": c["decided_by"],
            "error": c["error"],
            "champion": c["champion_index_version_id"],
            "candidate": c["candidate_index_version_id"],
            "embedder": (c["embedder"] or {}).get("version"),
            "examples": (c["training_set"] or {}).get("n_examples"),
            "primary_metric": c["gate"].get("primary_metric"),
            "primary_kind": c["gate"].get("primary_kind"),
            "primary_delta": c["gate"].get("primary_delta"),
            "primary_p_value": c["gate"].get("primary_p_value"),
            "shadow": c["gate"].get("shadow"),
            "watch": (c["gate"].get("watch") or {}).get("status"),
            "seconds": round(
                sum(s["seconds"] for s in c["stages"].values() if isinstance(s, dict)), 1
            ),
        }
        for c in cycles
    ]


def thumbs_by_day(services: EvalParts) -> list[dict[str, Any]]:
    """Thumbs-up rate per day, counting each interaction's latest thumb."""
    latest: dict[str, tuple[str | None, datetime]] = {}
    with services.engine.connect() as conn:
        for interaction_id, thumb, at in conn.execute(
            select(FeedbackEvent.interaction_id, FeedbackEvent.thumb, Interaction.created_at)
            .join(Interaction, Interaction.id == FeedbackEvent.interaction_id)
            .where(FeedbackEvent.kind == "thumb")
            .order_by(FeedbackEvent.id)
        ):
            latest[interaction_id] = (thumb, at)
    days: dict[str, list[str | None]] = defaultdict(list)
    for thumb, at in latest.values():
        days[at.date().isoformat()].append(thumb)
    return [
        {"day": day, "up_rate": thumbs.count("up") / len(thumbs), "thumbs": len(thumbs)}
        for day, thumbs in sorted(days.items())
    ]


def worst_interactions(
    services: EvalParts, production: EvalRun | None, limit: int
) -> list[dict[str, Any]]:
    """Recent answers ranked by how bad they look: a thumbs-down (2) and a correction (2: the
    user wrote down that the answer is wrong) count most, each chunk marked not relevant
    0.25, and low faithfulness (or its proxy) and ID-based precision in the latest
    production evaluation up to 1 each. A corrected answer outranks an uncorrected
    thumbs-down whose every chunk missed (2 + 5 x 0.25)."""
    badness: dict[str, float] = defaultdict(float)
    reasons: dict[str, list[str]] = defaultdict(list)
    scores: dict[str, dict[str, Any]] = {}
    with services.sessions() as session:
        if production is not None:
            for sample in session.scalars(
                select(EvalSample).where(EvalSample.run_id == production.id)
            ):
                if not sample.interaction_id:
                    continue
                scores[sample.interaction_id] = sample.scores
                for metric in ("faithfulness", "groundedness_proxy", "id_context_precision"):
                    value = sample.scores.get(metric)
                    if value is not None and value < 0.5:
                        badness[sample.interaction_id] += 1 - value
                        reasons[sample.interaction_id].append(f"{metric} {value:.2f}")
        recent = [
            r
            for r in session.execute(
                select(Interaction.id).order_by(Interaction.created_at.desc()).limit(1000)
            ).scalars()
        ]
        feedback: dict[str, list[dict[str, Any]]] = defaultdict(list)
        events = list(
            session.scalars(
                select(FeedbackEvent)
                .where(FeedbackEvent.interaction_id.in_(recent))
                .order_by(FeedbackEvent.id)
            )
        )
        folded = fold_by_interaction(events)
        latest_thumb = {i: f.thumb for i, f in folded.items() if f.thumb}
        for interaction_id, labels in folded.items():  # chunks whose latest label is "no"
            badness[interaction_id] += 0.25 * len(labels.not_relevant_chunks)
        for event in events:
            feedback[event.interaction_id].append(
                {
                    "kind": event.kind,
                    "thumb": event.thumb,
                    "chunk_id": event.chunk_id,
                    "relevant": event.relevant,
                    "document_id": event.document_id,
                    "text": event.text,
                }
            )
            if event.kind == "correction":
                badness[event.interaction_id] += 2
                reasons[event.interaction_id].append("corrected")
        for interaction_id, thumb in latest_thumb.items():
            if thumb == "down":
                badness[interaction_id] += 2
                reasons[interaction_id].append("thumbs down")
        ranked = sorted(
            (i for i in badness if badness[i] > 0 and i in set(recent)),
            key=lambda i: (-badness[i], i),
        )[:limit]
        out = []
        for interaction_id in ranked:
            row = session.get(Interaction, interaction_id)
            if row is None:
                continue
            chunks = session.scalars(
                select(Retrieval)
                .where(Retrieval.interaction_id == interaction_id)
                .order_by(Retrieval.rank)
            )
            corrections = session.scalars(
                select(Correction).where(Correction.interaction_id == interaction_id)
            )
            out.append(
                {
                    "interaction_id": interaction_id,
                    "created_at": row.created_at.isoformat(),
                    "query": row.query,
                    "answer": row.answer,
                    "index_version": row.index_version_id,
                    "badness": round(badness[interaction_id], 3),
                    "why": reasons[interaction_id],
                    "scores": scores.get(interaction_id, {}),
                    "chunks": [
                        {
                            "rank": c.rank,
                            "chunk_id": c.chunk_id,
                            "document_id": c.document_id,
                            "title": c.title,
                            "score": c.score,
                            "text": c.text,
                        }
                        for c in chunks
                    ],
                    "feedback": feedback.get(interaction_id, []),
                    "corrections": [
                        {"id": c.id, "status": c.status, "text": c.text} for c in corrections
                    ],
                }
            )
    return out


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def plots(summary: dict[str, Any]) -> list[dict[str, str]]:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    out: list[dict[str, str]] = []
    k = summary["k"]
    panels = [
        ("Answers over time (production)", "production", TREND_METRICS["answers"]),
        (
            "Retrieval over time (production, feedback labels)",
            "production",
            TREND_METRICS["retrieval"],
        ),
        (
            "Golden sets over time",
            "golden",
            (f"ndcg_at_{k}", f"recall_at_{k}", f"mrr_at_{k}", "id_context_precision"),
        ),
    ]
    thumbs = summary["thumbs_by_day"]
    figure, axis = plt.subplots(figsize=(7, 2.8))
    if thumbs:
        axis.plot([t["day"] for t in thumbs], [t["up_rate"] for t in thumbs], marker="o")
    axis.set_ylim(-0.05, 1.05)
    axis.set_title("Thumbs-up rate per day")
    axis.tick_params(axis="x", labelrotation=30)
    out.append({"title": "Thumbs-up rate per day", "src": _png(figure), "empty": str(not thumbs)})
    plt.close(figure)
    for title, source, metrics in panels:
        figure, axis = plt.subplots(figsize=(7, 2.8))
        drawn = False
        for metric in metrics:
            points = summary["trends"].get(f"{source}:{metric}", [])
            if points:
                axis.plot(
                    [datetime.fromisoformat(p["at"]) for p in points],  # type: ignore[arg-type]
                    [p["value"] for p in points],
                    marker="o",
                    label=metric,
                )
                drawn = True
        axis.set_ylim(-0.05, 1.05)
        axis.set_title(title)
        axis.tick_params(axis="x", labelrotation=30)
        if drawn:
            axis.legend(fontsize=7, loc="lower left")
        out.append({"title": title, "src": _png(figure), "empty": str(not drawn)})
        plt.close(figure)
    versions = summary["versions"]
    figure, axis = plt.subplots(figsize=(7, 2.8))
    golden = [v for v in versions if v["index_version"] is not None]
    if golden:
        labels = [f"{v['dataset']}\nv{v['index_version']}" for v in golden]
        names = (f"ndcg_at_{k}", f"recall_at_{k}", f"mrr_at_{k}")
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            axis.bar(
                [x + i * width for x in range(len(golden))],
                [v["metrics"].get(name, 0.0) for v in golden],
                width=width,
                label=name,
            )
        axis.set_xticks([x + width for x in range(len(golden))], labels, fontsize=7)
        axis.legend(fontsize=7)
    axis.set_ylim(0, 1.05)
    axis.set_title("Index versions on the golden sets")
    out.append(
        {"title": "Index versions side by side", "src": _png(figure), "empty": str(not golden)}
    )
    plt.close(figure)
    return out


def render_html(summary: dict[str, Any]) -> str:
    from jinja2 import Environment, select_autoescape

    environment = Environment(autoescape=select_autoescape(default=True))
    template = environment.from_string(TEMPLATE.read_text(encoding="utf-8"))
    return template.render(summary=summary, plots=plots(summary))
