"""The two simulated users of the loop benchmark: what each sends, seeded."""

from __future__ import annotations

from typing import Any

import pytest

from rag_loop.feedback.simulated import SimulatedUser


def _sources(relevant_at: int | None, n: int = 10) -> list[dict[str, Any]]:
    return [
        {"rank": r, "chunk_id": f"c{r}", "document_id": "right" if r == relevant_at else f"d{r}"}
        for r in range(1, n + 1)
    ]


def _replay(user: SimulatedUser, n: int, relevant_at: int | None, cited: list[int]) -> list[Any]:
    return [
        user.feedback(f"i{i}", "token", _sources(relevant_at), {"right"}, cited) for i in range(n)
    ]


def test_the_generous_user_answers_every_time_and_labels_the_first_three() -> None:
    sent = _replay(SimulatedUser.generous(seed=0), 400, relevant_at=2, cited=[5])
    assert all(f is not None for f in sent)
    assert all(len(f.chunk_labels) == 3 for f in sent)
    # a thumb on the first source (not relevant here), 10% flipped
    ups = sum(f.thumb == "up" for f in sent)
    assert 20 <= ups <= 65
    labelled_right = [lab.relevant for f in sent for lab in f.chunk_labels if lab.chunk_id == "c2"]
    assert 0.8 <= sum(labelled_right) / len(labelled_right) <= 0.97
    assert not any(f.source for f in sent)  # rank 2 was read: no miss, no pointer


def test_the_realistic_user_is_sparse_and_thumbs_the_first_citation() -> None:
    user = SimulatedUser.realistic(seed=1)
    sent = [f for f in _replay(user, 2000, relevant_at=4, cited=[4, 1]) if f is not None]
    assert 330 <= len(sent) <= 470  # 20% of the answers
    labelled = [f for f in sent if f.chunk_labels]
    assert 0.25 <= len(labelled) / len(sent) <= 0.42  # a third of them
    assert all(1 <= len(f.chunk_labels) <= 2 for f in labelled)
    # the first citation (rank 4) is relevant: up, except for the noise
    ups = sum(f.thumb == "up" for f in sent) / len(sent)
    assert 0.78 <= ups <= 0.92
    # what it looked at was right: no pointers
    assert not any(f.source for f in sent)

    misses = [f for f in _replay(user, 3000, relevant_at=None, cited=[1]) if f is not None]
    pointed = sum(f.source is not None for f in misses) / len(misses)
    assert 0.05 <= pointed <= 0.16  # 10% of the misses
    assert all(f.source.document_id == "right" for f in misses if f.source)


def test_a_seed_gives_the_same_feedback() -> None:
    one = _replay(SimulatedUser.realistic(seed=3), 200, relevant_at=2, cited=[1])
    two = _replay(SimulatedUser.realistic(seed=3), 200, relevant_at=2, cited=[1])
    assert one == two
    with pytest.raises(ValueError, match="generous"):
        SimulatedUser.preset("chatty")
