"""create_app(settings): the FastAPI application. Nothing is built at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from rag_loop.api.deps import API_KEY_HEADER_SCHEME, BEARER_SCHEME, HEADER_SCHEME
from rag_loop.api.errors import install_error_handlers, is_openai_path
from rag_loop.api.limits import BodyLimit
from rag_loop.api.metrics import LatencyMiddleware, ServiceMetrics
from rag_loop.api.openai_compat import EXPOSED_HEADERS
from rag_loop.api.routers import (
    admin,
    ask,
    chat,
    console,
    evals,
    feedback,
    health,
    jobs,
    loop,
    web,
)
from rag_loop.services import Services
from rag_loop.settings import Settings

MAX_BODY_BYTES = 1_000_000

log = logging.getLogger(__name__)


def _warm(services: Services) -> None:
    """Load ahead what serves; a failure here is logged, and the ask that needs the version
    reports it (the API starts either way)."""
    from rag_loop.loop.warm import warm

    try:
        warmed = warm(services, embed=True)
    except Exception:
        log.exception("loading the serving index versions ahead failed")
        return
    log.info("index versions loaded ahead: %s", warmed.loaded)
    for version_id, why in warmed.failed.items():
        log.warning("index version %s not loaded ahead: %s", version_id, why)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the app. Pass `services` to share resources (tests do); otherwise they are
    created from `settings` when the app starts and closed when it stops."""
    owned = services is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.services is None:
            app.state.services = Services.from_settings(settings)
        # Load the model before the first request, on a thread of the same pool that serves
        # asks (embedding first from another thread measurably slowed later asks here).
        await run_in_threadpool(app.state.services.embedder.embed_query, "warm-up")
        if app.state.services.settings.retrieval.warm_seconds:
            # and what serves, or may serve next, if the loop made it (rag_loop.loop.warm)
            await run_in_threadpool(_warm, app.state.services)
        from rag_loop.scheduler import start_schedule

        scheduler = start_schedule(app.state.services)
        yield
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if owned:
            app.state.services.close()

    app = FastAPI(
        title="rag-loop",
        version="0.1.0",
        summary="A RAG service that learns from its users.",
        lifespan=lifespan,
        # the order of the docs, whatever the order routes are matched in (below)
        openapi_tags=[
            {"name": name}
            for name in (
                "ask",
                "feedback",
                "chat (OpenAI-compatible)",
                "admin",
                "evaluation",
                "loop",
                "jobs",
                "health",
                "web",
            )
        ],
    )
    app.state.services = services
    app.state.metrics = ServiceMetrics(lambda: app.state.services)
    install_error_handlers(app)
    app.add_exception_handler(console.Refused, console.refused_page)  # HTML, not JSON

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Client"],
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
    app.add_middleware(LatencyMiddleware, metrics=app.state.metrics)

    # Routes are matched in order, each candidate costing a few µs per request: the hot
    # paths (feedback, ask, chat) come first.
    for module in (feedback, ask, chat, health, web, admin, evals, loop, jobs, console):
        app.include_router(module.router)
    _write_contract(app, settings)
    return app


# operations a caller may use without a key (each says what it checks instead)
OPTIONAL_KEY = {
    "submit_feedback",  # the answer's feedback token in the body
    "create_chat_completion",  # a rag-loop key is checked; other bearer values are ignored
}
ANONYMOUS_ASKS = {"ask", "create_chat_completion"}  # unless auth.require_key_for_ask


def _link(operation_id: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": parameters}


# OpenAPI links: where the ids one response returns are used next (SDK generators and the
# contract test's stateful phase follow them)
INTERACTION = "$response.body#/interaction_id"
LINKS: dict[tuple[str, str], dict[str, Any]] = {
    ("ask", "200"): {
        "SendFeedback": {
            "operationId": "submit_feedback",
            "requestBody": {
                "interaction_id": INTERACTION,
                "token": "$response.body#/feedback_token",
                "thumb": "down",
            },
        },
        "GetInteraction": _link("get_interaction", interaction_id=INTERACTION),
        "TraceInteraction": _link("trace_interaction", interaction_id=INTERACTION),
    },
    ("submit_feedback", "201"): {
        "ApproveCorrection": _link(
            "approve_correction", correction_id="$response.body#/correction_id"
        ),
        "RejectCorrection": _link(
            "reject_correction", correction_id="$response.body#/correction_id"
        ),
    },
    ("run_evaluation", "202"): {"GetJob": _link("get_job", job_id="$response.body#/id")},
    ("build_index_version", "202"): {"GetJob": _link("get_job", job_id="$response.body#/id")},
    ("start_loop_cycle", "202"): {
        name: _link(operation, cycle_id="$response.body#/id")
        for name, operation in (
            ("GetCycle", "get_loop_cycle"),
            ("ApproveCycle", "approve_loop_cycle"),
            ("RejectCycle", "reject_loop_cycle"),
            ("ResumeCycle", "resume_loop_cycle"),
        )
    },
}


def _write_contract(app: FastAPI, settings: Settings) -> None:
    """FastAPI's schema, completed where it cannot know what the service does:

    - `X-API-Key` as a second way to present the key (the `api_key_header` scheme) wherever
      the bearer scheme is accepted: both headers are read by one dependency
      (deps.ApiKeyAuth), which FastAPI documents as one scheme;
    - a key that is optional is documented as such (an empty security requirement), and the
      chat route, which reads the key itself, declares the schemes;
    - the OpenAI-compatible routes answer a request that does not match the schema with
      OpenAI's 400, never with the 422 FastAPI documents for every route with parameters;
    - links from the responses that return ids to the operations that take them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes[HEADER_SCHEME] = API_KEY_HEADER_SCHEME
            optional = set(OPTIONAL_KEY)
            if not settings.auth.require_key_for_ask:
                optional |= ANONYMOUS_ASKS
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values():
                    security = operation.get("security", [])
                    if operation.get("operationId") == "create_chat_completion":
                        security = [{BEARER_SCHEME: []}]
                    if {BEARER_SCHEME: []} in security:
                        security.append({HEADER_SCHEME: []})
                        if operation.get("operationId") in optional:
                            security.insert(0, {})
                        operation["security"] = security
                    if is_openai_path(path):
                        operation.get("responses", {}).pop("422", None)
                    for (operation_id, status), links in LINKS.items():
                        if operation.get("operationId") == operation_id:
                            operation["responses"][status]["links"] = links
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_environment() -> FastAPI:
    """The app with settings from the environment: what `rag-loop serve --workers N` starts
    in each worker process."""
    return create_app(Settings())
