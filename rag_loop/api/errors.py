"""One JSON error shape per protocol, for every 4xx and 5xx.

rag-loop's routes:

    {"error": {"code": "not_found", "message": "no interaction 'x'", "details": []}}

The OpenAI-compatible routes (`/v1/chat/...`, `/v1/models`), OpenAI's shape, with 400 for any
request that does not match the schema (OpenAI's status for it):

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "..."}}

A body that does not match the schema, or is not JSON at all, is a 422 `validation_failed`
on every rag-loop route; a database that cannot be reached is a 503 `backend_unavailable`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from rag_loop.db.engine import unavailable
from rag_loop.errors import RagLoopError
from rag_loop.inputs import problem

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    500: "internal_error",
    502: "upstream_error",
    503: "backend_unavailable",
}


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. not_found.")
    message: str = Field(description="What went wrong and how to fix it.")
    details: list[dict[str, Any]] = Field(default_factory=list)


class ErrorBody(BaseModel):
    error: ErrorDetail


# the OpenAI-compatible routes: their errors, from the app or before it, are in OpenAI's shape
OPENAI_PATHS = ("/v1/chat/", "/v1/models")


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PATHS)


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(
    status: int, code: str, message: str, param: str | None = None
) -> dict[str, dict[str, Any]]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    path: str = "",
) -> JSONResponse:
    """The error as a response, in the shape of the protocol `path` belongs to."""
    body = error_payload(status, code, message, details, path=path)
    return JSONResponse(body, status_code=status, headers=headers)


def error_payload(
    status: int, code: str, message: str, details: list[Any] | None = None, *, path: str = ""
) -> dict[str, Any]:
    """OpenAI's shape on the OpenAI-compatible routes, rag-loop's everywhere else."""
    if is_openai_path(path):
        return error_body(status, code, message)
    return {"error": {"code": code, "message": message, "details": details or []}}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route: each status documented with ErrorBody."""
    return {s: {"model": ErrorBody, "description": HTTP_CODES.get(s, "error")} for s in statuses}


def field_name(loc: Sequence[Any]) -> str:
    """`body.chunk_labels.0.chunk_id` for a field; `body` for the body as a whole (a JSON
    decoding error's location ends in a character offset, which is not a field)."""
    parts = [str(p) for p in loc]
    return ".".join(parts) or "request"


def validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            loc = loc[:1]  # ("body", <offset>) -> ("body",)
        details.append({"field": field_name(loc), "problem": problem(err), "type": err.get("type")})
    return details


def validation_response(exc: RequestValidationError) -> JSONResponse:
    details = validation_details(exc)
    summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5])
    return error_response(422, "validation_failed", f"invalid request: {summary}", details)


def allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document gives for this path (Starlette's own 405 names only
    those of the first route that matched the path, not the others at the same path)."""
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(
        request.app.state, "allowed_methods", None
    )
    if table is None:
        table = [
            (compile_path(path)[0], sorted(method.upper() for method in operations))
            for path, operations in request.app.openapi().get("paths", {}).items()
        ]
        request.app.state.allowed_methods = table
    path = request.url.path
    return next((methods for pattern, methods in table if pattern.match(path)), [])


def database_error(exc: DBAPIError) -> RagLoopError:
    """A database that cannot be reached is a 503 the client may retry; any other database
    error is a bug, logged with its cause."""
    error = unavailable(exc)
    if error is not None:
        return error
    log.error("database error", exc_info=exc)
    return RagLoopError(f"internal error ({type(exc).__name__}); see the server log")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RagLoopError)
    async def _ours(_: Request, exc: RagLoopError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return error_response(exc.status_code, exc.code, exc.message, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 400:
            # FastAPI's "There was an error parsing the body" (a body that is not UTF-8 JSON):
            # the same mistake as malformed JSON, so the same answer as on every other route
            return error_response(
                422,
                "validation_failed",
                "invalid request: body: the body is not valid JSON (UTF-8)",
                [{"field": "body", "problem": str(exc.detail), "type": "json_invalid"}],
            )
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(
            exc.status_code, code, str(exc.detail), None, headers, path=request.url.path
        )

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        error = database_error(exc)
        return error_response(error.status_code, error.code, error.message, error.details)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(
            500, "internal_error", f"internal error ({type(exc).__name__}); see the server log"
        )
