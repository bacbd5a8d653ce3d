"""What one answer's feedback says, folded from its events: the one definition of "the
latest label wins", used by lineage, export, training sets, live metrics (shadow mode and
the rollback watch), evaluation references and the report.

For one interaction, in event order:

- the latest thumb wins;
- the latest label of each chunk wins (relevant, then not relevant: not relevant);
- a source pointer names a chunk or a document that answers the question (each one
  counts; pointers are not labels and are never undone by one);
- comments are kept in order.

Interactions of the same question are folded one by one; how their folds combine (votes
in a training set, say) is the consumer's rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol


class FeedbackEventLike(Protocol):
    """A feedback event row, or any row with these columns (a Core select of them)."""

    kind: str
    thumb: str | None
    chunk_id: str | None
    relevant: bool | None
    document_id: str | None


@dataclass
class Labels:
    thumb: str | None = None
    chunks: dict[str, bool] = field(default_factory=dict)  # chunk id -> its latest label
    pointed_chunks: list[str] = field(default_factory=list)
    pointed_documents: list[str] = field(default_factory=list)

    @property
    def relevant_chunks(self) -> list[str]:
        return [chunk for chunk, relevant in self.chunks.items() if relevant]

    @property
    def not_relevant_chunks(self) -> list[str]:
        return [chunk for chunk, relevant in self.chunks.items() if not relevant]

    def as_dict(self) -> dict[str, Any]:
        """The shape of an interaction's `labels` in lineage and export."""
        return {"thumb": self.thumb, "chunk_labels": dict(self.chunks)}


def fold(events: Iterable[FeedbackEventLike]) -> Labels:
    """Fold one interaction's events, given in the order they were written (by id)."""
    labels = Labels()
    for event in events:
        if event.kind == "thumb" and event.thumb:
            labels.thumb = event.thumb
        elif event.kind == "chunk_label" and event.chunk_id:
            labels.chunks.pop(event.chunk_id, None)  # re-labelled: it moves to the end
            labels.chunks[event.chunk_id] = bool(event.relevant)
        elif event.kind == "source_pointer":
            if event.chunk_id:
                labels.pointed_chunks.append(event.chunk_id)
            elif event.document_id:
                labels.pointed_documents.append(event.document_id)
    return labels


def fold_by_interaction(events: Iterable[Any]) -> dict[str, Labels]:
    """Events of several interactions (each with `interaction_id`), in id order."""
    grouped: dict[str, list[Any]] = {}
    for event in events:
        grouped.setdefault(event.interaction_id, []).append(event)
    return {interaction_id: fold(found) for interaction_id, found in grouped.items()}
