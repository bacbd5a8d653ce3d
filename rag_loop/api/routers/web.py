"""The browser side: the feedback widget (`/widget.js`), a small demo chat page (`/`) and
its icon. The operator console is `console.py`."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from rag_loop.api.errors import responses

router = APIRouter(tags=["web"])


@cache
def _static(name: str) -> bytes:
    return files("rag_loop.api").joinpath("static", name).read_bytes()


@router.get(
    "/widget.js",
    operation_id="widget",
    response_class=Response,
    responses={200: {"content": {"application/javascript": {}}}, **responses(500)},
    summary="The embeddable thumbs/correction widget (no dependencies)",
)
async def widget() -> Response:
    return Response(
        _static("widget.js"),
        media_type="application/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=300"},
    )


@router.get(
    "/",
    operation_id="demo_page",
    response_class=HTMLResponse,
    responses=responses(500),
    summary="A demo chat page: the chat endpoint plus the widget",
)
async def demo_page() -> HTMLResponse:
    return HTMLResponse(_static("index.html"))


@router.get(
    "/favicon.svg",
    operation_id="favicon",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}, **responses(500)},
    summary="The icon of the demo page and the console",
)
async def favicon() -> Response:
    return Response(
        _static("favicon.svg"),
        media_type="image/svg+xml",
        headers={"Cache-Control": "public, max-age=86400"},
    )
