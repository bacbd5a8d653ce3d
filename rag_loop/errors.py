"""Every error rag-loop raises on purpose.

    RagLoopError                  base; never raised itself
    ├── InvalidInput              400  the request or command is malformed or out of range
    │   └── ValidationFailed      422  the body does not match the schema (field details)
    ├── Unauthorized              401  missing, unknown, revoked or expired key or token
    ├── Forbidden                 403  a valid key without the scope the action needs
    ├── NotFound                  404  an id that does not exist
    ├── Conflict                  409  the state forbids the action (idempotency key reuse,
    │                                  reviewing an already reviewed correction, ...)
    ├── PayloadTooLarge           413  the body is bigger than the service accepts
    ├── UpstreamError             502  a backend answered, but not usably (the generator;
    │                                  MLflow refusing a request)
    └── BackendUnavailable        503  a backend (generator, Chroma, database) cannot be reached
        └── NoServingIndex        503  nothing has been ingested yet

The API turns each into one JSON shape (see ``rag_loop.api.errors``)::

    {"error": {"code": "not_found", "message": "...", "details": [...]}}

and the CLI into a one-line message and exit code ``exit_code``.
"""

from __future__ import annotations

from typing import Any


class RagLoopError(Exception):
    status_code = 500
    code = "internal_error"
    exit_code = 1

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class InvalidInput(RagLoopError):
    status_code = 400
    code = "invalid_input"
    exit_code = 2


class ValidationFailed(InvalidInput):
    status_code = 422
    code = "validation_failed"


class Unauthorized(RagLoopError):
    status_code = 401
    code = "unauthorized"
    exit_code = 3


class Forbidden(RagLoopError):
    status_code = 403
    code = "forbidden"
    exit_code = 3


class NotFound(RagLoopError):
    status_code = 404
    code = "not_found"
    exit_code = 4


class Conflict(RagLoopError):
    status_code = 409
    code = "conflict"
    exit_code = 5


class PayloadTooLarge(InvalidInput):
    status_code = 413
    code = "payload_too_large"


class UpstreamError(RagLoopError):
    status_code = 502
    code = "upstream_error"
    exit_code = 6


class BackendUnavailable(RagLoopError):
    status_code = 503
    code = "backend_unavailable"
    exit_code = 6


class NoServingIndex(BackendUnavailable):
    code = "no_serving_index"
