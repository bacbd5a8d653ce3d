"""Drift detection on real query embeddings: a topic shift is found, an unshifted window is
not (seeded; the false-positive rate over repeated draws stays near alpha), and a drift
raises an event the loop can read."""

from __future__ import annotations

import json
import random
from collections import namedtuple
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from rag_loop.corpus.ingest import ingest
from rag_loop.db.models import DriftCheck
from rag_loop.evaluation.drift import (
    QuestionVectors,
    check_drift,
    events_since,
    mmd_permutation_test,
)
from rag_loop.feedback.schemas import FeedbackIn
from rag_loop.feedback.service import submit_feedback
from rag_loop.interactions.ask import ask
from rag_loop.services import Services
from rag_loop.settings import Settings
from tests.conftest import CORPUS, QUESTIONS

# A different topic: questions a garden centre's customers would ask.
GARDEN = [
    f"{opening} {plant} {ending}"
    for opening in ("When should I plant", "How often do I water", "Which soil suits")
    for plant in (
        "tomatoes",
        "tulip bulbs",
        "roses",
        "basil",
        "apple trees",
        "lavender",
        "strawberries",
        "hydrangeas",
        "potatoes",
        "sunflowers",
        "mint",
        "ferns",
    )
    for ending in ("in a cold climate?", "on a balcony?")
]


def kestrel_questions() -> list[str]:
    return [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines()]


def test_mmd_flags_a_topic_shift_and_rarely_flags_an_unshifted_window(embedder: Any) -> None:
    questions = kestrel_questions()
    vectors = embedder.embed_documents(questions)
    garden = embedder.embed_documents(GARDEN)
    rng = np.random.default_rng(7)
    alpha, draws = 0.05, 30
    false_positives = 0
    for draw in range(draws):
        order = rng.permutation(len(questions))
        reference, current = vectors[order[:40]], vectors[order[40:80]]
        result = mmd_permutation_test(reference, current, permutations=200, seed=draw)
        false_positives += result.p_value < alpha
    # the test's size is alpha; 30 draws put 99% of outcomes at <= 5 false positives
    assert false_positives <= 5, false_positives

    for draw in range(5):
        order = rng.permutation(len(questions))
        shifted = np.vstack([vectors[order[:20]], garden[rng.permutation(len(garden))[:20]]])
        result = mmd_permutation_test(vectors[order[40:80]], shifted, permutations=200, seed=draw)
        assert result.p_value < 0.01, result


class CountingEmbedder:
    """The real embedder, counting the texts it is given (an Embedder itself)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.texts = inner, 0
        self.name, self.version, self.dimension = inner.name, inner.version, inner.dimension

    def embed_documents(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        self.texts += len(texts)
        return self.inner.embed_documents(texts, progress=progress)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.embed_documents(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


def test_question_vectors_are_embedded_once_per_interaction(embedder: Any) -> None:
    Row = namedtuple("Row", "id query created_at")
    rows = [Row(f"i{n}", q, None) for n, q in enumerate(kestrel_questions()[:60])]
    counting, vectors = CountingEmbedder(embedder), QuestionVectors(kept=50)
    first = vectors.of(counting, rows[:40])  # a check: reference and current window
    again = vectors.of(counting, rows[20:60])  # the next: 20 of them seen already
    assert counting.texts == 60
    np.testing.assert_allclose(again[:20], first[20:40])
    direct = embedder.embed_documents([r.query for r in rows[20:60]])
    np.testing.assert_allclose(again, direct, atol=1e-5)  # batches pad differently
    vectors.of(counting, rows[:10])  # the oldest were let go (50 kept)
    assert counting.texts == 70


@pytest.fixture
def services_40(make_settings: Callable[..., Settings], embedder: Any) -> Iterator[Services]:
    """Services with drift windows of 40 questions and the sample corpus ingested."""
    settings = make_settings(drift={"window_size": 40, "min_samples": 10, "permutations": 200})
    services = Services.from_settings(settings, embedder=embedder)
    try:
        ingest(services, CORPUS, actor="test")
        yield services
    finally:
        services.close()


def test_check_drift_end_to_end_raises_an_event(services_40: Services) -> None:
    services = services_40
    questions = kestrel_questions()
    for question in questions[:40]:  # the reference window: the product's questions
        ask(services, question)
    report = check_drift(services)  # 40 vs nothing yet: split in halves, no drift
    assert not report.drifted and report.event_id is None

    def garden(questions: list[str]) -> None:
        for question in questions:  # users ask about something else entirely
            result = ask(services, question)
            submit_feedback(
                services,
                FeedbackIn.model_validate(
                    {"interaction_id": result.interaction_id, "thumb": "down"}
                ),
                actor="test",
            )

    garden(GARDEN[:40])
    report = check_drift(services, actor="test")
    data = next(c for c in report.checks if c["metric"] == "query_embedding_mmd")
    assert data["p_value"] < 0.01 and data["details"]["flagged"]
    # flagged once: raised only when the next window of new questions shows it too
    assert not data["drifted"] and data["details"]["confirmations"] == "0 of 1"
    assert not report.drifted and events_since(services.engine, "drift") == []
    thumbs = next(c for c in report.checks if c["metric"] == "thumbs_down_rate")
    assert "skipped" in thumbs["details"]  # no thumbs in the reference window
    garden(GARDEN[40:60])
    waiting = check_drift(services)  # 20 new questions: not a window yet
    assert not waiting.drifted and "awaiting 40 new questions" in str(waiting.checks[0])
    garden(GARDEN[60:72] + GARDEN[:8])
    report = check_drift(services, actor="test")  # against the same reference window
    assert report.drifted and report.event_id is not None
    events = events_since(services.engine, "drift")
    assert [e["id"] for e in events] == [report.event_id]
    assert events[0]["payload"]["checks"][0]["metric"] == "query_embedding_mmd"
    assert events_since(services.engine, "drift", after_id=report.event_id) == []
    with services.sessions() as session:
        stored = session.query(DriftCheck).filter(DriftCheck.drifted.is_(True)).all()
        assert [c.metric for c in stored] == ["query_embedding_mmd"]


def test_a_shift_that_the_next_window_does_not_confirm_raises_nothing(
    services_40: Services,
) -> None:
    services = services_40
    questions = random.Random(0).sample(kestrel_questions(), 80)  # one mix of topics
    for question in questions[:40] + GARDEN[:40]:  # a burst of other questions...
        ask(services, question)
    flagged = check_drift(services)
    assert flagged.checks[0]["details"]["flagged"] and not flagged.drifted
    for question in questions[40:80]:  # ...then the product's questions again
        ask(services, question)
    report = check_drift(services)
    assert not report.drifted and not report.checks[0]["drifted"]
    assert "pending" not in report.checks[0]["details"]
    assert events_since(services.engine, "drift") == []


def test_a_slow_shift_is_found_against_a_reference_that_stays_until_the_event(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    settings = make_settings(
        drift={
            "window_size": 20,
            "reference_windows": 2,
            "min_samples": 10,
            "permutations": 200,
            "confirm_windows": 0,
        }
    )
    services = Services.from_settings(settings, embedder=embedder)
    try:
        ingest(services, CORPUS, actor="test")
        product = random.Random(0).sample(kestrel_questions(), 98)
        for question in product[:40]:  # the reference: the first 2 x 20 questions
            ask(services, question)
        garden = iter(random.Random(1).sample(GARDEN, len(GARDEN)))
        rest = iter(product[40:])
        seen = []
        for share in (5, 10, 15, 20):  # each window a little more about gardens
            for question in [next(garden) for _ in range(share)]:
                ask(services, question)
            for question in [next(rest) for _ in range(20 - share)]:
                ask(services, question)
            report = check_drift(services)
            data = report.checks[0]
            assert (data["details"]["reference_n"], data["details"]["current_n"]) == (40, 20)
            seen.append(report.drifted)
            if report.drifted:
                break
        assert seen[-1] and not seen[0], seen  # found once the move added up
        for question in [next(garden) for _ in range(20)]:  # gardens from now on
            ask(services, question)
        after = check_drift(services).checks[0]  # only what came after the event
        assert (after["details"]["reference_n"], after["details"]["current_n"]) == (10, 10)
        assert not after["drifted"]
    finally:
        services.close()


def test_drift_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="cron"):
        Settings(evaluation={"schedule": "every day"})
    with pytest.raises(ValueError):
        Settings(drift={"alpha": 2})


def test_a_rising_thumbs_down_rate_is_concept_drift(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    settings = make_settings(
        drift={"window_size": 30, "min_samples": 10, "permutations": 100, "confirm_windows": 0}
    )
    services = Services.from_settings(settings, embedder=embedder)
    try:
        ingest(services, CORPUS, actor="test")
        # one mix of topics throughout (the question file is ordered by topic)
        questions = random.Random(0).sample(kestrel_questions(), 60)
        for n, question in enumerate(questions):
            result = ask(services, question)
            thumb = "up" if n < 30 or n % 3 == 0 else "down"  # 0% down, then 2 in 3
            submit_feedback(
                services,
                FeedbackIn.model_validate(
                    {"interaction_id": result.interaction_id, "thumb": thumb}
                ),
                actor="test",
            )
        report = check_drift(services)
        thumbs = next(c for c in report.checks if c["metric"] == "thumbs_down_rate")
        assert thumbs["reference_value"] == 0.0
        assert thumbs["current_value"] == pytest.approx(20 / 30)
        assert thumbs["drifted"] and report.drifted
        assert [
            c["metric"] for c in events_since(services.engine, "drift")[0]["payload"]["checks"]
        ] == ["thumbs_down_rate"]
    finally:
        services.close()


def test_a_metric_drop_between_production_evaluations_is_concept_drift(
    services: Services,
) -> None:
    from datetime import timedelta

    from rag_loop.db.engine import transaction
    from rag_loop.db.models import EvalRun, now_of
    from rag_loop.evaluation.drift import check_eval_metrics

    with transaction(services.sessions) as session:
        for n, (faithfulness, precision) in enumerate(((0.9, 0.5), (0.6, 0.48))):
            session.add(
                EvalRun(
                    id=f"run{n}",
                    created_at=now_of(session) + timedelta(seconds=n),
                    status="done",
                    source="production",
                    dataset="production-last-200",
                    metrics={"faithfulness": faithfulness, "id_context_precision": precision},
                )
            )
    checks = {c["metric"]: c for c in check_eval_metrics(services, services.settings.drift)}
    assert checks["faithfulness"]["drifted"] and checks["faithfulness"][
        "statistic"
    ] == pytest.approx(-0.3)
    assert not checks["id_context_precision"]["drifted"]
