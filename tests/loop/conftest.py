"""The loop's fixtures: the sample corpus, its questions split into a golden set (guarded,
never trained on) and user questions replayed with a seeded simulated user."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rag_loop.corpus.ingest import ingest
from rag_loop.feedback.service import submit_feedback
from rag_loop.feedback.simulated import SimulatedUser
from rag_loop.interactions.ask import ask
from rag_loop.services import Services
from rag_loop.settings import Settings
from tests.conftest import CORPUS, QUESTIONS

GOLDEN_SHARE = 30  # the first 30 sample questions are the golden set


def questions() -> list[dict[str, Any]]:
    return [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]


@pytest.fixture
def golden_path(tmp_path: Path) -> Path:
    path = tmp_path / "golden.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions()[:GOLDEN_SHARE]))
    return path


# small and fast: one epoch, one hard negative, short sequences; no validation split, so
# training always offers its encoder to the gate (the tests force the gate's branch)
FAST_TRAINING = {
    "validation_share": 0.0,
    "epochs": 1,
    "batch_size": 16,
    "hard_negatives": 1,
    "max_seq_length": 128,
    "min_examples": 4,
}


@pytest.fixture
def loop_services(
    make_settings: Callable[..., Settings], embedder: Any, golden_path: Path
) -> Iterator[Callable[..., Services]]:
    made: list[Services] = []

    def factory(**overrides: Any) -> Services:
        values: dict[str, Any] = {
            "evaluation": {"golden_sets": [str(golden_path)]},
            "training": FAST_TRAINING,
            "loop": {"auto": False},
        }
        for key, value in overrides.items():
            values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
        services = Services.from_settings(make_settings(**values), embedder=embedder)
        made.append(services)
        return services

    yield factory
    for services in made:
        services.close()


def replay(
    services: Services,
    items: list[dict[str, Any]],
    *,
    seed: int = 0,
    noise: float = 0.0,
    rewrite: Callable[[str], str] = lambda q: q,
) -> list[str]:
    """Ask every question and send the simulated user's feedback; returns interaction ids."""
    user = SimulatedUser(seed=seed, label_noise=noise, pointer_share=1.0)
    ids = []
    for item in items:
        answer = ask(services, rewrite(item["question"]), client="test")
        feedback = user.feedback(
            answer.interaction_id, answer.feedback_token, answer.sources, set(item["document_ids"])
        )
        assert feedback is not None  # this user answers every time
        submit_feedback(services, feedback, actor="simulated-user")
        ids.append(answer.interaction_id)
    return ids


@pytest.fixture
def with_feedback(loop_services: Callable[..., Services]) -> Iterator[Callable[..., Services]]:
    """Services with the corpus ingested and every user question asked and rated."""

    def factory(**overrides: Any) -> Services:
        services = loop_services(**overrides)
        ingest(services, CORPUS, actor="test")
        replay(services, questions()[GOLDEN_SHARE:])
        return services

    yield factory
