"""The HTTP API: create_app(settings), one router per resource."""

from rag_loop.api.app import create_app

__all__ = ["create_app"]
