"""Every serving process loads ahead what serves or may serve next (`rag_loop.loop.warm`),
so no ask pays for loading a version that a cycle, an approval or a rollback in another
process made serve. A second `Services` on the same database, Chroma and models is such a
process: it shares nothing in memory with the first."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from rag_loop.api.app import create_app
from rag_loop.errors import BackendUnavailable
from rag_loop.interactions.ask import ask
from rag_loop.loop import cycle
from rag_loop.loop.warm import Ahead, warm
from rag_loop.services import Services
from tests.conftest import LiveServer
from tests.loop.test_cycle import ALWAYS_PASS

QUESTION = "How do I report a stolen bike?"


def _loaded(services: Services) -> tuple[int, int]:
    """Encoders this process loaded from their folders, BM25 sides it built."""
    return services.embedders.loads, services.lexical.builds


@pytest.mark.slow
def test_another_process_serves_an_approval_and_a_rollback_with_nothing_left_to_load(
    with_feedback: Callable[..., Services], loop_services: Callable[..., Any]
) -> None:
    services = with_feedback(loop={**ALWAYS_PASS, "require_approval": True})
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert view["state"] == "awaiting_approval", view["error"]
    old, new = view["champion_index_version_id"], view["candidate_index_version_id"]

    other = loop_services()  # another API process: nothing loaded but the base model
    assert _loaded(other) == (0, 0)
    # the champion's BM25 side, the candidate's fine-tuned encoder and BM25 side
    assert warm(other).loaded == [old, new]
    assert _loaded(other) == (1, 2)
    assert warm(other).loaded == [old, new] and _loaded(other) == (1, 2)  # nothing twice

    cycle.approve(services, view["id"], actor="reviewer@example.com")
    answer = ask(other, QUESTION)
    assert answer.versions["index_version"] == new
    assert answer.versions["embedder_version"] == view["embedder"]["version"]
    assert _loaded(other) == (1, 2)  # the approval's first ask here loaded nothing

    # the rollback target is loaded too: a rollback serves at once here
    assert warm(other).loaded == [new, old] and _loaded(other) == (1, 2)
    cycle.rollback(services, actor="test", reason="test")
    again = ask(other, QUESTION)
    assert again.versions["index_version"] == old
    assert _loaded(other) == (1, 2)

    # without loading ahead, the first ask of a process loads what it serves
    cold = loop_services()
    ask(cold, QUESTION)  # the champion is the old version again: its BM25 side only
    assert _loaded(cold) == (0, 1)


@pytest.mark.slow
def test_the_api_loads_what_serves_before_its_first_request_and_what_another_process_offers(
    with_feedback: Callable[..., Services], loop_services: Callable[..., Any]
) -> None:
    services = with_feedback(loop={**ALWAYS_PASS, "require_approval": True})
    api = loop_services(retrieval={"warm_seconds": 0.2})
    with (
        LiveServer(create_app(api.settings, api)) as live,
        httpx.Client(base_url=live.url, timeout=60) as client,
    ):
        assert _loaded(api) == (0, 1)  # the champion's BM25 side, before any request
        view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
        assert view["state"] == "awaiting_approval", view["error"]
        deadline = time.monotonic() + 60
        while _loaded(api) != (1, 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _loaded(api) == (1, 2)  # the schedule loaded the candidate another made
        cycle.approve(services, view["id"], actor="reviewer@example.com")
        answer = client.post("/v1/ask", json={"query": QUESTION})
        assert answer.status_code == 200
        assert answer.json()["versions"]["index_version"] == view["candidate_index_version_id"]
        assert _loaded(api) == (1, 2)


def test_a_version_that_cannot_load_is_skipped_and_its_ask_says_why(
    kestrel: Services,
    make_settings: Callable[..., Any],
    embedder: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with kestrel.sessions() as session:
        from rag_loop.index.versions import champion

        collection = champion(session).collection_name
    kestrel.store.drop(collection)
    other = Services.from_settings(make_settings(), embedder=embedder)
    try:
        warmed = warm(other)  # skipped with why, not raised
        assert warmed.loaded == [] and list(warmed.failed) == [1]
        assert "missing" in warmed.failed[1]
        with pytest.raises(BackendUnavailable, match="missing"):
            ask(other, QUESTION)
        # the schedule's job says so once, not on every pass, and once when it works again
        job = Ahead(other)
        with caplog.at_level(logging.INFO, logger="rag_loop.loop.warm"):
            for _ in range(3):
                job()
            kestrel.store.create(collection, {"restored": True})  # Chroma has it again, empty
            for _ in range(2):
                job()
        assert [r.getMessage().split(":")[0] for r in caplog.records] == [
            "index version 1 failed (logged again when this changes)",
            "index version 1 works again",
        ]
    finally:
        other.close()
