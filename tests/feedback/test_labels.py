"""One rule for what feedback says, on every consumer: a chunk labelled relevant and then
not relevant (and another the other way round), across two interactions of one question.

Each consumer must read the same fold (`feedback.labels`): lineage, export, the training
set's votes, live metrics (the rollback watch's labelled precision) and the references of
a production evaluation. The evaluation used to keep a chunk as a reference once it had
been labelled relevant, whatever came later."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from rag_loop.evaluation.datasets import production_window
from rag_loop.feedback.export import feedback_records
from rag_loop.feedback.labels import fold
from rag_loop.feedback.lineage import show
from rag_loop.feedback.schemas import ChunkLabel, FeedbackIn
from rag_loop.feedback.service import submit_feedback
from rag_loop.index.versions import champion
from rag_loop.interactions.ask import ask
from rag_loop.loop.live import served_stats
from rag_loop.services import Services
from rag_loop.settings import Settings
from rag_loop.training.dataset import build_training_set

QUESTION = "How do I report a stolen bike?"


def _label(services: Services, answer: Any, labels: dict[str, bool], thumb: str | None) -> None:
    submit_feedback(
        services,
        FeedbackIn(
            interaction_id=answer.interaction_id,
            token=answer.feedback_token,
            thumb=thumb,
            chunk_labels=[ChunkLabel(chunk_id=c, relevant=r) for c, r in labels.items()],
        ),
        actor="user",
    )


def test_the_latest_label_wins_on_every_consumer(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    from rag_loop.corpus.ingest import ingest
    from tests.conftest import CORPUS

    settings = make_settings(
        training={"min_examples": 1, "holdout_share": 0.0, "thumbs_up_positive": False}
    )
    services = Services.from_settings(settings, embedder=embedder)
    try:
        ingest(services, CORPUS, actor="test")
        first = ask(services, QUESTION)
        second = ask(services, QUESTION)  # the same question, asked again
        a, b = first.sources[0]["chunk_id"], first.sources[1]["chunk_id"]
        assert {a, b} <= {s["chunk_id"] for s in second.sources}
        # first answer: a relevant, then not; b not relevant, then relevant
        _label(services, first, {a: True, b: False}, "up")
        _label(services, first, {a: False, b: True}, "down")
        # second answer: the reverse
        _label(services, second, {a: False, b: True}, "down")
        _label(services, second, {a: True, b: False}, "up")
        expected = {
            first.interaction_id: {a: False, b: True},
            second.interaction_id: {a: True, b: False},
        }
        thumbs = {first.interaction_id: "down", second.interaction_id: "up"}

        # lineage
        for interaction_id, labels in expected.items():
            shown = show(services.sessions, interaction_id)["labels"]
            assert shown == {"thumb": thumbs[interaction_id], "chunk_labels": labels}

        # export
        records = {r["interaction_id"]: r for r in feedback_records(services.sessions)}
        for interaction_id, labels in expected.items():
            record = records[interaction_id]
            assert record["thumb"] == thumbs[interaction_id]
            relevant = {c["chunk_id"]: c["relevant"] for c in record["shown_chunks"]}
            assert {c: relevant[c] for c in (a, b)} == labels

        # evaluation references of a production evaluation
        items = {i.interaction_id: i for i in production_window(services.engine, 10).items}
        assert a not in items[first.interaction_id].reference_ids
        assert b in items[first.interaction_id].reference_ids
        assert a in items[second.interaction_id].reference_ids
        assert b not in items[second.interaction_id].reference_ids
        assert items[first.interaction_id].thumb == "down"

        # live metrics: the labelled precision of each answer is 1/2 (one yes, one no)
        with services.sessions() as session:
            serving = champion(session).id
        live = served_stats(services.sessions, serving, last=10)
        assert live["thumbs"] == 2 and live["thumbs_down_rate"] == 0.5
        assert live["precision"] == pytest.approx(0.5)

        # training set: one label per chunk and answer (the latest), not every event
        with services.sessions() as session:
            index = champion(session)
            session.expunge(index)
        built = build_training_set(services, index)
        assert built.stats["relevant_labels"] == 2
        assert built.stats["not_relevant_labels"] == 2
    finally:
        services.close()


def test_fold_is_the_rule() -> None:
    class Event:
        def __init__(self, kind: str, **values: Any) -> None:
            self.kind = kind
            self.thumb = values.get("thumb")
            self.chunk_id = values.get("chunk_id")
            self.relevant = values.get("relevant")
            self.document_id = values.get("document_id")

    labels = fold(
        [
            Event("chunk_label", chunk_id="x", relevant=True),
            Event("thumb", thumb="up"),
            Event("source_pointer", document_id="doc"),
            Event("chunk_label", chunk_id="y", relevant=False),
            Event("chunk_label", chunk_id="x", relevant=False),
            Event("thumb", thumb="down"),
            Event("source_pointer", chunk_id="z"),
            Event("chunk_label", chunk_id="y", relevant=True),
        ]
    )
    assert labels.thumb == "down"
    assert labels.chunks == {"x": False, "y": True}
    assert labels.relevant_chunks == ["y"] and labels.not_relevant_chunks == ["x"]
    assert labels.pointed_chunks == ["z"] and labels.pointed_documents == ["doc"]
