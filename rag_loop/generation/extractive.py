"""A deterministic answerer without an LLM: it quotes the best sentences and cites them.

It is a real implementation of the Generator protocol (the default backend). It is a plain
function, not a LangChain runnable: with no model to call, a chain adds nothing but about a
millisecond of callback and signature bookkeeping to every answer (measured).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from rag_loop.generation.base import Generation, cited_ranks
from rag_loop.generation.prompts import template_version
from rag_loop.hits import Hit

SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    (
        "a an and are as at be by can do does for from how i if in is it its my of on or our "
        "should so that the their there this to was what when where which who why will with "
        "you your me we us"
    ).split()
)
NO_ANSWER = "I could not find an answer to that in the documents."
ALGORITHM = "sentence overlap, rank tie-break, v1"


def _terms(text: str) -> set[str]:
    return {w.rstrip("s") for w in WORD.findall(text.lower()) if w not in STOPWORDS}


@lru_cache(maxsize=4096)
def _sentences(text: str) -> tuple[tuple[int, str, frozenset[str]], ...]:
    """A chunk's sentences with their positions and terms. Cached by text: the same chunks
    are retrieved again and again, and splitting them was most of an answer's cost."""
    found = []
    for position, sentence in enumerate(SENTENCE.split(text)):
        sentence = sentence.strip().lstrip("#-* ").strip()
        if len(sentence) >= 3:
            found.append((position, sentence, frozenset(_terms(sentence))))
    return tuple(found)


def extract_answer(question: str, sources: Sequence[Hit], max_sentences: int) -> str:
    query_terms = _terms(question)
    scored: list[tuple[float, int, int, str]] = []
    for rank, hit in enumerate(sources, start=1):
        for position, sentence, terms in _sentences(hit.text):
            overlap = len(query_terms & terms)
            # earlier sources and earlier sentences win ties; the top source gets a bonus
            score = overlap + (0.5 if rank == 1 else 0.0) - 0.01 * position
            if overlap or rank == 1:
                scored.append((score, rank, position, sentence))
    if not scored:
        return NO_ANSWER
    best = sorted(scored, key=lambda s: (-s[0], s[1], s[2]))[:max_sentences]
    best.sort(key=lambda s: (s[1], s[2]))
    return " ".join(f"{sentence} [{rank}]" for _, rank, _, sentence in best)


class ExtractiveGenerator:
    def __init__(self, max_sentences: int = 3) -> None:
        self.max_sentences = max_sentences
        self.name = "extractive"
        self.prompt_version = template_version("extractive", ALGORITHM, str(max_sentences))

    def generate(self, question: str, sources: Sequence[Hit]) -> Generation:
        text = extract_answer(question, sources, self.max_sentences)
        return Generation(text=text, cited_ranks=cited_ranks(text, len(sources)))
