"""Prompt templates. A template's version is a hash of its content, logged with every answer."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from langchain_core.prompts import ChatPromptTemplate

from rag_loop.hits import Hit

ANSWER_SYSTEM = (
    "You answer questions using only the numbered sources below. Cite the sources you use "
    "as [1], [2]. If the sources do not contain the answer, say you do not know. A source "
    'whose title begins with "Correction:" was approved by a reviewer: when it contradicts '
    "another source, the correction is right and the other source is out of date.\n\n"
    "Sources:\n{sources}"
)
ANSWER_HUMAN = "{question}"


def answer_prompt() -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages([("system", ANSWER_SYSTEM), ("human", ANSWER_HUMAN)])


def template_version(name: str, *parts: str) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:12]
    return f"{name}@{digest}"


ANSWER_PROMPT_VERSION = template_version("rag-answer", ANSWER_SYSTEM, ANSWER_HUMAN)


def format_sources(hits: Sequence[Hit]) -> str:
    return "\n\n".join(f"[{rank}] {hit.title}\n{hit.text}" for rank, hit in enumerate(hits, 1))
