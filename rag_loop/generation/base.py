"""The generator protocol: (question, ranked sources) -> answer with citations."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from rag_loop.hits import Hit

CITATION = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True)
class Generation:
    text: str
    cited_ranks: list[int] = field(default_factory=list)


@runtime_checkable
class Generator(Protocol):
    name: str  # backend:model, logged with every answer
    prompt_version: str

    def generate(self, question: str, sources: Sequence[Hit]) -> Generation: ...


def cited_ranks(text: str, n_sources: int) -> list[int]:
    """The [n] citations in an answer that point at a real source, in order of first use."""
    ranks: list[int] = []
    for match in CITATION.finditer(text):
        rank = int(match.group(1))
        if 1 <= rank <= n_sources and rank not in ranks:
            ranks.append(rank)
    return ranks
