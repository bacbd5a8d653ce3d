"""Every ask writes its interaction whatever fails after the request was parsed: retrieval
(Chroma down), generation (tests/api/test_chat.py), a database connection that drops. The
error names the interaction; an operator sees what users asked during an outage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import select

from rag_loop.api import create_app
from rag_loop.corpus.ingest import ingest
from rag_loop.db.models import Interaction
from rag_loop.services import Services
from rag_loop.settings import Settings
from tests.conftest import CORPUS, PG_ADMIN, LiveServer, assert_error_shape
from tests.servers import chroma_server

QUESTION = "How do I unlock the bike if my phone is dead?"


def test_an_ask_that_fails_in_retrieval_is_logged(
    make_settings: Callable[..., Settings], embedder: Any, tmp_path: Path
) -> None:
    chroma, port = chroma_server(tmp_path / "chroma", tmp_path)
    settings = make_settings(chroma={"host": "127.0.0.1", "port": port})
    services = Services.from_settings(settings, embedder=embedder)
    try:
        ingest(services, CORPUS, actor="test")
        with LiveServer(create_app(settings, services)) as live:
            assert httpx.post(f"{live.url}/v1/ask", json={"query": QUESTION}).status_code == 200
            chroma.stop()
            response = httpx.post(f"{live.url}/v1/ask", json={"query": QUESTION}, timeout=120)
            error = assert_error_shape(response, 503, "backend_unavailable")
            [logged] = [d for d in error["details"] if "interaction_id" in d]
            assert logged["failed_stage"] == "retrieval"
            chat = httpx.post(
                f"{live.url}/v1/chat/completions",
                json={"model": "rag-loop", "messages": [{"role": "user", "content": QUESTION}]},
                timeout=120,
            )
            assert chat.status_code == 503 and "logged as interaction" in chat.text
        with services.sessions() as session:
            rows = session.scalars(select(Interaction).order_by(Interaction.created_at)).all()
        assert [(r.status, r.failed_stage) for r in rows] == [
            ("ok", None),
            ("error", "retrieval"),
            ("error", "retrieval"),
        ]
        failed = rows[1]
        assert failed.id == logged["interaction_id"] and failed.query == QUESTION
        assert failed.error and failed.error.startswith("backend_unavailable")
        assert failed.index_version_id == rows[0].index_version_id  # what it tried to serve
    finally:
        chroma.stop()
        services.close()


def test_a_dropped_database_connection_is_never_a_500(
    make_settings: Callable[..., Settings], embedder: Any, postgres_url: str
) -> None:
    """The server's connections are killed under it (a restart, a failover): an ask is
    answered (the pool reconnects, or the write is retried), or refused with the documented
    503; never a 500, and the service recovers by itself."""
    settings = make_settings(database={"url": postgres_url})
    services = Services.from_settings(settings, embedder=embedder)
    database = postgres_url.rsplit("/", 1)[1]
    try:
        ingest(services, CORPUS, actor="test")
        with LiveServer(create_app(settings, services)) as live:
            assert httpx.post(f"{live.url}/v1/ask", json={"query": QUESTION}).status_code == 200
            statuses = []
            for _ in range(3):
                with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (database,),
                    )
                response = httpx.post(f"{live.url}/v1/ask", json={"query": QUESTION})
                statuses.append(response.status_code)
                if response.status_code != 200:
                    assert_error_shape(response, 503, "backend_unavailable")
            assert httpx.post(f"{live.url}/v1/ask", json={"query": QUESTION}).status_code == 200
        with services.sessions() as session:
            answered = session.scalars(select(Interaction.status)).all()
        assert answered.count("ok") == 2 + statuses.count(200), statuses
    finally:
        services.close()
