"""LeanRoute (api/lean.py) takes only endpoints it can call itself."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.testclient import TestClient

from rag_loop.api.lean import LeanRoute
from rag_loop.feedback.schemas import FeedbackIn


async def _services() -> None:
    return None


def test_lean_route_refuses_endpoints_it_cannot_call() -> None:
    async def with_dependency(request: Request, body: FeedbackIn, x: None = Depends(_services)):
        return Response()

    async def without_body(request: Request) -> Response:
        return Response()

    async def body_not_a_model(request: Request, body: dict) -> Response:  # type: ignore[type-arg]
        return Response()

    async def fine(request: Request, body: FeedbackIn) -> Response:
        return Response()

    for endpoint in (with_dependency, without_body, body_not_a_model):
        router = APIRouter(route_class=LeanRoute)
        with pytest.raises(TypeError, match="LeanRoute endpoint takes exactly"):
            router.post("/x")(endpoint)
    router = APIRouter(route_class=LeanRoute)
    router.post("/x")(fine)
    with pytest.raises(TypeError, match="no dependencies"):
        APIRouter(route_class=LeanRoute, dependencies=[Depends(_services)]).post("/x")(fine)
    # dependencies added where the router is included (FastAPI builds the route then, on
    # its first request)
    router = APIRouter(route_class=LeanRoute)
    router.post("/x")(fine)
    app = FastAPI()
    app.include_router(router, dependencies=[Depends(_services)])
    with pytest.raises(TypeError, match="no dependencies"):
        TestClient(app).post("/x", json={"interaction_id": "a", "thumb": "up"})
