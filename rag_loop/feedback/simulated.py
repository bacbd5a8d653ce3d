"""A seeded simulated user who knows the relevance judgements (qrels) of a data set.

After each answer it sends what a careful user of a thumbs widget would: a label on each of
the first `label_depth` shown chunks, the ones a person reads (relevant when its document
is in the qrels), a thumb (up when the first source is relevant), and, for a share of the
answers whose read chunks held no relevant source, a pointer to a right document. A share
of the chunk labels is flipped: the noise real users bring. Used by `rag-loop demo replay`,
the loop benchmark and the tests, through the real feedback service.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from rag_loop.feedback.schemas import ChunkLabel, FeedbackIn, SourcePointer


@dataclass
class SimulatedUser:
    seed: int = 0
    label_noise: float = 0.1  # share of chunk labels flipped
    pointer_share: float = 0.5  # share of misses answered with a pointer to a right document
    label_depth: int = 10  # chunks labelled per answer: the first ones, which people read
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def feedback(
        self, interaction_id: str, token: str, sources: list[dict[str, Any]], relevant: set[str]
    ) -> FeedbackIn:
        labels = []
        read = sources[: self.label_depth]
        for source in read:
            truth = source["document_id"] in relevant
            label = truth
            if self._rng.random() < self.label_noise:
                label = not truth
                self._count("flipped_labels")
            labels.append(ChunkLabel(chunk_id=source["chunk_id"], relevant=label))
        first_ok = bool(sources) and sources[0]["document_id"] in relevant
        hit = any(s["document_id"] in relevant for s in read)
        pointer = None
        if not hit and relevant and self._rng.random() < self.pointer_share:
            pointer = SourcePointer(document_id=self._rng.choice(sorted(relevant)))
            self._count("pointers")
        self._count("thumbs_up" if first_ok else "thumbs_down")
        return FeedbackIn(
            interaction_id=interaction_id,
            token=token,
            idempotency_key=f"sim-{interaction_id}",
            thumb="up" if first_ok else "down",
            chunk_labels=labels,
            source=pointer,
        )
