"""What an evaluation scores: a golden set from a file, or a window of production answers.

A golden set is JSONL, one question per line:

    {"id": "q001", "question": "...", "answer": "reference answer",
     "document_ids": ["doc-a"]}            (or "chunk_ids": [...] for chunk-level references)

`answer` and the ids are each optional, but every line needs at least one of them. The
sample corpus's `corpora/kestrel/questions.jsonl` is the first golden set.

A production window is the latest N answered interactions with whatever feedback they got:
chunks labelled relevant and chunks pointed at are the reference ids; the text of an
approved correction is the reference answer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, select

from rag_loop.db.models import Chunk, Correction, FeedbackEvent, Interaction, Retrieval
from rag_loop.errors import InvalidInput
from rag_loop.feedback.labels import fold_by_interaction


@dataclass
class EvalItem:
    sample_id: str
    query: str
    reference: str | None = None  # reference answer
    reference_ids: list[str] = field(default_factory=list)
    # filled by the run (golden) or from the log (production):
    answer: str | None = None
    retrieved: list[dict[str, Any]] = field(default_factory=list)  # chunk_id, document_id, text
    interaction_id: str | None = None
    thumb: str | None = None
    index_version: int | None = None  # production: the version that served it


@dataclass
class EvalDataset:
    name: str
    source: Literal["golden", "production"]
    id_level: Literal["document", "chunk"]  # what reference_ids name
    items: list[EvalItem]
    content_hash: str


def load_golden(path: Path) -> EvalDataset:
    """Read and check a golden set; every problem is reported with its line number."""
    if not path.is_file():
        raise InvalidInput(f"golden set {path} does not exist or is not a file")
    raw = path.read_bytes()
    items: list[EvalItem] = []
    levels: set[str] = set()
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, encoded in enumerate(raw.splitlines(), start=1):
        try:  # a byte-order mark (as some editors on Windows write) is not JSON
            line = encoded.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            problems.append({"line": number, "problem": f"not UTF-8 text ({exc.reason})"})
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append({"line": number, "problem": f"not JSON: {exc.msg}"})
            continue
        if not isinstance(row, dict):
            problems.append({"line": number, "problem": "not a JSON object"})
            continue
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            problems.append({"line": number, "problem": "`question` must be a non-empty string"})
            continue
        sample_id = str(row.get("id") or f"line-{number}")
        if sample_id in seen:
            problems.append({"line": number, "problem": f"id {sample_id!r} appears twice"})
            continue
        seen.add(sample_id)
        ids: list[str] = []
        for key, level in (("document_ids", "document"), ("chunk_ids", "chunk")):
            value = row.get(key)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                problems.append({"line": number, "problem": f"`{key}` must be a list of ids"})
                break
            if value:
                levels.add(level)
                ids = value
        answer = row.get("answer")
        if answer is not None and not isinstance(answer, str):
            problems.append({"line": number, "problem": "`answer` must be a string"})
            continue
        if not ids and not (answer or "").strip():
            problems.append(
                {"line": number, "problem": "give a reference `answer`, `document_ids` or both"}
            )
            continue
        items.append(EvalItem(sample_id, question.strip(), answer or None, list(ids)))
    if problems:
        first = problems[0]
        raise InvalidInput(
            f"golden set {path} has {len(problems)} bad line(s); line {first['line']}: "
            f"{first['problem']}",
            details=problems[:50],
        )
    if not items:
        raise InvalidInput(f"golden set {path} is empty")
    if len(levels) > 1:
        raise InvalidInput(
            f"golden set {path} mixes document_ids and chunk_ids; use one kind of reference"
        )
    return EvalDataset(
        name=path.stem,
        source="golden",
        id_level="chunk" if levels == {"chunk"} else "document",
        items=items,
        content_hash=hashlib.sha256(raw).hexdigest(),
    )


def production_window(engine: Engine, size: int) -> EvalDataset:
    """The latest `size` answered interactions, with the retrievals as served and their
    feedback (latest thumb, relevant chunks and pointers, approved corrections)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Interaction.id, Interaction.query, Interaction.answer, Interaction.index_version_id
            )
            .where(Interaction.status == "ok")
            .order_by(Interaction.created_at.desc(), Interaction.id)
            .limit(size)
        ).all()
        ids = [r.id for r in rows]
        served: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for r in conn.execute(
            select(
                Retrieval.interaction_id, Retrieval.chunk_id, Retrieval.document_id, Retrieval.text
            )
            .where(Retrieval.interaction_id.in_(ids))
            .order_by(Retrieval.interaction_id, Retrieval.rank)
        ):
            served[r.interaction_id].append(
                {"chunk_id": r.chunk_id, "document_id": r.document_id, "text": r.text}
            )
        folded = fold_by_interaction(
            conn.execute(
                select(
                    FeedbackEvent.interaction_id,
                    FeedbackEvent.kind,
                    FeedbackEvent.thumb,
                    FeedbackEvent.chunk_id,
                    FeedbackEvent.relevant,
                    FeedbackEvent.document_id,
                )
                .where(FeedbackEvent.interaction_id.in_(ids))
                .order_by(FeedbackEvent.id)
            )
        )
        thumbs: dict[str, str] = {i: f.thumb for i, f in folded.items() if f.thumb}
        # references: chunks whose latest label is relevant, and pointed-at chunks
        relevant: dict[str, list[str]] = {i: [] for i in ids}
        pointed_docs: dict[str, list[str]] = {}
        for interaction_id, labels in folded.items():
            relevant[interaction_id] = [*labels.relevant_chunks, *labels.pointed_chunks]
            if labels.pointed_documents:
                pointed_docs[interaction_id] = list(labels.pointed_documents)
        if pointed_docs:  # a pointer to a document: its live chunks are the references
            wanted = {d for docs in pointed_docs.values() for d in docs}
            chunks_of: dict[str, list[str]] = {}
            for c in conn.execute(
                select(Chunk.document_id, Chunk.id).where(
                    Chunk.document_id.in_(wanted), Chunk.superseded_at.is_(None)
                )
            ):
                chunks_of.setdefault(c.document_id, []).append(c.id)
            for interaction_id, docs in pointed_docs.items():
                for d in docs:
                    relevant[interaction_id].extend(chunks_of.get(d, []))
        corrections: dict[str, str] = {}  # the latest approved correction is the reference
        for interaction_id, text in conn.execute(
            select(Correction.interaction_id, Correction.text)
            .where(Correction.interaction_id.in_(ids), Correction.status == "approved")
            .order_by(Correction.id)
        ):
            corrections[interaction_id] = text
    items = [
        EvalItem(
            sample_id=r.id,
            query=r.query,
            reference=corrections.get(r.id),
            reference_ids=list(dict.fromkeys(relevant[r.id])),
            answer=r.answer,
            retrieved=served[r.id],
            interaction_id=r.id,
            thumb=thumbs.get(r.id),
            index_version=r.index_version_id,
        )
        for r in reversed(rows)  # oldest first
    ]
    if not items:
        raise InvalidInput("there are no answered interactions to evaluate yet; ask first")
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return EvalDataset(f"production-last-{size}", "production", "chunk", items, digest)
