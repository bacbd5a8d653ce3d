"""A chat conversation -> the one question the ask path answers.

The latest user message is the question. A short message that refers back ("and how much is
it?", "what about the other one?") cannot be retrieved for on its own, so up to
`chat.context_turns` earlier user turns are put before it; the combined text is what is
retrieved with, answered and logged as the interaction's query (the training loop learns
from exactly what retrieval saw). System and assistant turns are not retrieved with.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag_loop.errors import InvalidInput
from rag_loop.settings import ChatSettings

WORD = re.compile(r"[\w']+")
# words by which a message points at something said before
REFERRING = frozenset(
    "it its it's that this these those they them their he she him her his one ones "
    "there same other also and too then what's".split()
)


@dataclass(frozen=True)
class Turn:
    role: str
    text: str


def is_followup(text: str, max_words: int) -> bool:
    words = [w.lower() for w in WORD.findall(text)]
    return 0 < len(words) <= max_words and any(w in REFERRING for w in words)


def question_from(turns: Sequence[Turn], settings: ChatSettings) -> str:
    """The text to retrieve with and answer for."""
    users = [t.text.strip() for t in turns if t.role == "user" and t.text.strip()]
    if not users or turns[-1].role != "user":
        raise InvalidInput("the conversation must end with a user message that has text")
    latest = users[-1]
    if settings.context_turns and is_followup(latest, settings.followup_max_words):
        earlier = users[:-1][-settings.context_turns :]
        return "\n".join([*earlier, latest])
    return latest
