"""LeanRoute (api/lean.py) takes only endpoints it can call itself, checks the key before
the body, and refuses what it parses with FastAPI's errors."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, Request, Response

from rag_loop.api.deps import PrincipalDep
from rag_loop.api.lean import LeanRoute
from rag_loop.feedback.schemas import FeedbackIn
from rag_loop.services import Services
from tests.conftest import assert_error_shape, row_counts


async def _other() -> None:
    return None


def test_lean_route_refuses_endpoints_it_cannot_call() -> None:
    async def extra_dependency(
        request: Request, principal: PrincipalDep, body: FeedbackIn, x: None = Depends(_other)
    ) -> Response:
        return Response()

    async def without_key(request: Request, body: FeedbackIn) -> Response:
        return Response()

    async def body_not_a_model(request: Request, principal: PrincipalDep, body: dict) -> Response:  # type: ignore[type-arg]
        return Response()

    async def fine(request: Request, principal: PrincipalDep, body: FeedbackIn) -> Response:
        return Response()

    for endpoint in (extra_dependency, without_key, body_not_a_model):
        router = APIRouter(route_class=LeanRoute)
        with pytest.raises(TypeError, match="LeanRoute endpoint takes exactly"):
            router.post("/x")(endpoint)
    router = APIRouter(route_class=LeanRoute)
    router.post("/x")(fine)
    with pytest.raises(TypeError, match="no other dependencies"):
        APIRouter(route_class=LeanRoute, dependencies=[Depends(_other)]).post("/x")(fine)


def test_the_app_includes_its_lean_routers_without_dependencies() -> None:
    """A LeanRoute cannot see dependencies an including router adds (FastAPI keeps them in
    private state): the app's routers of LeanRoutes are included without any."""
    import ast
    import inspect as inspect_module

    from rag_loop.api import app as app_module

    tree = ast.parse(inspect_module.getsource(app_module))
    includes = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "include_router"
    ]
    assert includes and all(not call.keywords for call in includes)


def test_the_key_is_checked_before_the_body_and_the_header_errors_are_fastapis(
    api: httpx.Client, kestrel: Services
) -> None:
    before = row_counts(kestrel)
    for path in ("/v1/ask", "/v1/feedback"):
        # a wrongly presented key is a 401 whatever the body
        response = api.post(path, content=b"{not json", headers={"X-API-Key": "rl_nope_nope"})
        assert_error_shape(response, 401, "unauthorized")
    error = assert_error_shape(
        api.post("/v1/ask", json={"query": "Where do I park?"}, headers={"X-Client": "c" * 65}),
        422,
        "validation_failed",
    )
    assert error["details"] == [
        {
            "field": "header.x-client",
            "problem": "String should have at most 64 characters",
            "type": "string_too_long",
        }
    ]
    assert row_counts(kestrel) == before


def test_x_client_is_logged_and_new_rows_get_time_ordered_ids(
    api: httpx.Client, kestrel: Services
) -> None:
    from rag_loop.db.models import Interaction

    response = api.post(
        "/v1/ask", json={"query": "Where do I park?"}, headers={"X-Client": "widget/2"}
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    with kestrel.sessions() as session:
        stored = session.get(Interaction, answer["interaction_id"])
        assert stored is not None and stored.client == "widget/2"
    # rows written on every request get time-ordered ids (UUIDv7)
    assert uuid.UUID(answer["interaction_id"]).version == 7
    receipt = api.post(
        "/v1/feedback",
        json={
            "interaction_id": answer["interaction_id"],
            "token": answer["feedback_token"],
            "thumb": "up",
        },
    )
    assert receipt.status_code == 201, receipt.text
    assert uuid.UUID(receipt.json()["submission_id"]).version == 7
