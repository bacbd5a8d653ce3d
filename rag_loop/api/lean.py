"""`LeanRoute`: FastAPI's per-request parameter machinery, skipped for the hottest route.

For every request FastAPI solves the endpoint's dependencies, reads the body, checks its
content type (through `email.message`), decodes the JSON with the `json` module and then
validates the decoded object. For `POST /v1/feedback` that machinery cost more of the event
loop's thread than everything the route itself does (token check, request hash, hand-over
to the writer, response): a feedback write is CPU-bound on that one thread, so it bounds
writes/s (measured in the closing note of the change; `evals/bench_serving.py`).

A `LeanRoute` endpoint is `async def endpoint(request: Request, body: Model) -> Response`.
FastAPI still reads the signature to document the route (the body's schema, operation id,
responses), so the OpenAPI document is the one FastAPI would write; at run time the route
calls the endpoint itself, with the body parsed by pydantic-core in one step
(`Model.model_validate_json`) under the same rules FastAPI applies: a JSON content type is
required, and every problem is a `RequestValidationError` with the `body.` location prefix,
turned into the one error shape by the app's handler. Anything else the endpoint needs
(services, the API key) it takes from the request itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi import routing as fastapi_routing
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

LeanEndpoint = Callable[[Request, Any], Awaitable[Response]]


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: LeanEndpoint = self.endpoint
        # An included route is built again with the including router's settings merged in
        # (FastAPI keeps them in a context variable while it builds): check those too.
        context_var = getattr(fastapi_routing, "_effective_route_context_var", None)
        context: Any = context_var.get() if context_var is not None else None
        route: Any = context if getattr(context, "original_route", None) is self else self
        parameters = list(inspect.signature(endpoint, eval_str=True).parameters.values())
        if (
            [p.name for p in parameters] != ["request", "body"]
            or parameters[0].annotation is not Request
            or not (
                isinstance(parameters[1].annotation, type)
                and issubclass(parameters[1].annotation, BaseModel)
            )
            or route.dependant.dependencies
            or route.dependencies
        ):
            raise TypeError(
                f"{endpoint.__name__}: a LeanRoute endpoint takes exactly "
                "(request: Request, body: <a pydantic model>) and no dependencies"
            )
        model: type[BaseModel] = parameters[1].annotation

        async def handler(request: Request) -> Response:
            body = await parse_json_body(request, model)
            return await endpoint(request, body)

        return handler


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
