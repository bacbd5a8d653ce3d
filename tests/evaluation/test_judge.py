"""Ragas' LLM metrics with real judges over real HTTP: SmolLM2-135M behind llama_cpp.server
(its output constrained to Ragas' schemas by a llama.cpp grammar), a local
OpenAI-compatible server that answers garbage, and a judge that is not there at all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rag_loop.corpus.ingest import ingest
from rag_loop.db.models import EvalRun
from rag_loop.errors import BackendUnavailable
from rag_loop.evaluation.datasets import EvalItem
from rag_loop.evaluation.judge import make_judge
from rag_loop.evaluation.metrics import SampleResult, judge_metric_calls, score_with_judge
from rag_loop.evaluation.runner import EvalRequest, run_evaluation
from rag_loop.services import Services
from rag_loop.settings import Settings
from tests.conftest import CORPUS, QUESTIONS, LiveServer, free_port

JUDGED = ("faithfulness", "answer_relevancy", "llm_context_precision", "llm_context_recall")


def judged_services(
    make_settings: Callable[..., Settings], embedder: Any, base_url: str, **judge: Any
) -> Services:
    settings = make_settings(
        judge={
            "backend": "openai",
            "base_url": base_url,
            "response_format": "json_object",
            "concurrency": 1,
            **judge,
        }
    )
    services = Services.from_settings(settings, embedder=embedder)
    ingest(services, CORPUS, actor="test")
    return services


@pytest.mark.slow
@pytest.mark.llm
def test_smollm2_judge_scores_land_in_sql_and_mlflow(
    make_settings: Callable[..., Settings], embedder: Any, llama_server: str
) -> None:
    services = judged_services(make_settings, embedder, llama_server, max_tokens=256)
    try:
        outcome = run_evaluation(services, EvalRequest(golden_path=QUESTIONS, limit=2))
    finally:
        services.close()
    metrics = outcome.metrics
    assert outcome.params["judge"] == "openai:SmolLM2-135M-Instruct"
    for name in JUDGED:
        # every applicable sample is either scored or counted as a failure, never both
        assert metrics[f"{name}_scored"] + metrics[f"{name}_failures"] == 2, name
        if metrics[f"{name}_scored"]:
            assert 0.0 <= metrics[name] <= 1.0
        else:
            assert name not in metrics
    assert sum(metrics[f"{n}_scored"] for n in JUDGED) > 0, outcome.failures
    if "faithfulness" in metrics:
        assert metrics["hallucination_rate"] in (0.0, 0.5, 1.0)
    with services.sessions() as session:
        run = session.get(EvalRun, outcome.run_id)
        assert run is not None and run.metrics == metrics and run.failures == outcome.failures
        assert run.judge == "openai:SmolLM2-135M-Instruct"
        for sample in run.samples:
            for name in JUDGED:
                assert (sample.scores.get(name) is None) != (name not in sample.failures)
    recorded = services.tracker.get_run(str(outcome.mlflow_run_id))
    assert recorded.data.metrics == pytest.approx(metrics)
    assert recorded.data.params["judge"] == "openai:SmolLM2-135M-Instruct"


def garbage_app() -> Starlette:
    """An OpenAI-compatible chat endpoint whose every answer is unusable as a verdict."""
    replies = iter(
        [
            "Sure! Here is my verdict: the answer is great.",
            '{"verdict": "maybe", "statements": 12}',
            "```json\n{ broken",
        ]
        * 1000
    )

    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(
            {
                "id": "chatcmpl-garbage",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "garbage"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": next(replies)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


@pytest.fixture
def garbage_judge() -> Iterator[str]:
    with LiveServer(garbage_app()) as live:
        yield f"{live.url}/v1"


def test_a_judge_that_returns_garbage_is_counted_as_failures_not_scores(
    make_settings: Callable[..., Settings], embedder: Any, garbage_judge: str
) -> None:
    services = judged_services(make_settings, embedder, garbage_judge)
    try:
        outcome = run_evaluation(services, EvalRequest(golden_path=QUESTIONS, limit=4))
    finally:
        services.close()
    metrics = outcome.metrics
    for name in JUDGED:
        assert name not in metrics, f"{name} got a score from garbage"
        assert metrics[f"{name}_scored"] == 0
        assert metrics[f"{name}_failures"] == 4
        assert outcome.failures[name] == {"unparsable": 4}
    assert "hallucination_rate" not in metrics  # no verdict, no rate
    assert metrics["ndcg_at_10"] > 0.5  # the non-LLM metrics are unaffected
    with services.sessions() as session:
        run = session.get(EvalRun, outcome.run_id)
        assert run is not None and run.status == "done"
        for sample in run.samples:
            assert all(sample.scores.get(n) is None for n in JUDGED)
            assert all(sample.failures[n].startswith("unparsable:") for n in JUDGED)


def test_a_judge_that_is_down_fails_the_run_with_its_reason(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    services = judged_services(make_settings, embedder, f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(BackendUnavailable, match="cannot be reached") as caught:
            run_evaluation(services, EvalRequest(golden_path=QUESTIONS, limit=2))
        run_id = caught.value.details[-1]["eval_run_id"]
        with services.sessions() as session:
            run = session.get(EvalRun, run_id)
            assert run is not None and run.status == "failed"
            assert "cannot be reached" in str(run.error) and run.samples == []
    finally:
        services.close()


@pytest.mark.slow
@pytest.mark.llm
def test_in_process_llamacpp_judge_scores_faithfulness(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    settings = make_settings(
        judge={"backend": "llamacpp", "metrics": ["faithfulness"], "max_tokens": 256}
    )
    services = Services.from_settings(settings, embedder=embedder)
    try:
        ingest(services, CORPUS, actor="test")
        outcome = run_evaluation(services, EvalRequest(golden_path=QUESTIONS, limit=1))
    finally:
        services.close()
    assert outcome.params["judge"] == "llamacpp:SmolLM2-135M-Instruct.Q4_1"
    metrics = outcome.metrics
    assert metrics["faithfulness_scored"] + metrics["faithfulness_failures"] == 1
    assert "answer_relevancy_scored" not in metrics  # only the configured metric ran


@pytest.mark.slow
@pytest.mark.llm
def test_a_judge_reaches_its_server_from_one_event_loop_after_another(
    make_settings: Callable[..., Settings], embedder: Any, llama_server: str
) -> None:
    """Each evaluation run judges in an event loop of its own (asyncio.run), in one
    process: no run may meet a connection that an earlier run's loop left behind."""
    settings = make_settings(
        judge={
            "backend": "openai",
            "base_url": llama_server,
            "response_format": "json_object",
            "metrics": ["faithfulness"],
            "max_tokens": 256,
        }
    )
    item = EvalItem(
        sample_id="q1",
        query="What does the Kestrel monthly fee cover?",
        answer="The fee covers the bike and its repairs [1].",
        retrieved=[{"chunk_id": "c1", "document_id": "d1", "text": "The fee covers the bike."}],
    )
    for run in range(2):  # two runs, as two evaluations in one API process
        judge = make_judge(settings.judge)
        assert judge is not None
        call = judge_metric_calls(judge, embedder, ["faithfulness"])
        result = SampleResult()
        asyncio.run(score_with_judge([item], [result], call, concurrency=1))
        failure = result.failures.get("faithfulness", "")
        assert not failure.startswith("unavailable"), (run, failure)
        # whatever SmolLM2 says: a score or a failure counted by its kind, never both
        assert ("faithfulness" in result.scores) != bool(failure), result
