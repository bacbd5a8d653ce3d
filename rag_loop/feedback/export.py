"""The feedback dataset: one record per interaction with feedback, as JSONL and Parquet."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.db.models import Correction, FeedbackEvent, Interaction, Retrieval
from rag_loop.errors import InvalidInput
from rag_loop.feedback.lineage import effective_labels
from rag_loop.files import write_lines_whole, write_whole

FORMATS = ("jsonl", "parquet")


def feedback_records(
    sessions: sessionmaker[Session], *, include_all: bool = False
) -> list[dict[str, Any]]:
    with sessions() as session:
        events: dict[str, list[FeedbackEvent]] = defaultdict(list)
        for event in session.scalars(select(FeedbackEvent).order_by(FeedbackEvent.id)):
            events[event.interaction_id].append(event)
        corrections: dict[str, list[Correction]] = defaultdict(list)
        for correction in session.scalars(select(Correction).order_by(Correction.id)):
            corrections[correction.interaction_id].append(correction)
        query = select(Interaction).order_by(Interaction.created_at, Interaction.id)
        if not include_all:
            query = query.where(Interaction.id.in_(list(events)))
        interactions = list(session.scalars(query))
        shown: dict[str, list[Retrieval]] = defaultdict(list)
        ids = [i.id for i in interactions]
        for start in range(0, len(ids), 500):
            for r in session.scalars(
                select(Retrieval).where(Retrieval.interaction_id.in_(ids[start : start + 500]))
            ):
                shown[r.interaction_id].append(r)
        records = []
        for interaction in interactions:
            labels = effective_labels(events[interaction.id])
            records.append(
                {
                    "interaction_id": interaction.id,
                    "created_at": interaction.created_at.isoformat(),
                    "query": interaction.query,
                    "answer": interaction.answer,
                    "status": interaction.status,
                    "index_version": interaction.index_version_id,
                    "embedder_version": interaction.embedder_version,
                    "prompt_version": interaction.prompt_version,
                    "generator": interaction.generator,
                    "thumb": labels["thumb"],
                    "shown_chunks": [
                        {
                            "rank": r.rank,
                            "chunk_id": r.chunk_id,
                            "document_id": r.document_id,
                            "score": r.score,
                            "text": r.text,
                            "relevant": labels["chunk_labels"].get(r.chunk_id),
                        }
                        for r in sorted(shown[interaction.id], key=lambda r: r.rank)
                    ],
                    "source_pointers": [
                        {"document_id": e.document_id, "chunk_id": e.chunk_id}
                        for e in events[interaction.id]
                        if e.kind == "source_pointer"
                    ],
                    "comments": [e.text for e in events[interaction.id] if e.kind == "comment"],
                    "corrections": [
                        {"id": c.id, "text": c.text, "status": c.status}
                        for c in corrections[interaction.id]
                    ],
                    "n_feedback_events": len(events[interaction.id]),
                }
            )
        return records


def export_feedback(
    sessions: sessionmaker[Session],
    out_dir: Path,
    *,
    formats: tuple[str, ...] = FORMATS,
    include_all: bool = False,
) -> dict[str, Any]:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise InvalidInput(f"formats must be among {', '.join(FORMATS)}; got {list(formats)}")
    records = feedback_records(sessions, include_all=include_all)
    try:
        return {"records": len(records), "files": _write(records, out_dir, formats)}
    except OSError as exc:  # each file is written whole or not at all (a temporary, renamed)
        raise InvalidInput(f"cannot write the export to {out_dir}: {exc.strerror or exc}") from exc


def _write(
    records: list[dict[str, Any]], out_dir: Path, formats: tuple[str, ...]
) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    if "jsonl" in formats:
        path = out_dir / "feedback.jsonl"
        write_lines_whole(path, (json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        written["jsonl"] = str(path)
    if "parquet" in formats:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = out_dir / "feedback.parquet"
        table = pa.Table.from_pylist(records, schema=_schema())
        write_whole(path, lambda temporary: pq.write_table(table, temporary))
        written["parquet"] = str(path)
    return written


def _schema() -> Any:
    import pyarrow as pa

    chunk = pa.struct(
        [
            ("rank", pa.int32()),
            ("chunk_id", pa.string()),
            ("document_id", pa.string()),
            ("score", pa.float64()),
            ("text", pa.string()),
            ("relevant", pa.bool_()),
        ]
    )
    return pa.schema(
        [
            ("interaction_id", pa.string()),
            ("created_at", pa.string()),
            ("query", pa.string()),
            ("answer", pa.string()),
            ("status", pa.string()),
            ("index_version", pa.int64()),
            ("embedder_version", pa.string()),
            ("prompt_version", pa.string()),
            ("generator", pa.string()),
            ("thumb", pa.string()),
            ("shown_chunks", pa.list_(chunk)),
            (
                "source_pointers",
                pa.list_(pa.struct([("document_id", pa.string()), ("chunk_id", pa.string())])),
            ),
            ("comments", pa.list_(pa.string())),
            (
                "corrections",
                pa.list_(
                    pa.struct([("id", pa.int64()), ("text", pa.string()), ("status", pa.string())])
                ),
            ),
            ("n_feedback_events", pa.int32()),
        ]
    )
