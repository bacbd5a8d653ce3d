"""OpenAI-compatible chat: `POST /v1/chat/completions` and `GET /v1/models`.

Any OpenAI client (the `openai` package, LangChain's ChatOpenAI, chat front ends) can talk
to rag-loop. Every completion goes through the ask path, so it is one logged interaction; its
id, sources and feedback token come back in the `rag_loop` field and in `X-Rag-Loop-*`
headers (with `stream: true`, the headers arrive before the first chunk, the field with the
last chunk).

OpenAI clients always send `Authorization: Bearer <key>`. A rag-loop key (`rl_...`) is
checked; any other value is ignored unless `RAG_LOOP_AUTH_REQUIRE_KEY_FOR_ASK` is on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from rag_loop.api.deps import ServicesDep
from rag_loop.api.openai_compat import (
    INTERACTION_HEADER,
    SOURCES_HEADER,
    TOKEN_HEADER,
    ChatCompletionIn,
    ChatCompletionOut,
    Model,
    ModelList,
    OpenAIRoute,
    openai_error,
    openai_responses,
)
from rag_loop.auth.keys import Principal, authenticate
from rag_loop.errors import NotFound, RagLoopError, Unauthorized
from rag_loop.interactions.ask import Prepared, ask_stream, prepare, sources
from rag_loop.interactions.chat import Turn, question_from
from rag_loop.services import Services

router = APIRouter(prefix="/v1", tags=["chat (OpenAI-compatible)"], route_class=OpenAIRoute)
STARTED = int(time.time())


async def chat_principal(
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal | None:
    presented = x_api_key
    if authorization:
        scheme, _, value = authorization.partition(" ")
        presented = presented or (value.strip() if scheme.lower() == "bearer" else None)
    if presented and presented.startswith("rl_"):

        def lookup() -> Principal:
            with services.sessions() as session:
                return authenticate(session, presented)

        principal = await run_in_threadpool(lookup)
        principal.require("ask")
        return principal
    if services.settings.auth.require_key_for_ask:
        raise Unauthorized("chat needs an API key with the 'ask' scope: Authorization: Bearer rl_…")
    return None


ChatPrincipalDep = Annotated[Principal | None, Depends(chat_principal)]


def _model(services: Services) -> Model:
    return Model(id=services.settings.chat.model, created=STARTED)


@router.get(
    "/models",
    operation_id="list_models",
    response_model=ModelList,
    summary="The one model rag-loop serves (OpenAI-compatible)",
)
async def list_models(services: ServicesDep) -> ModelList:
    return ModelList(data=[_model(services)])


@router.get(
    "/models/{model_id}",
    operation_id="get_model",
    response_model=Model,
    responses=openai_responses(404),
    summary="One model (OpenAI-compatible)",
)
async def get_model(model_id: str, services: ServicesDep) -> Model:
    if model_id != services.settings.chat.model:
        raise _unknown_model(model_id, services)
    return _model(services)


def _unknown_model(model: str, services: Services) -> NotFound:
    error = NotFound(
        f"the model {model!r} does not exist here; use {services.settings.chat.model!r} "
        "(GET /v1/models)"
    )
    error.code = "model_not_found"
    return error


@router.post(
    "/chat/completions",
    operation_id="create_chat_completion",
    response_model=ChatCompletionOut,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "With `stream: true`: chat.completion.chunk events, then [DONE].",
        },
        **openai_responses(400, 401, 403, 404, 413, 502, 503),
    },
    summary="Answer the conversation's latest question (OpenAI Chat Completions); logged",
)
async def create_chat_completion(
    body: ChatCompletionIn,
    request: Request,
    services: ServicesDep,
    principal: ChatPrincipalDep,
    response: Response,
    x_client: str | None = Header(default=None, max_length=64),
) -> Any:
    if body.model != services.settings.chat.model:
        raise _unknown_model(body.model, services)
    asks = request.app.state.metrics.asks
    try:
        turns = [Turn(m.role, m.text()) for m in body.messages]
        question = question_from(turns, services.settings.chat)
        prepared = await run_in_threadpool(
            prepare,
            services,
            question,
            top_k=body.top_k,
            api_key_id=principal.key_id if principal else None,
            client=x_client or "openai-chat",
        )
        headers = _headers(services, prepared)
        if body.stream:
            return StreamingResponse(
                _events(services, prepared, body.model, asks),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text = await run_in_threadpool(_answer, services, prepared)
    except RagLoopError as exc:
        asks.labels("chat", "invalid" if exc.status_code < 500 else "error").inc()
        raise
    asks.labels("chat", "ok").inc()
    response.headers.update(headers)
    return ChatCompletionOut.model_validate(
        {
            "id": f"chatcmpl-{prepared.interaction_id}",
            "created": int(time.time()),
            "model": body.model,
            "system_fingerprint": f"rag-loop-index-{prepared.index.id}",
            "choices": [{"message": {"content": text}}],
            "rag_loop": _extension(services, prepared),
        }
    )


def _answer(services: Services, prepared: Prepared) -> str:
    return "".join(ask_stream(services, prepared)).strip()


def _headers(services: Services, prepared: Prepared) -> dict[str, str]:
    compact = [
        {"rank": s["rank"], "chunk_id": s["chunk_id"], "document_id": s["document_id"]}
        for s in sources(prepared)
    ]
    return {
        INTERACTION_HEADER: prepared.interaction_id,
        TOKEN_HEADER: services.tokens.issue(prepared.interaction_id),
        SOURCES_HEADER: json.dumps(compact, separators=(",", ":")),
    }


def _extension(services: Services, prepared: Prepared) -> dict[str, Any]:
    return {
        "interaction_id": prepared.interaction_id,
        "sources": sources(prepared),
        "cited_ranks": prepared.cited_ranks,
        "versions": prepared.versions,
        "feedback_token": services.tokens.issue(prepared.interaction_id),
        "feedback_token_expires_in": services.settings.auth.feedback_token_ttl_seconds,
    }


def _events(services: Services, prepared: Prepared, model: str, asks: Any) -> Iterator[str]:
    """Server-sent events: a role chunk, content chunks, a final chunk with finish_reason and
    the `rag_loop` field, then `[DONE]`. A failure mid-answer is sent as an `error` event
    (OpenAI's clients raise it), and the interaction is logged with status `error`."""
    base = {
        "id": f"chatcmpl-{prepared.interaction_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": f"rag-loop-index-{prepared.index.id}",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice], **extra})

    yield chunk({"role": "assistant", "content": ""})
    try:
        for piece in ask_stream(services, prepared):
            yield chunk({"content": piece})
    except RagLoopError as exc:
        asks.labels("chat", "error").inc()
        yield _sse(openai_error(exc)[1])
    else:
        asks.labels("chat", "ok").inc()
        yield chunk({}, "stop", rag_loop=_extension(services, prepared))
    yield "data: [DONE]\n\n"


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
