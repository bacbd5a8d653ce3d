"""Replay a golden set as a simulated user: every question asked through the real serving
path, the user's feedback sent through the real feedback service (`rag-loop demo replay`)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from rag_loop.errors import InvalidInput
from rag_loop.evaluation.datasets import load_golden
from rag_loop.feedback.service import FeedbackParts, submit_feedback
from rag_loop.feedback.simulated import SimulatedUser
from rag_loop.interactions.ask import AskParts, ask


class ReplayParts(AskParts, FeedbackParts, Protocol):
    """What a replay uses: asking and taking feedback."""


def replay(
    services: ReplayParts, path: Path, user: SimulatedUser, *, actor: str = "simulated-user"
) -> int:
    """Ask every question of a question file (the golden-set format, with `document_ids`)
    and send the user's feedback (when it gives any) through the real services; returns
    how many questions were asked."""
    dataset = load_golden(path)
    if dataset.id_level != "document":
        raise InvalidInput(f"{path} must name document_ids for the simulated user")
    for item in dataset.items:
        answer = ask(services, item.query, client="simulated-user")
        feedback = user.feedback(
            answer.interaction_id,
            answer.feedback_token,
            answer.sources,
            set(item.reference_ids),
            answer.cited_ranks,
        )
        if feedback is not None:
            submit_feedback(services, feedback, actor=actor)
    return len(dataset.items)
