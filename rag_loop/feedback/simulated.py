"""Seeded simulated users who know the relevance judgements (qrels) of a data set.

After an answer a user may send feedback, through the real feedback service:

- on a share of the answers (`answer_share`) at all; the others get nothing;
- a thumb: up when the chunk it looks at is relevant. `thumb_from="first_source"` looks at
  the first shown chunk, `"first_citation"` at the chunk the answer cites first (what a
  reader of the answer checks), falling back to the first shown chunk;
- on a share of those answers (`label_share`), labels on the first shown chunks, the ones
  a person reads: `label_depth` of them (a (low, high) range draws a number per answer);
- for a share of the misses (`pointer_share`: no chunk the user looked at, labelled or
  thumbed, is relevant), a pointer to a right document;
- a share of the judgements (labels and thumbs) flipped: the noise real users bring.

Two presets are the ones the loop benchmark runs:

- `generous()`: every answer, labels on the first 3 shown chunks, a thumb on the first
  source, pointers for half of the misses, 10% noise;
- `realistic()`: feedback on 20% of answers; of those a thumb always (on the first
  citation), labels on one or two shown chunks for a third of them, a pointer for 10% of
  the misses, 15% noise.

Used by `rag-loop demo replay`, the loop benchmark and the tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

from rag_loop.feedback.schemas import ChunkLabel, FeedbackIn, SourcePointer


@dataclass
class SimulatedUser:
    seed: int = 0
    label_noise: float = 0.1  # share of judgements (labels, thumbs) flipped
    pointer_share: float = 0.5  # share of misses answered with a pointer to a right document
    label_depth: int | tuple[int, int] = 10  # chunks labelled per labelling answer
    answer_share: float = 1.0  # share of answers that get any feedback
    label_share: float = 1.0  # of those, the share that gets chunk labels
    thumb_from: Literal["first_source", "first_citation"] = "first_source"
    name: str = "custom"
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def generous(cls, seed: int = 0) -> SimulatedUser:
        return cls(seed=seed, label_noise=0.1, pointer_share=0.5, label_depth=3, name="generous")

    @classmethod
    def realistic(cls, seed: int = 0) -> SimulatedUser:
        return cls(
            seed=seed,
            label_noise=0.15,
            pointer_share=0.1,
            label_depth=(1, 2),
            answer_share=0.2,
            label_share=1 / 3,
            thumb_from="first_citation",
            name="realistic",
        )

    @classmethod
    def preset(cls, name: str, seed: int = 0) -> SimulatedUser:
        presets = {"generous": cls.generous, "realistic": cls.realistic}
        if name not in presets:
            raise ValueError(f"no simulated user {name!r}; choose one of {sorted(presets)}")
        return presets[name](seed)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _judge(self, truth: bool) -> bool:
        if self._rng.random() < self.label_noise:
            self._count("flipped_judgements")
            return not truth
        return truth

    def feedback(
        self,
        interaction_id: str,
        token: str,
        sources: list[dict[str, Any]],
        relevant: set[str],
        cited_ranks: list[int] | None = None,
    ) -> FeedbackIn | None:
        """The user's feedback on one answer, or None when this user gives none."""
        self._count("answers")
        if self._rng.random() >= self.answer_share:
            return None
        self._count("answers_with_feedback")
        labels = []
        read: list[dict[str, Any]] = []
        if self._rng.random() < self.label_share:
            depth = self.label_depth
            if isinstance(depth, tuple):
                depth = self._rng.randint(*depth)
            read = sources[:depth]
            for source in read:
                label = self._judge(source["document_id"] in relevant)
                labels.append(ChunkLabel(chunk_id=source["chunk_id"], relevant=label))
            self._count("labels")
        looked_at = sources[0] if sources else None
        if self.thumb_from == "first_citation" and cited_ranks:
            rank = cited_ranks[0]
            looked_at = next((s for s in sources if s.get("rank") == rank), looked_at)
        up = self._judge(looked_at is not None and looked_at["document_id"] in relevant)
        pointer = None
        seen = [*read, looked_at] if looked_at is not None else read
        missed = not any(s["document_id"] in relevant for s in seen)
        if missed and relevant and self._rng.random() < self.pointer_share:
            pointer = SourcePointer(document_id=self._rng.choice(sorted(relevant)))
            self._count("pointers")
        self._count("thumbs_up" if up else "thumbs_down")
        return FeedbackIn(
            interaction_id=interaction_id,
            token=token,
            idempotency_key=f"sim-{interaction_id}",
            thumb="up" if up else "down",
            chunk_labels=labels,
            source=pointer,
        )
