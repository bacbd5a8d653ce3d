"""The training set built from feedback: leak guard, held-out split, label conflicts,
content hash, MLflow dataset."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rag_loop.corpus.ingest import ingest
from rag_loop.db.models import TrainingSet
from rag_loop.feedback.schemas import ChunkLabel, FeedbackIn
from rag_loop.feedback.service import submit_feedback
from rag_loop.index import expansions
from rag_loop.index.expansions import ASSOCIATED
from rag_loop.index.versions import champion
from rag_loop.interactions.ask import ask
from rag_loop.services import Services
from rag_loop.training.dataset import build_training_set, built_on, is_heldout, normalise
from rag_loop.training.finetune import read_examples
from tests.conftest import CORPUS
from tests.loop.conftest import GOLDEN_SHARE, questions, replay


def _champion(services: Services):  # type: ignore[no-untyped-def]
    with services.sessions() as session:
        index = champion(session)
        session.expunge(index)
    return index


def _anchors(path: Path) -> list[str]:
    return [json.loads(line)["anchor"] for line in path.read_text().splitlines()]


def test_normalise_ignores_case_punctuation_and_spacing() -> None:
    assert normalise("  What's the  FEE?") == normalise("whats the fee")
    assert normalise("\uff26\uff55\uff4c\uff4c") == "full"  # fullwidth letters: NFKC
    assert normalise("fee") != normalise("fees")


def test_golden_and_heldout_queries_never_enter_training(
    loop_services: Callable[..., Services],
) -> None:
    services = loop_services(training={"holdout_share": 0.3, "validation_share": 0.2})
    ingest(services, CORPUS, actor="test")
    golden = questions()[:GOLDEN_SHARE]
    users = questions()[GOLDEN_SHARE:]
    replay(services, users)
    # users also ask golden questions, reworded only in case, punctuation and spacing
    replay(services, golden[:10], rewrite=lambda q: "  " + q.upper().rstrip("?") + " !! ")
    replay(services, golden[10:20])  # and verbatim

    built = build_training_set(services, _champion(services))
    assert built.created and built.n_examples > 0
    anchors = {normalise(a) for a in _anchors(built.path)}
    guarded = {normalise(q["question"]) for q in golden}
    assert not anchors & guarded, "a golden question leaked into training"
    assert built.stats["leak_excluded_queries"] == 20

    assert built.heldout_path is not None
    heldout = [json.loads(line) for line in built.heldout_path.read_text().splitlines()]
    assert heldout and built.n_heldout == len(heldout)
    held = {normalise(row["question"]) for row in heldout}
    assert not anchors & held, "a held-out query leaked into training"
    assert not held & guarded
    # the split is a stable function of the normalised query
    assert all(is_heldout(q, 0.3) for q in held)
    assert not any(is_heldout(q, 0.3) for q in anchors)
    # held-out rows name the documents users marked or pointed at
    by_question = {normalise(q["question"]): set(q["document_ids"]) for q in users}
    for row in heldout:
        assert set(row["document_ids"]) <= by_question[normalise(row["question"])]
    # training validates on a share of its own queries, a stable function of the query,
    # one query's examples always on one side
    rows = [json.loads(line) for line in built.path.read_text().splitlines()]
    parts: dict[str, set[str]] = {}
    for row in rows:
        parts.setdefault(normalise(row["anchor"]), set()).add(row["part"])
    assert all(len(p) == 1 for p in parts.values())
    validation = {q for q, p in parts.items() if p == {"validation"}}
    assert 0 < len(validation) < len(parts)
    assert not validation & held


def test_same_feedback_gives_the_same_set_and_it_is_in_mlflow(
    loop_services: Callable[..., Services],
) -> None:
    services = loop_services()
    ingest(services, CORPUS, actor="test")
    replay(services, questions()[GOLDEN_SHARE:])
    first = build_training_set(services, _champion(services))
    again = build_training_set(services, _champion(services))
    assert again.content_hash == first.content_hash and not again.created
    assert again.training_set_id == first.training_set_id
    assert first.path.name == "train.jsonl" and first.content_hash[:16] in str(first.path)
    rows = [json.loads(line) for line in first.path.read_text().splitlines()]
    # every example: the query, a positive and one hard negative (FAST_TRAINING), with lineage
    assert all(r["anchor"] and r["positive"] and r["negative_1"] for r in rows)
    assert all(r["positive"] != r["negative_1"] for r in rows)
    assert all(r["interaction_ids"] for r in rows)

    with services.sessions() as session:
        row = session.get_one(TrainingSet, first.training_set_id)
        run = services.tracker.get_run(row.mlflow_run_id)
    assert run.data.params["content_hash"] == first.content_hash
    assert run.data.metrics["examples"] == len(rows)
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == first.content_hash[:36]
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"


def test_conflicting_labels_follow_the_documented_rule(
    loop_services: Callable[..., Services],
) -> None:
    """Latest label per interaction wins; across interactions of one (normalised) query the
    majority decides and a tie drops the chunk."""
    services = loop_services(training={"hard_negatives": 0, "holdout_share": 0.0})
    ingest(services, CORPUS, actor="test")
    question = "How do I report a stolen Kestrel bike?"
    answers = [ask(services, q) for q in (question, question.lower(), question + "!!")]
    first, second = answers[0].sources[0]["chunk_id"], answers[0].sources[1]["chunk_id"]

    def label(n: int, chunk: str, relevant: bool, key: str) -> None:
        answer = answers[n]
        submit_feedback(
            services,
            FeedbackIn(
                interaction_id=answer.interaction_id,
                token=answer.feedback_token,
                idempotency_key=key,
                chunk_labels=[ChunkLabel(chunk_id=chunk, relevant=relevant)],
            ),
            actor="test",
        )

    # `first`: relevant twice, not relevant once -> a positive
    label(0, first, True, "a")
    label(1, first, True, "b")
    label(2, first, False, "c")
    # `second`: one user says no then changes their mind (latest wins: yes), another says no:
    # one vote each way -> a tie, dropped
    label(0, second, False, "d")
    label(0, second, True, "e")
    label(1, second, False, "f")

    built = build_training_set(services, _champion(services))
    rows = [json.loads(line) for line in built.path.read_text().splitlines()]
    assert [r["positive_chunk_id"] for r in rows] == [first]
    assert built.stats["conflicting_labels_dropped"] == 1
    assert built.stats["queries_without_positive"] == 0 and built.n_queries == 1


def test_an_answer_is_built_on_its_first_citation_else_the_first_chunk_shown() -> None:
    """One rule for the thumbs' vote and for query association; a rank that was not
    recorded names no chunk rather than a guess."""
    shown = {1: "a", 2: "b", 3: "c"}
    assert built_on([2, 1], shown) == "b"
    assert built_on([], shown) == built_on(None, shown) == "a"
    assert built_on([4], shown) is None
    assert built_on([], {2: "b"}) is None


def test_unrated_answers_expand_the_chunk_they_were_built_on_and_never_train(
    loop_services: Callable[..., Services],
) -> None:
    """Query association: a question nobody rated pairs with the chunk its answer was built
    on (the first citation, else the first chunk shown), as an expansion only. A question
    with feedback (its votes decide), a golden question and a held-out one never do."""
    services = loop_services(training={"holdout_share": 0.3, "validation_share": 0.2})
    ingest(services, CORPUS, actor="test")
    users = questions()[GOLDEN_SHARE:]
    replay(services, users[:20])  # rated
    built_on = {}
    for item in [*users[20:], *questions()[:5]]:  # never rated; five golden questions too
        answer = ask(services, item["question"], client="test")
        rank = (answer.cited_ranks or [1])[0]
        chunk = next(s["chunk_id"] for s in answer.sources if s["rank"] == rank)
        built_on[normalise(item["question"])] = chunk
    ask(services, users[0]["question"], client="test")  # rated before: not associated

    built = build_training_set(services, _champion(services))
    rows = [json.loads(line) for line in built.path.read_text().splitlines()]
    associated = [r for r in rows if r["part"] == ASSOCIATED]
    expected = {normalise(q["question"]) for q in users[20:]}
    expected = {q for q in expected if not is_heldout(q, 0.3)}
    assert expected and {normalise(r["anchor"]) for r in associated} == expected
    assert all(r["positive_chunk_id"] == built_on[normalise(r["anchor"])] for r in associated)
    assert built.stats["associated_questions"] == len(associated)
    # they expand documents and never train an encoder
    assert built.n_examples == len(rows) - len(associated) == len(read_examples(built.path))
    everything = expansions.from_training_set(built.path, per_chunk=None)
    assert {(r["positive_chunk_id"], r["anchor"]) for r in associated} <= set(everything)
    # the training set's MLflow run holds its examples as its dataset input
    with services.sessions() as session:
        run_id = session.get_one(TrainingSet, built.training_set_id).mlflow_run_id
    [dataset_input] = services.tracker.get_run(str(run_id)).inputs.dataset_inputs
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == built.n_examples

    # the same log without query association: the same examples, nothing associated
    off = loop_services(training={"holdout_share": 0.3, "associate_unrated": False})
    without = build_training_set(off, _champion(services))
    assert without.n_examples == built.n_examples and without.stats["associated_questions"] == 0
    assert not [r for r in without.path.read_text().splitlines() if ASSOCIATED in r]

    # a chunk keeps at most `per_chunk` questions, its confirmed ones before its associated
    # ones and the latest asked first: two unrated asks of a confirmed chunk's own words
    confirmed = next(r for r in rows if r["part"] != ASSOCIATED)
    words = confirmed["positive"].split()
    openings = [" ".join(words[:n]) for n in range(12, len(words))]
    earlier, later = [o for o in openings if not is_heldout(normalise(o), 0.3)][:2]
    for opening in (earlier, later):
        ask(services, opening, client="test")
    built = build_training_set(services, _champion(services))
    rows = [json.loads(line) for line in built.path.read_text().splitlines()]
    chunk = confirmed["positive_chunk_id"]
    on_chunk = [r for r in rows if r["positive_chunk_id"] == chunk]
    associated_on_chunk = [r["anchor"] for r in on_chunk if r["part"] == ASSOCIATED]
    assert sorted(associated_on_chunk) == sorted([earlier, later])
    confirmed_latest_first = [
        r["anchor"]
        for r in sorted(on_chunk, key=lambda r: r["asked_at"], reverse=True)
        if r["part"] != ASSOCIATED
    ]
    preference = [*confirmed_latest_first, later, earlier]
    everything = expansions.from_training_set(built.path, per_chunk=None)
    for cap in range(1, len(preference) + 1):
        capped = expansions.from_training_set(built.path, per_chunk=cap)
        assert sorted(q for c, q in capped if c == chunk) == sorted(preference[:cap])
        assert capped == [pair for pair in everything if pair in set(capped)]  # set order
    # and every chunk the same way
    by_chunk: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_chunk[row["positive_chunk_id"]].append(row)
    preferred = {
        (c, max(its, key=lambda r: (r["part"] != ASSOCIATED, r["asked_at"]))["anchor"])
        for c, its in by_chunk.items()
    }
    assert set(expansions.from_training_set(built.path, per_chunk=1)) == preferred
