"""The generator and the judge share one settings shape (`ChatModelSettings`) and one
factory; the judge's settings before they became their own group still work."""

from __future__ import annotations

import pytest

from rag_loop.errors import InvalidInput
from rag_loop.evaluation.judge import make_judge
from rag_loop.generation.chat_models import make_chat_model
from rag_loop.settings import ChatModelSettings, Settings


def test_the_generator_and_the_judge_have_one_shape() -> None:
    settings = Settings()
    assert isinstance(settings.generator, ChatModelSettings)
    assert isinstance(settings.judge, ChatModelSettings)
    shared = set(ChatModelSettings.model_fields)
    assert shared <= set(type(settings.generator).model_fields)
    assert shared <= set(type(settings.judge).model_fields)
    assert settings.judge.backend == "none"
    assert make_judge(settings.judge) is None


def test_the_judge_group_reads_its_own_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_LOOP_JUDGE_BACKEND", "openai")
    monkeypatch.setenv("RAG_LOOP_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("RAG_LOOP_JUDGE_METRICS", '["faithfulness"]')
    monkeypatch.setenv("RAG_LOOP_JUDGE_MAX_TOKENS", "64")
    judge = Settings().judge
    assert (judge.backend, judge.base_url, judge.metrics, judge.max_tokens) == (
        "openai",
        "http://127.0.0.1:9/v1",
        ["faithfulness"],
        64,
    )
    built = make_judge(judge)
    assert built is not None and built.name == "openai:SmolLM2-135M-Instruct"


def test_the_old_judge_names_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_LOOP_EVALUATION_JUDGE", "openai")
    monkeypatch.setenv("RAG_LOOP_EVALUATION_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("RAG_LOOP_EVALUATION_JUDGE_METRICS", '["faithfulness"]')
    monkeypatch.setenv("RAG_LOOP_EVALUATION_K", "7")  # the evaluation group keeps the rest
    settings = Settings()
    assert settings.judge.backend == "openai"
    assert settings.judge.base_url == "http://127.0.0.1:9/v1"
    assert settings.judge.metrics == ["faithfulness"]
    assert settings.evaluation.k == 7
    monkeypatch.setenv("RAG_LOOP_JUDGE_BASE_URL", "http://127.0.0.1:8/v1")  # the new name wins
    assert Settings().judge.base_url == "http://127.0.0.1:8/v1"
    # and as keyword arguments
    monkeypatch.delenv("RAG_LOOP_EVALUATION_JUDGE")
    judge = Settings(evaluation={"judge": "llamacpp", "judge_max_tokens": 99}).judge
    assert (judge.backend, judge.max_tokens) == ("llamacpp", 99)


def test_the_factory_names_the_role_and_its_variables() -> None:
    spec = ChatModelSettings(backend="openai")  # no base_url
    with pytest.raises(InvalidInput, match="judge backend 'openai' needs RAG_LOOP_JUDGE_BASE_URL"):
        make_chat_model("judge", spec, "RAG_LOOP_JUDGE_")
    with pytest.raises(InvalidInput, match="generator backend 'extractive' is not a chat model"):
        make_chat_model("generator", ChatModelSettings(backend="extractive"), "RAG_LOOP_GENERATOR_")
