"""The OpenAI-compatible chat endpoint, driven by OpenAI's own client and LangChain's."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from rag_loop.api import create_app
from rag_loop.auth.keys import create_key
from rag_loop.db.engine import transaction
from rag_loop.db.models import FeedbackEvent, Interaction, Retrieval
from rag_loop.interactions.chat import Turn, question_from
from rag_loop.services import Services
from rag_loop.settings import ChatSettings, Settings
from tests.conftest import LiveServer, free_port, row_counts

QUESTION = "How do I pause my Kestrel subscription?"


@pytest.fixture
def live(kestrel: Services) -> Iterator[LiveServer]:
    with LiveServer(create_app(kestrel.settings, kestrel)) as server:
        yield server


@pytest.fixture
def client(live: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{live.url}/v1", api_key="not-needed", max_retries=0) as c:
        yield c


def interaction(services: Services, interaction_id: str) -> Interaction:
    with services.sessions() as session:
        row = session.get(Interaction, interaction_id)
        assert row is not None
        session.expunge(row)
        return row


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["rag-loop"]
    assert client.models.retrieve("rag-loop").owned_by == "rag-loop"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4o")
    assert caught.value.code == "model_not_found"


def test_plain_completion_is_a_logged_interaction(client: openai.OpenAI, kestrel: Services) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="rag-loop",
        messages=[
            {"role": "system", "content": "You are the Kestrel support assistant."},
            {"role": "user", "content": QUESTION},
        ],
        temperature=0.2,
    )
    completion = raw.parse()
    answer = completion.choices[0].message.content
    assert answer and completion.choices[0].finish_reason == "stop"
    extension = completion.model_extra["rag_loop"]
    interaction_id = extension["interaction_id"]
    assert completion.id == f"chatcmpl-{interaction_id}"
    assert raw.headers["x-rag-loop-interaction-id"] == interaction_id
    assert raw.headers["x-rag-loop-feedback-token"]
    header_sources = json.loads(raw.headers["x-rag-loop-sources"])
    assert [s["chunk_id"] for s in header_sources] == [s["chunk_id"] for s in extension["sources"]]
    assert "plans/pausing-your-subscription" in {s["document_id"] for s in extension["sources"]}

    row = interaction(kestrel, interaction_id)
    assert (row.query, row.answer, row.status, row.client) == (
        QUESTION,
        answer,
        "ok",
        "openai-chat",
    )
    with kestrel.sessions() as session:
        shown = session.scalars(
            select(Retrieval.chunk_id)
            .where(Retrieval.interaction_id == interaction_id)
            .order_by(Retrieval.rank)
        ).all()
    assert shown == [s["chunk_id"] for s in extension["sources"]]


def test_streaming_ends_with_the_extension_and_feedback_works(
    client: openai.OpenAI, live: LiveServer, kestrel: Services
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="rag-loop", messages=[{"role": "user", "content": QUESTION}], stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    extension = last.model_extra["rag_loop"]
    assert interaction(kestrel, extension["interaction_id"]).answer == text.strip()

    response = httpx.post(
        f"{live.url}/v1/feedback",
        json={
            "interaction_id": extension["interaction_id"],
            "token": extension["feedback_token"],
            "thumb": "down",
        },
    )
    assert response.status_code == 201, response.text
    with kestrel.sessions() as session:
        kinds = session.scalars(
            select(FeedbackEvent.kind).where(
                FeedbackEvent.interaction_id == extension["interaction_id"]
            )
        ).all()
    assert kinds == ["thumb"]


def test_langchain_chat_openai_plain_and_streaming(live: LiveServer, kestrel: Services) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model="rag-loop", base_url=f"{live.url}/v1", api_key="not-needed", max_retries=0
    )
    message = chat.invoke(QUESTION)
    assert message.content
    streamed = "".join(str(part.content) for part in chat.stream(QUESTION))
    assert streamed.strip() == str(message.content).strip()  # the extractive answer is stable
    with kestrel.sessions() as session:
        answers = session.scalars(select(Interaction.answer)).all()
    assert answers == [message.content, streamed.strip()]


def test_langchain_users_get_the_interaction_its_sources_and_the_feedback_token(
    live: LiveServer, kestrel: Services
) -> None:
    """ChatOpenAI drops the body's `rag_loop` object; with `include_response_headers=True`
    the X-Rag-Loop-* headers reach the message, and rag_loop.client reads them."""
    from langchain_openai import ChatOpenAI

    from rag_loop.client import answer_details

    chat = ChatOpenAI(
        model="rag-loop",
        base_url=f"{live.url}/v1",
        api_key="sk-not-a-rag-loop-key",  # the OpenAI SDK always sends one
        max_retries=0,
        include_response_headers=True,
    )
    message = chat.invoke(QUESTION)
    first_chunk, *_ = chat.stream(QUESTION)  # read to the end, so the stream closes
    for details in (answer_details(message), answer_details(first_chunk)):
        with kestrel.sessions() as session:
            shown = session.scalars(
                select(Retrieval.chunk_id)
                .where(Retrieval.interaction_id == details.interaction_id)
                .order_by(Retrieval.rank)
            ).all()
        assert shown and [s["chunk_id"] for s in details.sources] == shown
        feedback = httpx.post(
            f"{live.url}/v1/feedback",
            json={
                "interaction_id": details.interaction_id,
                "token": details.feedback_token,
                "thumb": "up",
            },
            headers={"Authorization": "Bearer sk-not-a-rag-loop-key"},
        )
        assert feedback.status_code == 201, feedback.text
    with pytest.raises(ValueError, match="include_response_headers"):
        answer_details(
            ChatOpenAI(
                model="rag-loop", base_url=f"{live.url}/v1", api_key="x", max_retries=0
            ).invoke(QUESTION)
        )


def test_a_follow_up_is_retrieved_with_the_earlier_question(
    client: openai.OpenAI, kestrel: Services
) -> None:
    completion = client.chat.completions.create(
        model="rag-loop",
        messages=[
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "You can pause it in the app."},
            {"role": "user", "content": [{"type": "text", "text": "and for how long?"}]},
        ],
    )
    row = interaction(kestrel, completion.model_extra["rag_loop"]["interaction_id"])
    assert row.query == f"{QUESTION}\nand for how long?"


def test_follow_up_rule() -> None:
    settings = ChatSettings()
    first = Turn("user", "What does the Commuter plan cost?")
    assert question_from([first], settings) == first.text
    standalone = Turn("user", "Which batteries does Kestrel use for the cargo bike?")
    assert question_from([first, standalone], settings) == standalone.text
    follow = Turn("user", "and is it cheaper yearly?")
    assert question_from([first, follow], settings) == f"{first.text}\n{follow.text}"
    assert question_from([first, follow], ChatSettings(context_turns=0)) == follow.text


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["message"]
    return dict(body["error"])


@pytest.mark.parametrize(
    ("payload", "status", "code", "param"),
    [
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            404,
            "model_not_found",
            None,
        ),
        ({"model": "rag-loop", "messages": []}, 400, "invalid_input", "messages"),
        ({"model": "rag-loop"}, 400, "invalid_input", "messages"),
        (
            {"model": "rag-loop", "messages": [{"role": "wizard", "content": "hi"}]},
            400,
            "invalid_input",
            "messages.0.role",
        ),
        (
            {"model": "rag-loop", "messages": [{"role": "user", "content": "hi"}], "n": 2},
            400,
            "invalid_input",
            "n",
        ),
        (
            {"model": "rag-loop", "messages": [{"role": "assistant", "content": "hi"}]},
            400,
            "invalid_input",
            None,
        ),
        (
            {"model": "rag-loop", "messages": [{"role": "user", "content": "   "}]},
            400,
            "invalid_input",
            None,
        ),
        (
            {
                "model": "rag-loop",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                    }
                ],
            },
            400,
            "invalid_input",
            None,
        ),
        (
            {"model": "rag-loop", "messages": [{"role": "user", "content": "x" * 5000}]},
            413,
            "payload_too_large",
            None,
        ),
    ],
)
def test_bad_requests_get_openai_errors_and_write_nothing(
    live: LiveServer,
    kestrel: Services,
    payload: dict[str, Any],
    status: int,
    code: str,
    param: str | None,
) -> None:
    before = row_counts(kestrel)
    for stream in (False, True):
        response = httpx.post(f"{live.url}/v1/chat/completions", json={**payload, "stream": stream})
        error = assert_openai_error(response, status, code)
        assert error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param
    response = httpx.post(
        f"{live.url}/v1/chat/completions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert_openai_error(response, 400, "invalid_input")
    assert row_counts(kestrel) == before


def test_the_openai_client_raises_on_bad_requests(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="rag-loop", messages=[], stream=True)
    assert caught.value.code == "invalid_input"


def test_keys_when_required(
    make_settings: Callable[..., Settings], embedder: Any, kestrel: Services
) -> None:
    settings = make_settings(auth={"require_key_for_ask": True})
    with transaction(kestrel.sessions) as session:
        _, ask_key = create_key(session, "chat", ["ask"], actor="test")
        _, feedback_key = create_key(session, "fb", ["feedback"], actor="test")
    kestrel.settings = settings
    messages = [{"role": "user", "content": QUESTION}]
    with LiveServer(create_app(settings, kestrel)) as live:
        anonymous = openai.OpenAI(base_url=f"{live.url}/v1", api_key="sk-x", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.chat.completions.create(model="rag-loop", messages=messages)
        wrong = openai.OpenAI(base_url=f"{live.url}/v1", api_key=feedback_key, max_retries=0)
        with pytest.raises(openai.PermissionDeniedError):
            wrong.chat.completions.create(model="rag-loop", messages=messages)
        keyed = openai.OpenAI(base_url=f"{live.url}/v1", api_key=ask_key, max_retries=0)
        completion = keyed.chat.completions.create(model="rag-loop", messages=messages)
    assert interaction(kestrel, completion.model_extra["rag_loop"]["interaction_id"]).api_key_id


def test_a_generator_that_is_down(
    make_settings: Callable[..., Settings], embedder: Any, kestrel: Services
) -> None:
    """Plain: a 503 in OpenAI's shape; streaming: an error event that OpenAI's client raises.
    Both log the interaction with status `error`."""
    from rag_loop.services import make_generator

    settings = make_settings(
        generator={"backend": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"}
    )
    kestrel.generator = make_generator(settings.generator)
    messages = [{"role": "user", "content": QUESTION}]
    with LiveServer(create_app(settings, kestrel)) as live:
        response = httpx.post(
            f"{live.url}/v1/chat/completions", json={"model": "rag-loop", "messages": messages}
        )
        error = assert_openai_error(response, 503, "backend_unavailable")
        assert error["type"] == "server_error"
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIError, match="cannot be reached"):
            list(client.chat.completions.create(model="rag-loop", messages=messages, stream=True))
    with kestrel.sessions() as session:
        statuses = session.scalars(select(Interaction.status)).all()
    assert statuses == ["error", "error"]


@pytest.mark.llm
@pytest.mark.slow
def test_streaming_from_a_real_llm_arrives_in_pieces(
    make_settings: Callable[..., Settings], kestrel: Services, llama_server: str
) -> None:
    from rag_loop.services import make_generator

    settings = make_settings(
        generator={"backend": "openai", "base_url": llama_server, "max_tokens": 48}
    )
    kestrel.generator = make_generator(settings.generator)
    with LiveServer(create_app(settings, kestrel)) as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model="rag-loop", messages=[{"role": "user", "content": QUESTION}], stream=True
            )
        )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 3  # token by token, not one block at the end
    extension = chunks[-1].model_extra["rag_loop"]
    row = interaction(kestrel, extension["interaction_id"])
    assert row.answer == "".join(pieces).strip() and row.generator.startswith("openai:")
