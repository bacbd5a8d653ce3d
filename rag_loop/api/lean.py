"""`LeanRoute`: FastAPI's per-request parameter machinery, skipped for the hottest routes.

For every request FastAPI solves the endpoint's dependencies, reads the body, checks its
content type (through `email.message`), decodes the JSON with the `json` module and then
validates the decoded object. For `POST /v1/feedback` that machinery cost more of the event
loop's thread than everything the route itself does (token check, request hash, hand-over
to the writer, response), and a feedback write is bound by that one thread's CPU. Side by
side over HTTP at 32 clients, that thread's CPU per feedback write went from ~0.27-0.52 ms
to ~0.18-0.25 ms with this route class (`evals/bench_serving.py` has the writes/s).

A `LeanRoute` endpoint is
`async def endpoint(request: Request, principal: PrincipalDep, body: Model) -> Response`.
FastAPI still reads the signature to document the route (the API key schemes, the body's
schema, operation id, responses), so the OpenAPI document is the one FastAPI would write.
At run time the route calls the endpoint itself. First it resolves the caller's API key
(`deps.optional_principal`, the one dependency allowed): a bad key is a 401 whatever the
body (FastAPI answered malformed JSON with a 422 before it looked at the key), unless the
body carries its own credential (feedback's `token`), which the endpoint checks instead. Then it
parses the body with pydantic-core in one step (`Model.model_validate_json`) under the
rules FastAPI applies: a JSON content type is required, and every problem is a
`RequestValidationError` with the `body.` location prefix, turned into the one error shape
by the app's handler. Anything else the endpoint needs (services, an `OptionalHeader`) it
takes from the request, and declares in `openapi_extra` what FastAPI would have documented
from the signature.

Only public FastAPI is used: `APIRoute.get_route_handler` is FastAPI's documented extension
point for custom route classes. A LeanRoute sees its own route's dependencies, not those an
including router adds (FastAPI keeps those in private state while it builds an included
route): include a router of LeanRoutes without dependencies, as `create_app` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from rag_loop.api.deps import optional_principal
from rag_loop.auth.keys import Principal
from rag_loop.errors import Unauthorized

LeanEndpoint = Callable[[Request, Principal | None, Any], Awaitable[Response]]
SIGNATURE = "(request: Request, principal: PrincipalDep, body: <a pydantic model>)"


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: LeanEndpoint = self.endpoint
        parameters = list(inspect.signature(endpoint, eval_str=True).parameters.values())
        dependencies = [d.call for d in self.dependant.dependencies]
        if (
            [p.name for p in parameters] != ["request", "principal", "body"]
            or parameters[0].annotation is not Request
            or not (
                isinstance(parameters[2].annotation, type)
                and issubclass(parameters[2].annotation, BaseModel)
            )
            or dependencies != [optional_principal]
            or self.dependencies
        ):
            raise TypeError(
                f"{endpoint.__name__}: a LeanRoute endpoint takes exactly {SIGNATURE} "
                "and no other dependencies"
            )
        model: type[BaseModel] = parameters[2].annotation

        async def handler(request: Request) -> Response:
            refused: Unauthorized | None = None
            try:
                principal = await optional_principal(request)
            except Unauthorized as exc:
                principal, refused = None, exc
            try:
                body = await parse_json_body(request, model)
            except RequestValidationError:
                if refused is not None:
                    raise refused from None
                raise
            if refused is not None and not carries_credential(body):
                raise refused
            return await endpoint(request, principal, body)

        return handler


def carries_credential(body: BaseModel) -> bool:
    """A body with its own credential (feedback's `token`): the headers' key is not needed,
    so a key the service does not know there (a browser's or an SDK's) does not refuse it."""
    return bool(getattr(body, "token", None))


async def parse_json_body(request: Request, model: type[BaseModel]) -> Any:
    """The request's JSON body as `model`, or the RequestValidationError FastAPI would raise."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    if not (
        media_type == "application/json"
        or (media_type.startswith("application/") and media_type.endswith("+json"))
    ):
        raise RequestValidationError(
            [
                {
                    "type": "content_type",
                    "loc": ("body",),
                    "msg": "send the body as JSON, with Content-Type: application/json",
                    "input": content_type,
                }
            ]
        )
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors], body=raw
        ) from None


class OptionalHeader:
    """A string header a LeanRoute endpoint reads itself: checked and documented as FastAPI
    checks and documents `Header(default=None, max_length=...)`."""

    def __init__(self, name: str, *, max_length: int) -> None:
        self.name = name.lower()
        self.max_length = max_length
        self.openapi: dict[str, Any] = {
            "in": "header",
            "name": self.name,
            "required": False,
            "schema": {
                "anyOf": [{"maxLength": max_length, "type": "string"}, {"type": "null"}],
                "title": "-".join(part.capitalize() for part in self.name.split("-")),
            },
        }

    def read(self, request: Request) -> str | None:
        value = request.headers.get(self.name)
        if value is not None and len(value) > self.max_length:
            raise RequestValidationError(
                [
                    {
                        "type": "string_too_long",
                        "loc": ("header", self.name),
                        "msg": f"String should have at most {self.max_length} characters",
                        "input": value,
                    }
                ]
            )
        return value
