"""Evaluation runs on the sample corpus with real Ragas metrics, stored in SQL (SQLite and
PostgreSQL) and in a real MLflow store, read back from both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from rag_loop.db.models import EvalRun, EvalSample
from rag_loop.errors import InvalidInput, NotFound
from rag_loop.evaluation import service
from rag_loop.evaluation.datasets import load_golden
from rag_loop.evaluation.metrics import groundedness_proxy, ranking_metrics
from rag_loop.evaluation.runner import EvalRequest, run_evaluation
from rag_loop.feedback.schemas import FeedbackIn
from rag_loop.feedback.service import submit_feedback
from rag_loop.interactions.ask import ask
from rag_loop.services import Services
from tests.conftest import QUESTIONS


def test_ranking_metrics_match_hand_computed_values() -> None:
    rankings = {"a": ["x", "rel", "y"], "b": ["r1", "z", "r2"], "c": ["n1", "n2"]}
    references = {"a": ["rel"], "b": ["r1", "r2"], "c": ["gone"]}
    scores = ranking_metrics(rankings, references, 10)
    assert scores["a"]["mrr_at_10"] == pytest.approx(0.5)
    assert scores["a"]["ndcg_at_10"] == pytest.approx(1 / 1.5849625, rel=1e-6)  # 1/log2(3)
    assert scores["b"]["recall_at_10"] == 1.0 and scores["b"]["mrr_at_10"] == 1.0
    idcg = 1 + 1 / 1.5849625
    assert scores["b"]["ndcg_at_10"] == pytest.approx((1 + 1 / 2) / idcg, rel=1e-6)
    assert scores["c"] == {"ndcg_at_10": 0.0, "recall_at_10": 0.0, "mrr_at_10": 0.0}
    cut = ranking_metrics({"a": ["x", "y", "rel"]}, {"a": ["rel"]}, 2)
    assert cut["a"]["mrr_at_2"] == 0.0 and cut["a"]["recall_at_2"] == 0.0


def test_graded_references_weigh_ndcg_by_grade_as_trec_eval_does() -> None:
    """BEIR's graded qrels (TREC-COVID, NFCorpus): trec_eval's gain is the grade itself;
    Recall and MRR count any grade of 1 or more, and a grade of 0 is not relevant."""
    graded = {"a": {"x": 2, "y": 1, "n": 0}}
    worse = ranking_metrics({"a": ["n", "y", "x"]}, graded, 10)["a"]
    dcg = 1 / 1.5849625 + 2 / 2  # y at rank 2, x at rank 3
    idcg = 2 + 1 / 1.5849625
    assert worse["ndcg_at_10"] == pytest.approx(dcg / idcg, rel=1e-6)
    assert worse["recall_at_10"] == 1.0 and worse["mrr_at_10"] == pytest.approx(0.5)
    better = ranking_metrics({"a": ["n", "x", "y"]}, graded, 10)["a"]
    assert better["ndcg_at_10"] > worse["ndcg_at_10"]
    binary = ranking_metrics({"a": ["n", "y", "x"]}, {"a": ["x", "y"]}, 10)["a"]
    assert binary == ranking_metrics({"a": ["n", "x", "y"]}, {"a": ["x", "y"]}, 10)["a"]


def test_the_groundedness_proxy_embeds_only_what_is_not_quoted(embedder: Any) -> None:
    context = "The Kestrel charges in two hours. Hold the button for ten seconds to reset it."
    quoted = "Hold the button for ten seconds to reset it."
    paraphrase = "To reset it, press and hold the button for ten seconds."
    unrelated = "Penguins live in the southern hemisphere."
    assert groundedness_proxy(embedder, quoted, [context], 0.6) == 1.0
    cut = "Hold the button for ten"  # an extractive answer may cut a long sentence short
    assert groundedness_proxy(embedder, f"{cut} [1]", [context.replace(".", " [2].")], 0.9) == 1.0
    assert groundedness_proxy(embedder, f"{quoted} {unrelated}", [context], 0.6) == 0.5
    assert groundedness_proxy(embedder, f"{paraphrase} {unrelated}", [context], 0.6) == 0.5
    assert groundedness_proxy(embedder, unrelated, [], 0.6) == 0.0


def test_quoted_sentences_that_run_together_are_quoted_without_the_model(embedder: Any) -> None:
    # a quoted heading without end punctuation runs into the next quoted sentence once the
    # citation marks are gone; no cosine reaches 1.01, so only the quote check can pass it
    first = "Abstract.METHODS &\nWe treated 135 patients with a new screw."
    second = "The Kestrel charges in two hours. It resets when held."
    answer = "Abstract.METHODS & [1] The Kestrel charges in two hours. [2]"
    assert groundedness_proxy(embedder, answer, [first, second], 1.01) == 1.0
    # each piece must be a whole sentence of a context: fragments joined by citation marks
    # are claims of their own, and go to the model
    fragments = "We treated [1] in two hours. [2]"
    assert groundedness_proxy(embedder, fragments, [first, second], 1.01) == 0.0
    # a fragment of a letter or two between the marks is no sentence either
    assert groundedness_proxy(embedder, "Abstract.METHODS & [1] ok [2]", [first], 1.01) == 0.0


def test_golden_run_without_judge_lands_in_sql_and_mlflow(
    kestrel: Services, db_backend: str
) -> None:
    outcome = run_evaluation(kestrel, EvalRequest(source="golden", golden_path=QUESTIONS))
    metrics = outcome.metrics
    assert outcome.status == "done" and outcome.n_samples == 98
    assert outcome.primary_metric == "ndcg_at_10"
    # the default embedder finds the right document of nearly every sample question
    assert metrics["ndcg_at_10"] > 0.85 and metrics["recall_at_10"] > 0.95
    assert 0 < metrics["id_context_precision"] < 1 and metrics["id_context_recall"] > 0.9
    assert 0 < metrics["string_similarity"] < 1 and 0 < metrics["rouge_l"] < 1
    # extractive answers quote the sources: the proxy finds every sentence supported
    assert metrics["groundedness_proxy"] == 1.0 and metrics["hallucination_rate_proxy"] == 0.0
    assert "faithfulness" not in metrics  # no judge configured: no LLM metric, no fake

    with kestrel.sessions() as session:
        run = session.get(EvalRun, outcome.run_id)
        assert run is not None and run.status == "done" and run.judge == "none"
        assert run.metrics == metrics
        assert run.dataset == "questions" and run.dataset_hash == outcome.params["dataset_hash"]
        assert run.index_version_id == 1 and run.embedder_version == kestrel.embedder.version
        samples = session.scalars(
            select(EvalSample).where(EvalSample.run_id == run.id).order_by(EvalSample.position)
        ).all()
        assert len(samples) == 98 and samples[0].sample_id == "q001"
        assert samples[0].scores["ndcg_at_10"] is not None and samples[0].answer

    recorded = kestrel.tracker.get_run(str(outcome.mlflow_run_id))
    assert recorded.info.status == "FINISHED"
    assert recorded.data.metrics == pytest.approx(metrics)
    assert recorded.data.params["dataset_hash"] == outcome.params["dataset_hash"]
    assert recorded.data.params["index_version"] == "1"
    assert recorded.data.params["judge"] == "none"
    artifacts = {a.path for a in kestrel.tracker.client.list_artifacts(recorded.info.run_id)}
    assert {"samples.json", "samples.csv"} <= artifacts


def test_production_window_uses_feedback_labels_and_corrections(kestrel: Services) -> None:
    answers = [ask(kestrel, q) for q in ("How much is the theft excess?", "Can I pause?")]
    first, second = answers
    submit_feedback(
        kestrel,
        FeedbackIn.model_validate(
            {
                "interaction_id": first.interaction_id,
                "thumb": "up",
                "chunk_labels": [
                    {"chunk_id": first.sources[0]["chunk_id"], "relevant": True},
                    {"chunk_id": first.sources[1]["chunk_id"], "relevant": False},
                ],
            }
        ),
        actor="test",
    )
    submit_feedback(
        kestrel,
        FeedbackIn.model_validate({"interaction_id": second.interaction_id, "thumb": "down"}),
        actor="test",
    )
    outcome = run_evaluation(kestrel, EvalRequest(source="production", window=10))
    metrics = outcome.metrics
    assert outcome.n_samples == 2 and outcome.primary_metric == "id_context_precision"
    # one labelled answer: 1 relevant chunk among the 5 distinct chunks shown
    assert metrics["id_context_precision"] == pytest.approx(0.2)
    assert metrics["id_context_recall"] == 1.0 and metrics["id_context_precision_scored"] == 1
    assert metrics["thumbs_up_rate"] == 0.5 and metrics["thumbs_count"] == 2
    view = service.get(kestrel, outcome.run_id)
    by_id = {s["interaction_id"]: s for s in view["samples"]}
    assert by_id[second.interaction_id]["scores"]["id_context_precision"] is None


def test_a_golden_set_with_a_byte_order_mark_loads_and_bytes_not_utf8_are_named(
    tmp_path: Path,
) -> None:
    path = tmp_path / "golden.jsonl"
    first = '{"question": "How long does the Kestrel charge?", "document_ids": ["a"]}\n'
    path.write_bytes(b"\xef\xbb\xbf" + first.encode())  # as some editors on Windows write
    assert [item.query for item in load_golden(path).items] == ["How long does the Kestrel charge?"]
    path.write_bytes(first.encode() + b'{"question": "caf\xe9", "document_ids": ["a"]}\n')
    with pytest.raises(InvalidInput) as caught:
        load_golden(path)
    assert {"line": 2, "problem": "not UTF-8 text (invalid continuation byte)"} in (
        caught.value.details
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "is empty"),
        ('{"question": "q"}\n', "give a reference"),
        ("not json\n", "not JSON"),
        ('{"question": "q", "document_ids": "doc"}\n', "must be a list"),
    ],
)
def test_bad_golden_sets_fail_the_run_with_their_reason(
    kestrel: Services, tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "golden.jsonl"
    path.write_text(content)
    with pytest.raises(InvalidInput, match=problem) as caught:
        run_evaluation(kestrel, EvalRequest(source="golden", golden_path=path))
    run_id = caught.value.details[-1]["eval_run_id"]
    with kestrel.sessions() as session:
        run = session.get(EvalRun, run_id)
        assert run is not None and run.status == "failed" and problem in str(run.error)
        assert run.samples == []
    recorded = kestrel.tracker.get_run(str(run.mlflow_run_id))
    assert recorded.info.status == "FAILED"
    assert problem in recorded.data.tags["rag_loop.error"]


def test_unknown_index_version_fails_the_run(kestrel: Services) -> None:
    with pytest.raises(NotFound, match="no index version 42"):
        run_evaluation(kestrel, EvalRequest(golden_path=QUESTIONS, index_version_id=42))
    with kestrel.sessions() as session:
        run = session.scalars(select(EvalRun)).one()
        assert run.status == "failed" and "no index version 42" in str(run.error)


def test_runs_compare_by_index_version(services: Services, tmp_path: Path) -> None:
    import shutil

    from rag_loop.corpus.ingest import ingest
    from tests.conftest import CORPUS

    docs = tmp_path / "docs"
    shutil.copytree(CORPUS, docs)
    ingest(services, docs, actor="test")
    run_evaluation(services, EvalRequest(golden_path=QUESTIONS))
    (docs / "insurance" / "theft.md").unlink()  # a worse corpus: index version 2
    ingest(services, docs, actor="test")
    run_evaluation(services, EvalRequest(golden_path=QUESTIONS))
    rows = service.compare(services, "questions")
    assert [r["index_version"] for r in rows] == [1, 2]
    assert rows[1]["metrics"]["recall_at_10"] < rows[0]["metrics"]["recall_at_10"]
