"""create_app(settings): the FastAPI application. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from rag_loop.api.errors import error_response, install_error_handlers
from rag_loop.api.routers import admin, ask, feedback, health
from rag_loop.services import Services
from rag_loop.settings import Settings

MAX_BODY_BYTES = 1_000_000


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the app. Pass `services` to share resources (tests do); otherwise they are
    created from `settings` when the app starts and closed when it stops."""
    owned = services is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.services is None:
            app.state.services = Services.from_settings(settings)
        yield
        if owned:
            app.state.services.close()

    app = FastAPI(
        title="rag-loop",
        version="0.1.0",
        summary="A RAG service that learns from its users.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)

    @app.middleware("http")
    async def limit_body(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return error_response(
                413, "payload_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes"
            )
        return await call_next(request)

    for module in (health, ask, feedback, admin):
        app.include_router(module.router)
    return app
