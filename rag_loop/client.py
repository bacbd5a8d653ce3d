"""What a client of rag-loop reads besides the OpenAI body: the `X-Rag-Loop-*` headers of a
chat completion, and the details of an answer (interaction id, feedback token, sources) from
a LangChain message. It imports nothing of the server, so a client loads it cheaply.

LangChain's `ChatOpenAI` keeps OpenAI's fields of a completion and drops the rest, so the
`rag_loop` object of the response body never reaches the message. The same details come in
the `X-Rag-Loop-*` response headers, which `ChatOpenAI(include_response_headers=True)`
puts in `message.response_metadata["headers"]` (when streaming, on the first chunk):

    from langchain_openai import ChatOpenAI
    from rag_loop.client import answer_details

    chat = ChatOpenAI(model="rag-loop", base_url="http://localhost:8000/v1",
                      api_key="-", include_response_headers=True)
    message = chat.invoke("How do I pause my plan?")
    details = answer_details(message)
    httpx.post("http://localhost:8000/v1/feedback", json={
        "interaction_id": details.interaction_id, "token": details.feedback_token,
        "thumb": "up"})
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INTERACTION_HEADER = "X-Rag-Loop-Interaction-Id"
TOKEN_HEADER = "X-Rag-Loop-Feedback-Token"
SOURCES_HEADER = "X-Rag-Loop-Sources"  # JSON: rank, chunk_id, document_id of each source


@dataclass(frozen=True)
class AnswerDetails:
    interaction_id: str
    feedback_token: str  # for POST /v1/feedback on this interaction only
    sources: list[dict[str, Any]]  # rank, chunk_id, document_id of each chunk shown


def answer_details(message: Any) -> AnswerDetails:
    """The details of the answer in a message (or a streamed chunk) from `ChatOpenAI`
    created with `include_response_headers=True`; a ValueError if it has none."""
    metadata: Mapping[str, Any] = getattr(message, "response_metadata", None) or {}
    headers = {str(k).lower(): str(v) for k, v in (metadata.get("headers") or {}).items()}
    interaction = headers.get(INTERACTION_HEADER.lower())
    token = headers.get(TOKEN_HEADER.lower())
    if not interaction or not token:
        raise ValueError(
            "the message carries no rag-loop headers: create ChatOpenAI with "
            "include_response_headers=True (when streaming, read the first chunk)"
        )
    sources = json.loads(headers.get(SOURCES_HEADER.lower(), "[]"))
    return AnswerDetails(interaction_id=interaction, feedback_token=token, sources=sources)
