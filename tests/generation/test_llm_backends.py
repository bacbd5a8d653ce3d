"""The LLM generator backends against a real model: SmolLM2-135M through llama.cpp, once
behind llama_cpp.server's OpenAI-compatible API (backend `openai`) and once in-process
(backend `llamacpp`). The answers are whatever the model says; the tests check the
plumbing: a logged interaction with the right versions, and errors mapped to 502."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from rag_loop.api import create_app
from rag_loop.corpus.ingest import ingest
from rag_loop.db.models import Interaction
from rag_loop.generation.prompts import ANSWER_PROMPT_VERSION
from rag_loop.interactions.ask import ask
from rag_loop.services import Services
from rag_loop.settings import Settings
from tests.conftest import CORPUS, LiveServer, assert_error_shape

pytestmark = [pytest.mark.llm, pytest.mark.slow]


def test_openai_backend_answers_through_llama_cpp_server(
    make_settings: Callable[..., Settings], embedder: Any, llama_server: str
) -> None:
    settings = make_settings(
        generator={"backend": "openai", "base_url": llama_server, "max_tokens": 48}
    )
    svc = Services.from_settings(settings, embedder=embedder)
    try:
        ingest(svc, CORPUS, actor="test")
        with (
            LiveServer(create_app(settings, svc)) as live,
            httpx.Client(base_url=live.url, timeout=120) as client,
        ):
            response = client.post("/v1/ask", json={"query": "What are the support chat hours?"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["answer"].strip()
            assert body["versions"]["generator"] == "openai:SmolLM2-135M-Instruct"
            assert body["versions"]["prompt_version"] == ANSWER_PROMPT_VERSION
        with svc.sessions() as session:
            row = session.get(Interaction, body["interaction_id"])
            assert row is not None and row.status == "ok"
            assert row.answer == body["answer"]
            assert row.latency_ms["generate"] > 0
            assert len(row.retrievals) == len(body["sources"]) == 5
    finally:
        svc.close()


def test_openai_backend_maps_a_refused_prompt_to_502_and_logs_it(
    make_settings: Callable[..., Settings], embedder: Any, llama_server: str
) -> None:
    """Every chunk of the corpus as sources overflows the server's 4,096-token context: it
    answers HTTP 400, which is the upstream's fault from the caller's view: 502, and the
    interaction is recorded as an error with all its retrievals."""
    settings = make_settings(generator={"backend": "openai", "base_url": llama_server})
    svc = Services.from_settings(settings, embedder=embedder)
    try:
        ingest(svc, CORPUS, actor="test")
        with (
            LiveServer(create_app(settings, svc)) as live,
            httpx.Client(base_url=live.url, timeout=120) as client,
        ):
            response = client.post(
                "/v1/ask", json={"query": "Tell me everything about the battery.", "top_k": 100}
            )
        error = assert_error_shape(response, 502, "upstream_error")
        assert "HTTP 400" in error["message"]
        interaction_id = error["details"][-1]["interaction_id"]
        with svc.sessions() as session:
            row = session.get(Interaction, interaction_id)
            assert row is not None and row.status == "error" and row.answer is None
            n_chunks = svc.store.count(row.collection_name)
            assert n_chunks > 40 and len(row.retrievals) == n_chunks
    finally:
        svc.close()


def test_llamacpp_backend_answers_in_process(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    settings = make_settings(generator={"backend": "llamacpp", "max_tokens": 48})
    svc = Services.from_settings(settings, embedder=embedder)
    try:
        ingest(svc, CORPUS, actor="test")
        result = ask(svc, "How do I pause my subscription?")
        assert result.answer.strip()
        assert result.versions["generator"] == "llamacpp:SmolLM2-135M-Instruct.Q4_1"
        with svc.sessions() as session:
            row = session.get(Interaction, result.interaction_id)
            assert row is not None and row.status == "ok" and row.answer == result.answer
    finally:
        svc.close()


def test_llamacpp_backend_refuses_a_missing_model_file(
    make_settings: Callable[..., Settings], embedder: Any, tmp_path: Any
) -> None:
    from rag_loop.errors import InvalidInput

    settings = make_settings(
        generator={"backend": "llamacpp", "model_path": str(tmp_path / "missing.gguf")}
    )
    with pytest.raises(InvalidInput, match="does not exist"):
        Services.from_settings(settings, embedder=embedder)
