"""Live metrics from feedback: shadow-mode comparison and the post-promotion watch.

Feedback-labelled precision of one answer: of the shown chunks a user labelled (or whose
document a user pointed at, which counts as relevant), the share that is relevant. For a
shadowed candidate, the same labels are applied to the chunks it would have shown; chunks
nobody labelled are left out on both sides. Thumbs-down rate: the share of answers whose
latest thumb is down.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.db.models import FeedbackEvent, Interaction, Retrieval, ShadowRetrieval
from rag_loop.feedback.labels import fold_by_interaction


def _labels(
    sessions: sessionmaker[Session], interaction_ids: list[str]
) -> tuple[dict[str, dict[str, bool]], dict[str, set[str]], dict[str, str]]:
    """Per interaction: latest chunk labels, pointed-at documents, latest thumb."""
    labels: dict[str, dict[str, bool]] = defaultdict(dict)
    pointed: dict[str, set[str]] = defaultdict(set)
    thumbs: dict[str, str] = {}
    with sessions() as session:
        for start in range(0, len(interaction_ids), 500):
            batch = interaction_ids[start : start + 500]
            folded = fold_by_interaction(
                session.scalars(
                    select(FeedbackEvent)
                    .where(FeedbackEvent.interaction_id.in_(batch))
                    .order_by(FeedbackEvent.id)
                )
            )
            for interaction_id, found in folded.items():
                labels[interaction_id] = found.chunks
                pointed[interaction_id] = set(found.pointed_documents)
                if found.thumb:
                    thumbs[interaction_id] = found.thumb
    return labels, pointed, thumbs


def _precision(
    chunks: list[tuple[str, str]], labels: dict[str, bool], pointed: set[str]
) -> float | None:
    known = []
    for chunk_id, document_id in chunks:
        if chunk_id in labels:
            known.append(labels[chunk_id])
        elif document_id in pointed:
            known.append(True)
    return sum(known) / len(known) if known else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def shadow_stats(
    sessions: sessionmaker[Session], candidate_index_id: int, since: datetime
) -> dict[str, Any]:
    """Champion (served) vs candidate (shadow) on the shadowed questions since `since`."""
    with sessions() as session:
        rows = list(
            session.scalars(
                select(ShadowRetrieval).where(
                    ShadowRetrieval.index_version_id == candidate_index_id,
                    ShadowRetrieval.created_at >= since,
                )
            )
        )
        ids = [r.interaction_id for r in rows]
        served: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for start in range(0, len(ids), 500):
            for r in session.scalars(
                select(Retrieval)
                .where(Retrieval.interaction_id.in_(ids[start : start + 500]))
                .order_by(Retrieval.interaction_id, Retrieval.rank)
            ):
                served[r.interaction_id].append((r.chunk_id, r.document_id))
    labels, pointed, _ = _labels(sessions, ids)
    champion, candidate = [], []
    for row in rows:
        mine = labels.get(row.interaction_id, {})
        docs = pointed.get(row.interaction_id, set())
        if not mine and not docs:
            continue
        before = _precision(served[row.interaction_id], mine, docs)
        after = _precision(list(zip(row.chunk_ids, row.document_ids, strict=True)), mine, docs)
        if before is not None and after is not None:
            champion.append(before)
            candidate.append(after)
    return {
        "shadowed": len(rows),
        "labelled": len(champion),
        "overlap": _mean([r.overlap for r in rows]),
        "champion_precision": _mean(champion),
        "candidate_precision": _mean(candidate),
    }


def served_stats(
    sessions: sessionmaker[Session],
    index_version_id: int,
    *,
    after: datetime | None = None,
    last: int,
) -> dict[str, Any]:
    """Thumbs-down rate and labelled precision of the latest `last` answers with a thumb
    served by one index version (optionally only those after a time)."""
    with sessions() as session:
        query = (
            select(Interaction.id)
            .join(FeedbackEvent, FeedbackEvent.interaction_id == Interaction.id)
            .where(Interaction.index_version_id == index_version_id, FeedbackEvent.kind == "thumb")
            .group_by(Interaction.id)
            .order_by(func.max(Interaction.created_at).desc())
            .limit(last)
        )
        if after is not None:
            query = query.where(Interaction.created_at >= after)
        ids = list(session.scalars(query))
        served: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for start in range(0, len(ids), 500):
            for r in session.scalars(
                select(Retrieval).where(Retrieval.interaction_id.in_(ids[start : start + 500]))
            ):
                served[r.interaction_id].append((r.chunk_id, r.document_id))
    labels, pointed, thumbs = _labels(sessions, ids)
    rated = [thumbs[i] for i in ids if i in thumbs]
    precisions = [
        p
        for i in ids
        if (p := _precision(served[i], labels.get(i, {}), pointed.get(i, set()))) is not None
    ]
    return {
        "thumbs": len(rated),
        "thumbs_down_rate": rated.count("down") / len(rated) if rated else None,
        "precision": _mean(precisions),
    }
