"""The timeline benchmark's look at answers with a judge: the service's own Ragas
faithfulness call on an answer the service gave, with SmolLM2 in-process as the judge, and
what the benchmark's table makes of it. Without a judge it measures the proxy alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from evals.bench_timeline import ASKS_FIELDS, FaithfulnessJudge, answer_quality, daily
from rag_loop.errors import BackendUnavailable
from rag_loop.interactions.ask import ask
from rag_loop.services import Services
from rag_loop.settings import Settings
from tests.conftest import free_port
from tests.evaluation.test_judge import judged_services


def run_with(judge: FaithfulnessJudge | None, faithfulness: float | None) -> dict[str, Any]:
    """A run of one sampled answer, as `run_arm` stores it."""
    ask_row = [1.0, 0.8, 1.0, "up", 0.75, "pubmedqa", 0, 1, faithfulness]
    return {
        "asks_fields": ASKS_FIELDS,
        "asks": [ask_row],
        "judge": judge.record() if judge is not None else None,
    }


@pytest.mark.slow
@pytest.mark.llm
def test_a_configured_judge_scores_the_faithfulness_of_what_was_served(
    make_settings: Callable[..., Settings], embedder: Any, llama_server: str
) -> None:
    # SmolLM2 behind llama_cpp.server, over real HTTP: two answers, one event loop
    services = judged_services(
        make_settings, embedder, llama_server, metrics=["faithfulness"], max_tokens=256
    )
    judge = None
    try:
        judge = FaithfulnessJudge.configured(services)
        assert judge is not None and judge.name == "openai:SmolLM2-135M-Instruct"
        values = [
            judge.score(question, ask(services, question, client="timeline"))
            for question in (
                "What does the Kestrel monthly fee cover?",
                "Is there a deposit or purchase price for a Kestrel bike?",
            )
        ]
    finally:
        if judge is not None:
            judge.close()
        services.close()
    assert judge.judged == 2
    # whatever SmolLM2 says: a score in [0, 1] or a failure counted by its kind, not both;
    # the server is up, so nothing is "unavailable" (a new event loop per answer made the
    # second call fail so: the client's pooled connection belonged to the closed loop)
    scored = [v for v in values if v is not None]
    assert all(0.0 <= v <= 1.0 for v in scored)
    assert len(scored) + sum(judge.failures.values()) == 2, judge.first_failure
    assert "unavailable" not in judge.failures, judge.first_failure
    run = run_with(judge, values[0])
    assert daily(run, 1)[0]["faithfulness"] == values[0]
    assert answer_quality(run).startswith("0.750 / ")
    assert answer_quality(run).endswith(
        f"({int(values[0] is not None)} of 2 scored, openai:SmolLM2-135M-Instruct)"
    )


def test_without_a_judge_only_the_proxy_is_measured(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    services = Services.from_settings(make_settings(), embedder=embedder)
    try:
        assert FaithfulnessJudge.configured(services) is None
    finally:
        services.close()
    run = run_with(None, None)
    assert daily(run, 1)[0]["faithfulness"] is None
    assert answer_quality(run) == "0.750 / no judge"


def test_a_judge_that_is_not_there_stops_the_arm_before_the_stream(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    settings = make_settings(
        judge={"backend": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"}
    )
    services = Services.from_settings(settings, embedder=embedder)
    try:
        with pytest.raises(BackendUnavailable, match="cannot be reached"):
            FaithfulnessJudge.configured(services)
    finally:
        services.close()
