"""The OpenAI Chat Completions protocol, as far as rag-loop speaks it.

Bodies follow https://platform.openai.com/docs/api-reference/chat; what rag-loop adds lives
in one extension field, `rag_loop`, and in `X-Rag-Loop-*` response headers. Routes of this
protocol answer errors in OpenAI's shape, which OpenAI's client libraries parse:

    {"error": {"message": "...", "type": "invalid_request_error", "param": null,
               "code": "model_not_found"}}

`code` is rag-loop's error code (see `rag_loop.errors`); `type` is OpenAI's error type.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag_loop.api.errors import HTTP_CODES, database_error, error_body, error_type
from rag_loop.api.schemas import Source, Versions
from rag_loop.client import INTERACTION_HEADER, SOURCES_HEADER, TOKEN_HEADER
from rag_loop.errors import RagLoopError
from rag_loop.inputs import INTEGRAL, TEXT_PATTERN, Text, clean_text, problem

log = logging.getLogger(__name__)

# response headers that carry what a client needs to send feedback
EXPOSED_HEADERS = [INTERACTION_HEADER, TOKEN_HEADER, SOURCES_HEADER]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    text: Text | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # name, tool_calls, refusal, ...

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # the pattern documents the check `_clean` makes (no NUL); see rag_loop.inputs
    content: (
        Annotated[str, Field(json_schema_extra={"pattern": TEXT_PATTERN})] | list[TextPart] | None
    ) = None

    @field_validator("content")
    @classmethod
    def _clean(cls, content: str | list[TextPart] | None) -> str | list[TextPart] | None:
        # checked here, not with `Text` in the union: an error names `content`, not a branch
        return clean_text(content) if isinstance(content, str) else content

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        kinds = sorted({p.type for p in self.content if p.type != "text"})
        if kinds:
            from rag_loop.errors import InvalidInput

            raise InvalidInput(f"only text content is supported, not {', '.join(kinds)}")
        return "\n".join(p.text or "" for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


class ChatCompletionIn(BaseModel):
    """OpenAI's request body. Sampling parameters are accepted and do not change the answer
    (the configured generator decides); `n` must be 1. `top_k` is rag-loop's extension."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: Text = Field(min_length=1, description="The id from GET /v1/models.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1), INTEGRAL] = Field(
        default=1, description="One answer per request."
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    user: Text | None = Field(default=None, max_length=256)
    top_k: Annotated[int, Field(ge=1, le=100), INTEGRAL] | None = Field(
        default=None, description="Chunks to retrieve."
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class RagLoopExtension(BaseModel):
    """What rag-loop adds to OpenAI's body: enough to show sources and send feedback."""

    interaction_id: str
    sources: list[Source]
    cited_ranks: list[int]
    versions: Versions
    feedback_token: str = Field(description="For POST /v1/feedback on this interaction only.")
    feedback_token_expires_in: int = Field(description="Seconds.")


class ChatCompletionOut(BaseModel):
    id: str = Field(description="`chatcmpl-` + the interaction id.")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str = Field(description="The serving index version.")
    choices: list[Choice]
    usage: None = Field(default=None, description="rag-loop does not count tokens.")
    rag_loop: RagLoopExtension


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rag-loop"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail


def openai_error(exc: Exception) -> tuple[int, dict[str, dict[str, Any]]]:
    """Any exception -> (HTTP status, OpenAI error body)."""
    if isinstance(exc, RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {problem(e)}"
            for e in errors[:5]
        )
        return 400, error_body(400, "invalid_input", f"invalid request: {message}", param)
    if isinstance(exc, DBAPIError):
        exc = database_error(exc)
    if isinstance(exc, RagLoopError):
        status = 400 if exc.status_code == 422 else exc.status_code
        message = exc.message
        logged = next((d["interaction_id"] for d in exc.details if "interaction_id" in d), None)
        if logged is not None:  # OpenAI's shape has no details: the message names it
            message = f"{message} (logged as interaction {logged})"
        return status, error_body(status, exc.code, message)
    if isinstance(exc, StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return exc.status_code, error_body(exc.status_code, code, str(exc.detail))
    log.exception("unhandled error", exc_info=exc)
    message = f"internal error ({type(exc).__name__}); see the server log"
    return 500, error_body(500, "internal_error", message)


class OpenAIRoute(APIRoute):
    """A route whose errors, validation included, come back in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                status, body = openai_error(exc)
                headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                return JSONResponse(body, status_code=status, headers=headers)

        return route


def openai_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        s: {"model": OpenAIErrorBody, "description": error_type(s) + " (OpenAI error shape)"}
        for s in statuses
    }
