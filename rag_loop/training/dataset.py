"""Feedback -> a versioned training set of (query, positive, hard negatives) examples.

What counts, per interaction (feedback up to the cycle's snapshot time):

positives   shown chunks labelled relevant; a pointer to the right chunk, or to a document
            (its chunk nearest to the query in the serving index); the chunk of an approved
            correction; with `thumbs_up_positive`, the thumb is a vote on the answer's first
            cited chunk (up: for it, down: against it)
negatives   shown chunks labelled not relevant, then chunks mined from the serving index
            (the highest ranked that are neither positives nor from a positive's document
            and score below `mine_max_relative_score` of the positive: maybe unlabelled
            positives otherwise)

The rules for conflicting and noisy labels: within one interaction the latest label of a
chunk wins (earlier ones stay in the history). Interactions whose queries are equal after
normalisation are one query: each relevant label, pointer or correction is a vote for the
chunk, each not-relevant label a vote against; the majority decides and a tie drops the
chunk from both sides. A thumb agrees or disagrees with the label of the chunk the answer
was built on first, so one mislabelled first chunk is outvoted or dropped, never trusted.

Query association (`associate_unrated`, with `expand_documents`): an answered question
nobody rated is a weak yes for the chunk its answer was built on. It is written as a row of
part "associated" (question, chunk): document expansion uses it, training never does, and
neither a question with feedback, nor a golden or held-out one, is associated.

The split: a query is held out for the gate when a hash of its normalised text falls below
`holdout_share`, so repeated questions always land on the same side. Of the other queries,
a second hash marks `validation_share` as validation (each example's `part`): training fits
on the rest and chooses its own epochs and fusion weight on them. The leak guard: a
query whose normalised text is a question of any configured golden set (or of the held-out
split) never becomes a training example.

The examples and the held-out set are written under the data dir, named by the content hash
of everything that shaped them (examples, held-out queries, rules); that hash is the set's
identity in SQL and MLflow, and the same feedback and rules give the same hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.corpus.chunking import embedding_input
from rag_loop.db.engine import transaction
from rag_loop.db.models import (
    Chunk,
    Correction,
    Document,
    FeedbackEvent,
    IndexVersion,
    Interaction,
    Retrieval,
    TrainingSet,
)
from rag_loop.evaluation.datasets import load_golden
from rag_loop.feedback.labels import fold
from rag_loop.files import write_lines_whole
from rag_loop.index.chroma import ChromaStore
from rag_loop.index.embedders import EmbedderPool
from rag_loop.index.expansions import ASSOCIATED
from rag_loop.registry import outbox
from rag_loop.registry.outbox import Outbox
from rag_loop.registry.tracking import TRAINING_EXPERIMENT
from rag_loop.settings import Settings

log = logging.getLogger(__name__)


class DatasetParts(Protocol):
    """What building a training set uses."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ChromaStore
    embedders: EmbedderPool  # by version: the base and the loop's fine-tuned models
    outbox: Outbox


STAT_KEYS = (
    "relevant_labels",
    "not_relevant_labels",
    "pointer_votes",
    "pointers_to_unknown_documents",
    "correction_votes",
    "thumbs_up_votes",
    "thumbs_down_votes",
    "conflicting_labels_dropped",
    "leak_excluded_queries",
    "queries_without_positive",
    "positives_missing_text",
    "associated_questions",
)


def normalise(text: str) -> str:
    """The form queries are compared in: Unicode-normalised, case-folded, punctuation
    dropped, whitespace collapsed ("What's  the FEE?" == "whats the fee")."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return re.sub(r"\s+", " ", text).strip()


def is_heldout(normalised_query: str, share: float) -> bool:
    digest = hashlib.sha256(normalised_query.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def golden_queries(paths: list[Path]) -> set[str]:
    """The normalised questions of every configured golden set that exists."""
    out: set[str] = set()
    for path in paths:
        if path.is_file():
            out.update(normalise(item.query) for item in load_golden(path).items)
        else:
            log.warning("golden set %s does not exist; its questions cannot be guarded", path)
    return out


@dataclass
class _Query:
    text: str  # as first asked
    interaction_ids: list[str] = field(default_factory=list)
    asked_at: str = ""  # the latest ask's time (ISO 8601), which expansion caps prefer
    votes: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # chunk -> +/-
    explicit_negatives: set[str] = field(default_factory=set)


@dataclass
class BuiltSet:
    training_set_id: int
    content_hash: str
    path: Path
    heldout_path: Path | None
    n_examples: int
    n_queries: int
    n_heldout: int
    stats: dict[str, Any]
    created: bool  # False: the same set existed already


def build_training_set(
    services: DatasetParts, index: IndexVersion, *, until: Any = None, actor: str = "loop"
) -> BuiltSet:
    """Build (or find) the training set for the feedback so far, mining from `index`."""
    settings = services.settings.training
    queries, stats = _collect(services, index, until)
    guarded = golden_queries(services.settings.evaluation.golden_sets)

    train: dict[str, _Query] = {}
    heldout: dict[str, _Query] = {}
    for key, query in queries.items():
        if key in guarded:
            stats["leak_excluded_queries"] += 1
            continue
        (heldout if is_heldout(key, settings.holdout_share) else train)[key] = query

    # decide the labels: majority of votes, ties dropped
    def decided(query: _Query) -> tuple[list[str], list[str]]:
        positives = sorted(c for c, v in query.votes.items() if v > 0)
        negatives = sorted(c for c, v in query.votes.items() if v < 0)
        stats["conflicting_labels_dropped"] += sum(1 for v in query.votes.values() if v == 0)
        return positives, negatives

    chunk_rows = _chunk_texts(services, queries)
    examples: list[dict[str, Any]] = []
    train_items = sorted(train.items())
    decided_train = [(key, q, *decided(q)) for key, q in train_items]
    mined = _mine(services, index, [(q.text, pos) for _, q, pos, _ in decided_train], chunk_rows)
    rng = random.Random(settings.seed)
    all_chunk_ids = sorted(chunk_rows)
    for (_key, query, positives, negatives), mined_for_query in zip(
        decided_train, mined, strict=True
    ):
        if not positives:
            stats["queries_without_positive"] += 1
            continue
        positive_docs = {chunk_rows[c]["document_id"] for c in positives if c in chunk_rows}
        pool = [c for c in negatives if c in chunk_rows]
        pool += [c for c in mined_for_query if c not in pool]
        pool = [c for c in pool if chunk_rows[c]["document_id"] not in positive_docs]
        if not pool and settings.hard_negatives:
            spare = [c for c in all_chunk_ids if chunk_rows[c]["document_id"] not in positive_docs]
            pool = rng.sample(spare, min(len(spare), settings.hard_negatives))
        chosen = pool[: settings.hard_negatives]
        for positive in positives:
            if positive not in chunk_rows:
                stats["positives_missing_text"] += 1
                continue
            example: dict[str, Any] = {
                "anchor": query.text,
                "positive": chunk_rows[positive]["input"],
                "positive_chunk_id": positive,
                "negative_chunk_ids": chosen,
                "interaction_ids": query.interaction_ids,
                "asked_at": query.asked_at,
            }
            if settings.hard_negatives and chosen:
                # every row needs the same number of negatives: repeat the last one
                padded = (chosen + chosen[-1:] * settings.hard_negatives)[: settings.hard_negatives]
                for n, chunk_id in enumerate(padded, start=1):
                    example[f"negative_{n}"] = chunk_rows[chunk_id]["input"]
            examples.append(example)
    if settings.hard_negatives and any("negative_1" not in e for e in examples):
        examples = [e for e in examples if "negative_1" in e]
    _mark_validation(examples, settings.validation_share)
    associated: list[dict[str, Any]] = []
    if settings.expand_documents and settings.associate_unrated:
        associated = _associations(services, until, set(queries) | guarded)
        associated = [a for a in associated if not is_heldout(a.pop("key"), settings.holdout_share)]
        stats["associated_questions"] = len(associated)

    heldout_rows = []
    for key, query in sorted(heldout.items()):
        positives, _ = decided(query)
        docs = sorted({chunk_rows[c]["document_id"] for c in positives if c in chunk_rows})
        if docs:
            heldout_rows.append({"id": key[:120], "question": query.text, "document_ids": docs})

    rules = settings.model_dump(mode="json")
    rules["golden_sets"] = [str(p) for p in services.settings.evaluation.golden_sets]
    canonical = json.dumps(
        {"examples": examples + associated, "heldout": heldout_rows, "rules": rules},
        sort_keys=True,
        ensure_ascii=False,
    )
    content_hash = hashlib.sha256(canonical.encode()).hexdigest()
    stats.update(
        train_queries=len(train),
        heldout_queries=len(heldout_rows),
        examples=len(examples),
    )

    with services.sessions() as session:
        existing = session.scalar(
            select(TrainingSet).where(TrainingSet.content_hash == content_hash)
        )
        if existing is not None:
            return BuiltSet(
                existing.id,
                content_hash,
                Path(existing.path),
                Path(existing.heldout_path) if existing.heldout_path else None,
                existing.n_examples,
                existing.n_queries,
                existing.n_heldout,
                existing.stats,
                created=False,
            )

    folder = services.settings.data_dir / "training" / content_hash[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    _write_jsonl(path, examples + associated)
    heldout_path = None
    if heldout_rows:
        heldout_path = folder / "heldout.jsonl"
        _write_jsonl(heldout_path, heldout_rows)
    interaction_ids = sorted({i for q in queries.values() for i in q.interaction_ids})
    with transaction(services.sessions) as session:
        row = TrainingSet(
            content_hash=content_hash,
            path=str(path),
            heldout_path=str(heldout_path) if heldout_path else None,
            n_examples=len(examples),
            n_queries=len(train),
            n_heldout=len(heldout_rows),
            stats=dict(stats),
            rules=rules,
            interaction_ids=interaction_ids,
        )
        session.add(row)
        session.flush()
        set_id = row.id
        _log_to_mlflow(session, set_id, content_hash, path, heldout_path, stats, rules)
    services.outbox.flush_quietly()
    return BuiltSet(
        set_id,
        content_hash,
        path,
        heldout_path,
        len(examples),
        len(train),
        len(heldout_rows),
        dict(stats),
        created=True,
    )


def _mark_validation(examples: list[dict[str, Any]], share: float) -> None:
    """Each example's `part`: "validation" for the queries a second hash puts below `share`
    (at least one query once there are two), "fit" for the rest. Training fits on the fit
    part and picks its epochs and fusion weight on the validation part; the gate's
    held-out queries are never among either."""
    keys = sorted({normalise(e["anchor"]) for e in examples}, key=_validation_draw)
    chosen = {k for k in keys if _validation_draw(k) < share}
    if not chosen and len(keys) >= 2 and share > 0:
        chosen = {keys[0]}
    for example in examples:
        example["part"] = "validation" if normalise(example["anchor"]) in chosen else "fit"


def _validation_draw(normalised_query: str) -> float:
    digest = hashlib.sha256(f"validation\x00{normalised_query}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _collect(
    services: DatasetParts, index: IndexVersion, until: Any
) -> tuple[dict[str, _Query], defaultdict[str, int]]:
    """Votes per normalised query from every interaction with feedback."""
    stats: defaultdict[str, int] = defaultdict(int)
    for key in STAT_KEYS:  # a stable schema: every count is there, zero or not
        stats[key] = 0
    settings = services.settings.training
    with services.sessions() as session:
        events_query = select(FeedbackEvent).order_by(FeedbackEvent.id)
        if until is not None:
            events_query = events_query.where(FeedbackEvent.created_at <= until)
        events: dict[str, list[FeedbackEvent]] = defaultdict(list)
        for event in session.scalars(events_query):
            events[event.interaction_id].append(event)
        corrections: dict[str, list[str]] = defaultdict(list)
        for interaction_id, chunk_id in session.execute(
            select(Correction.interaction_id, Correction.chunk_id).where(
                Correction.status == "approved", Correction.chunk_id.is_not(None)
            )
        ):
            if chunk_id:
                corrections[interaction_id].append(chunk_id)
        ids = sorted(events)
        interactions: dict[str, Interaction] = {}
        shown: dict[str, list[Retrieval]] = defaultdict(list)
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            for i in session.scalars(
                select(Interaction).where(Interaction.id.in_(batch), Interaction.status == "ok")
            ):
                interactions[i.id] = i
            for r in session.scalars(select(Retrieval).where(Retrieval.interaction_id.in_(batch))):
                shown[r.interaction_id].append(r)

    queries: dict[str, _Query] = {}
    pointed_docs: list[tuple[_Query, str]] = []
    for interaction_id in ids:
        interaction = interactions.get(interaction_id)
        if interaction is None:
            continue
        key = normalise(interaction.query)
        if not key:
            continue
        query = queries.setdefault(key, _Query(interaction.query))
        query.interaction_ids.append(interaction_id)
        query.asked_at = max(query.asked_at, interaction.created_at.isoformat())
        labels = fold(events[interaction_id])  # in id order: the latest label wins
        thumb = labels.thumb
        for chunk_id in labels.pointed_chunks:
            query.votes[chunk_id] += 1
            stats["pointer_votes"] += 1
        pointed_docs.extend((query, document_id) for document_id in labels.pointed_documents)
        for chunk_id, relevant in labels.chunks.items():
            query.votes[chunk_id] += 1 if relevant else -1
            stats["relevant_labels" if relevant else "not_relevant_labels"] += 1
            if not relevant:
                query.explicit_negatives.add(chunk_id)
        for chunk_id in corrections.get(interaction_id, []):
            query.votes[chunk_id] += 1
            stats["correction_votes"] += 1
        if thumb in ("up", "down") and settings.thumbs_up_positive:
            rated = built_on(
                interaction.cited_ranks, {r.rank: r.chunk_id for r in shown[interaction_id]}
            )
            if rated is not None:
                query.votes[rated] += 1 if thumb == "up" else -1
                stats["thumbs_up_votes" if thumb == "up" else "thumbs_down_votes"] += 1
    if pointed_docs:
        embedder = services.embedders.get(index.embedder_version)
        vectors = embedder.embed_queries([q.text for q, _ in pointed_docs])
        for (query, document_id), vector in zip(pointed_docs, vectors, strict=True):
            hits = services.store.query(
                index.collection_name, vector, 1, {"document_id": document_id}
            )
            if hits:
                query.votes[hits[0].chunk_id] += 1
                stats["pointer_votes"] += 1
            else:
                stats["pointers_to_unknown_documents"] += 1
    return queries, stats


def _associations(services: DatasetParts, until: Any, known: set[str]) -> list[dict[str, Any]]:
    """Query association: every answered question without feedback, paired with the chunk
    its answer was built on (the first citation, else the first chunk shown), once per
    normalised question (its latest answer) and never for a question in `known` (one with
    feedback, whose votes decide, or a golden question). A row each, `part` "associated",
    with the normalised question as `key` for the held-out split (the caller drops it)."""
    rated = select(FeedbackEvent.interaction_id)
    asked = select(
        Interaction.id, Interaction.query, Interaction.cited_ranks, Interaction.created_at
    ).where(Interaction.status == "ok")
    if until is not None:  # the snapshot: feedback after it is not known yet, as in `_collect`
        rated = rated.where(FeedbackEvent.created_at <= until)
        asked = asked.where(Interaction.created_at <= until)
    asked = asked.where(Interaction.id.not_in(rated)).order_by(
        Interaction.created_at, Interaction.id
    )
    latest: dict[str, tuple[str, str, list[int], str]] = {}
    with services.sessions() as session:
        for interaction_id, text, cited, created_at in session.execute(asked):
            key = normalise(text)
            if key and key not in known:
                latest[key] = (
                    interaction_id,
                    text,
                    [int(r) for r in cited or []],
                    created_at.isoformat(),
                )
        shown: dict[str, dict[int, str]] = defaultdict(dict)
        ids = sorted(interaction_id for interaction_id, _, _, _ in latest.values())
        ranks = {built_on_rank(cited) for _, _, cited, _ in latest.values()}
        for start in range(0, len(ids), 500):
            for interaction_id, rank, chunk_id in session.execute(
                select(Retrieval.interaction_id, Retrieval.rank, Retrieval.chunk_id).where(
                    Retrieval.interaction_id.in_(ids[start : start + 500]),
                    Retrieval.rank.in_(ranks),  # only the ranks an answer was built on
                )
            ):
                shown[interaction_id][rank] = chunk_id
    rows = []
    for key, (interaction_id, text, cited, asked_at) in sorted(latest.items()):
        positive = built_on(cited, shown[interaction_id])
        if positive is not None:
            rows.append(
                {
                    "key": key,
                    "anchor": text,
                    "positive_chunk_id": positive,
                    "part": ASSOCIATED,
                    "asked_at": asked_at,
                }
            )
    return rows


def built_on_rank(cited_ranks: list[int] | None) -> int:
    """The rank of the chunk an answer was built on: its first citation, else the first
    chunk shown."""
    return int(cited_ranks[0]) if cited_ranks else 1


def built_on(cited_ranks: list[int] | None, shown: dict[int, str]) -> str | None:
    """The chunk an answer was built on (`built_on_rank`); None when that rank was not
    recorded (no guess). A thumb is a vote on this chunk, and query association pairs an
    unrated question with it. `shown` maps each rank of the answer's retrieval to its
    chunk id."""
    return shown.get(built_on_rank(cited_ranks))


def _chunk_texts(services: DatasetParts, queries: dict[str, _Query]) -> dict[str, dict[str, str]]:
    """What the embedder sees for every chunk a vote names (title + text), and its document."""
    wanted = sorted({c for q in queries.values() for c in q.votes})
    out: dict[str, dict[str, str]] = {}
    with services.sessions() as session:
        for start in range(0, len(wanted), 500):
            for chunk_id, document_id, text, title in session.execute(
                select(Chunk.id, Chunk.document_id, Chunk.text, Document.title)
                .join(Document, Document.id == Chunk.document_id)
                .where(Chunk.id.in_(wanted[start : start + 500]))
            ):
                out[chunk_id] = {
                    "document_id": document_id,
                    "input": embedding_input(title, text),
                }
    return out


def _mine(
    services: DatasetParts,
    index: IndexVersion,
    queries: list[tuple[str, list[str]]],
    chunk_rows: dict[str, dict[str, str]],
) -> list[list[str]]:
    """Hard negatives from the serving index for each (query, positives); adds the texts
    of the chunks it returns to `chunk_rows`."""
    settings = services.settings.training
    if not queries or not settings.hard_negatives:
        return [[] for _ in queries]
    embedder = services.embedders.get(index.embedder_version)
    vectors = embedder.embed_queries([q for q, _ in queries])
    out: list[list[str]] = []
    for (_query, positives), vector in zip(queries, vectors, strict=True):
        hits = services.store.query(index.collection_name, vector, settings.mine_depth)
        by_id = {h.chunk_id: h for h in hits}
        positive_docs = {chunk_rows[c]["document_id"] for c in positives if c in chunk_rows}
        positive_scores = [by_id[c].score for c in positives if c in by_id]
        ceiling = (
            min(positive_scores) * settings.mine_max_relative_score if positive_scores else None
        )
        chosen = []
        for hit in hits:
            if hit.chunk_id in positives or hit.document_id in positive_docs:
                continue
            if ceiling is not None and hit.score > ceiling:
                continue
            chosen.append(hit.chunk_id)
            chunk_rows.setdefault(
                hit.chunk_id,
                {"document_id": hit.document_id, "input": embedding_input(hit.title, hit.text)},
            )
            if len(chosen) >= settings.hard_negatives:
                break
        out.append(chosen)
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_lines_whole(
        path, (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    )


def _log_to_mlflow(
    session: Session,
    set_id: int,
    content_hash: str,
    path: Path,
    heldout_path: Path | None,
    stats: dict[str, Any],
    rules: dict[str, Any],
) -> None:
    """The training set's MLflow run, through the outbox: its files as artifacts and its
    (anchor, positive) pairs as a dataset input, read from the content-addressed files when
    the entry is applied."""
    files = {"train.jsonl": str(path)}
    if heldout_path is not None:
        files["heldout.jsonl"] = str(heldout_path)
    outbox.log_run(
        session,
        TRAINING_EXPERIMENT,
        f"training-set-{content_hash[:12]}",
        params={"content_hash": content_hash, **{f"rules.{k}": v for k, v in rules.items()}},
        metrics={k: float(v) for k, v in stats.items()},
        tags={"rag_loop.kind": "training_set", "rag_loop.training_set": content_hash},
        artifact_files=files,
        record=("training_sets", set_id),
        dataset={
            "rows_from": str(path),
            "fields": ["anchor", "positive"],
            "name": f"feedback-{content_hash[:12]}",
            "digest": content_hash[:36],
            "source": str(path),
            "context": "training",
        },
    )
