"""Whole loop cycles on the sample corpus: real fine-tuning, real Chroma collections, real
MLflow registry, real evaluations. The gate thresholds are set per test to force the branch
under test; `test_improvement.py` shows the loop improving retrieval with default gates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from rag_loop.corpus.ingest import IngestResult, ingest
from rag_loop.db.models import Alias, AuditEntry, IndexVersion, ShadowRetrieval, TrainingSet
from rag_loop.errors import Conflict
from rag_loop.evaluation.report import loop_cycles
from rag_loop.feedback.schemas import ChunkLabel, FeedbackIn
from rag_loop.feedback.service import submit_feedback
from rag_loop.index import expansions
from rag_loop.index.versions import champion, describe_versions, serving_index
from rag_loop.interactions.ask import ask
from rag_loop.loop import cycle, golden
from rag_loop.loop.audit import trace
from rag_loop.loop.triggers import tick
from rag_loop.registry.embedders import model_name
from rag_loop.retrieval.lexical import LexicalIndexes
from rag_loop.retrieval.search import search
from rag_loop.services import Services
from tests.conftest import CORPUS, ROOT, CountingEmbedder
from tests.loop.conftest import GOLDEN_SHARE, questions, replay

pytestmark = pytest.mark.slow

USER_QUESTIONS = ROOT / "corpora" / "kestrel" / "user_questions.jsonl"
ALWAYS_PASS = {
    "min_improvement": -1.0,
    "max_regression": 1.0,
    "min_gate_queries": 1,
    "max_p_value": 1.0,
}  # mechanics, not quality


def _aliases(services: Services) -> dict[str, int]:
    with services.sessions() as session:
        return {a.name: a.index_version_id for a in session.scalars(select(Alias))}


def _actions(services: Services) -> list[str]:
    with services.sessions() as session:
        return [a.action for a in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]


def test_promotion_serves_the_new_versions_traces_and_rolls_back(
    with_feedback: Callable[..., Services],
) -> None:
    services = with_feedback(loop=ALWAYS_PASS)
    before = ask(services, "How do I report a stolen bike?")
    cycle_id = cycle.start_cycle(services, trigger="manual", actor="test")
    with pytest.raises(Conflict, match="still collecting"):
        cycle.start_cycle(services, actor="test")  # one active cycle at a time
    view = cycle.run_cycle(services, cycle_id, actor="test")

    assert view["state"] == "promoted", view["error"]
    assert view["decided_by"] == "gate"
    old, new = view["champion_index_version_id"], view["candidate_index_version_id"]
    assert _aliases(services) == {"champion": new, "previous_champion": old}
    assert set(view["stages"]) >= {"collecting", "training", "indexing", "evaluating"}
    assert all(s["seconds"] > 0 and s["peak_rss_mb"] > 100 for s in view["stages"].values())
    embedder = view["embedder"]
    assert embedder["version"].startswith("embedder-c0001@")
    assert embedder["parent_version"] == services.embedder.version
    # four evaluations: held-out feedback and the golden set, for champion and candidate
    runs = view["gate"]["runs"]
    assert {(Path(r["dataset"]).name, r["role"]) for r in runs.values()} == {
        ("heldout.jsonl", "champion"),
        ("heldout.jsonl", "candidate"),
        ("golden.jsonl", "champion"),
        ("golden.jsonl", "candidate"),
    }
    assert "primary" in view["gate"]["deltas"]
    with services.sessions() as session:  # query-side: the document vectors were copied
        built = session.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "index.build", AuditEntry.target == f"index_version:{new}"
            )
        ).one()
    assert built.details["chunks_reused"] > 0 and built.details["chunks_embedded"] == 0

    # every answer now logs the new versions; the candidate embedder embeds the query
    after = ask(services, "How do I report a stolen bike?")
    assert after.versions["index_version"] == new != before.versions["index_version"]
    assert after.versions["embedder_version"] == embedder["version"]
    assert after.sources[0]["document_id"]

    # the MLflow alias moved with it, and the registered version carries its lineage
    name = model_name(services)
    registered = embedder["mlflow_model"].split("/")[1]
    assert services.tracker.model_alias(name, "champion") == registered
    version = services.tracker.client.get_model_version(name, registered)
    assert version.tags["rag_loop.training_set"] == view["training_set"]["content_hash"]
    assert version.tags["rag_loop.base_embedder"] == services.embedder.version

    # the audit walk from the answer to the feedback and the gate that promoted it
    walk = trace(services.sessions, after.interaction_id)
    assert walk["index_version"]["id"] == new
    assert walk["embedder"]["version"] == embedder["version"]
    assert walk["training_set"]["content_hash"] == view["training_set"]["content_hash"]
    assert walk["embedder"]["training_set_id"] == walk["training_set"]["id"]
    assert walk["training_set"]["feedback_interactions"] == len(questions()) - GOLDEN_SHARE
    assert walk["promoted_by"]["loop_cycle"] == cycle_id
    assert len(walk["promoted_by"]["evaluations"]) == 4
    assert all(e["metrics"]["ndcg_at_10"] >= 0 for e in walk["promoted_by"]["evaluations"])

    # rollback: the old index serves at once, the alias moves back, nothing is deleted
    rolled = cycle.rollback(services, actor="test", reason="test")
    assert rolled["state"] == "rolled_back"
    assert _aliases(services)["champion"] == old
    again = ask(services, "How do I report a stolen bike?")
    assert again.versions["index_version"] == old
    assert again.versions["embedder_version"] == services.embedder.version
    assert services.tracker.model_alias(name, "champion") != registered
    with services.sessions() as session:
        assert services.store.exists(session.get_one(IndexVersion, new).collection_name)
    with pytest.raises(Conflict, match="no promoted loop cycle"):
        cycle.rollback(services, actor="test")
    actions = _actions(services)
    for action in ("loop.start", "loop.promote", "loop.rollback"):
        assert action in actions


def test_gate_rejects_and_the_champion_keeps_serving(
    with_feedback: Callable[..., Services],
) -> None:
    # cannot be met, with a floor of questions with room the sample feedback meets
    services = with_feedback(loop={"min_improvement": 1.0, "min_gate_queries": 1})
    before = _aliases(services)
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert view["state"] == "rejected"
    assert "the gate needs at least +1.0" in view["error"]
    assert view["gate"]["passed"] is False
    assert _aliases(services) == before
    with services.sessions() as session:
        candidate = session.get_one(IndexVersion, view["candidate_index_version_id"])
        assert candidate.status == "rejected"
        assert not services.store.exists(candidate.collection_name)  # dropped; numbers stay
    with pytest.raises(Conflict, match="rejected; there is nothing to resume"):
        cycle.resume(services, view["id"])


def test_too_little_feedback_is_rejected_before_training(
    loop_services: Callable[..., Services],
) -> None:
    from rag_loop.corpus.ingest import ingest
    from tests.conftest import CORPUS

    services = loop_services(training={"min_examples": 1000})
    ingest(services, CORPUS, actor="test")
    replay(services, questions()[GOLDEN_SHARE : GOLDEN_SHARE + 5])
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert view["state"] == "rejected" and "not enough feedback" in view["error"]
    assert view["embedder"] is None and view["candidate_index_version_id"] is None


def test_a_crash_mid_training_leaves_the_champion_serving_and_resumes(
    with_feedback: Callable[..., Services], tmp_path: Path
) -> None:
    services = with_feedback(loop=ALWAYS_PASS)
    settings = services.settings
    env = {
        **os.environ,
        "RAG_LOOP_DATA_DIR": str(settings.data_dir),
        "RAG_LOOP_DATABASE_URL": settings.database_url,
        "RAG_LOOP_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "RAG_LOOP_EVALUATION_GOLDEN_SETS": json.dumps(
            [str(p) for p in settings.evaluation.golden_sets]
        ),
        "RAG_LOOP_TRAINING_EPOCHS": "30",  # long enough to be killed in the middle
        "RAG_LOOP_TRAINING_VALIDATION_SHARE": "0",
        "RAG_LOOP_TRAINING_HARD_NEGATIVES": "1",
        "RAG_LOOP_TRAINING_MAX_SEQ_LENGTH": "128",
        "RAG_LOOP_LOOP_MIN_IMPROVEMENT": "-1",
        "RAG_LOOP_LOOP_MAX_REGRESSION": "1",
        "RAG_LOOP_LOOP_MAX_P_VALUE": "1",
        "RAG_LOOP_LOOP_MIN_GATE_QUERIES": "1",
    }
    cli = str(Path(sys.executable).parent / "rag-loop")
    process = subprocess.Popen(
        [cli, "loop", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while True:
        cycles = cycle.list_cycles(services)
        if cycles and cycles[0]["state"] == "training":
            break
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the cycle never started training"
        time.sleep(0.2)
    time.sleep(1)
    process.send_signal(signal.SIGKILL)  # the machine dies mid-training
    process.wait()
    cycle_id = cycles[0]["id"]
    assert cycle.cycle_view(services, cycle_id)["state"] == "training"
    assert _aliases(services) == {"champion": 1}
    answer = ask(services, "How do I report a stolen bike?")
    assert answer.versions["index_version"] == 1  # the champion never stopped serving

    with pytest.raises(Conflict, match="another process"):
        cycle.resume(services, cycle_id)  # its lease is still fresh
    result = subprocess.run(
        [cli, "loop", "resume", str(cycle_id), "--force"],
        env={**env, "RAG_LOOP_TRAINING_EPOCHS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["state"] == "promoted", view["error"]
    assert view["embedder"]["version"].startswith("embedder-c0001@")
    assert not (settings.data_dir / "models" / "embedder-c0001.partial").exists()


def test_shadow_mode_logs_the_candidate_beside_the_champion_then_promotes(
    with_feedback: Callable[..., Services],
) -> None:
    services = with_feedback(
        loop={
            **ALWAYS_PASS,
            "shadow_share": 1.0,
            "shadow_min_labelled": 10,
            "shadow_max_precision_drop": 1.0,
        }
    )
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert view["state"] == "shadow"
    assert view["gate"]["shadow"]["shadowed"] == 0
    index = serving_index(services.engine)
    assert index.id == 1 and index.shadow is not None
    assert index.shadow.id == view["candidate_index_version_id"]
    assert tick(services) == {"advanced": "shadow"}  # no feedback yet: it waits

    users = questions()[GOLDEN_SHARE:]
    interactions = replay(services, users[:12], seed=1)
    with services.sessions() as session:
        shadows = list(session.scalars(select(ShadowRetrieval)))
    assert {s.interaction_id for s in shadows} == set(interactions)
    assert all(s.index_version_id == index.shadow.id and 0 <= s.overlap <= 1 for s in shadows)
    assert all(len(s.chunk_ids) == services.settings.retrieval.top_k for s in shadows)

    assert tick(services) == {"advanced": "promoted"}
    final = cycle.cycle_view(services, view["id"])
    stats = final["gate"]["shadow"]
    assert stats["shadowed"] == 12 and stats["labelled"] == 12
    assert 0 <= stats["champion_precision"] <= 1 and 0 <= stats["candidate_precision"] <= 1
    assert final["decided_by"] == "shadow"
    assert serving_index(services.engine).shadow is None
    assert serving_index(services.engine).id == view["candidate_index_version_id"]


def test_approval_holds_the_candidate_until_a_person_decides(
    with_feedback: Callable[..., Services],
) -> None:
    services = with_feedback(loop={**ALWAYS_PASS, "require_approval": True})
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert view["state"] == "awaiting_approval"
    assert _aliases(services) == {"champion": 1}
    with pytest.raises(Conflict, match="still awaiting_approval"):
        cycle.start_cycle(services, actor="test")
    approved = cycle.approve(services, view["id"], actor="reviewer@example.com")
    assert approved["state"] == "promoted" and approved["decided_by"] == "reviewer@example.com"
    assert _aliases(services)["champion"] == view["candidate_index_version_id"]
    with pytest.raises(Conflict, match="not awaiting approval"):
        cycle.approve(services, view["id"], actor="again")


def test_the_watch_rolls_back_when_live_metrics_regress(
    with_feedback: Callable[..., Services],
) -> None:
    services = with_feedback(
        loop={**ALWAYS_PASS, "rollback_min_samples": 8, "rollback_max_thumbs_down_increase": 0.2}
    )
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert view["state"] == "promoted"
    assert tick(services)["watch"]["status"] == "watching"  # no thumbs on the new index yet

    # users hate the new index: thumbs down and every shown chunk marked not relevant
    for item in questions()[GOLDEN_SHARE : GOLDEN_SHARE + 8]:
        answer = ask(services, item["question"])
        submit_feedback(
            services,
            FeedbackIn(
                interaction_id=answer.interaction_id,
                token=answer.feedback_token,
                thumb="down",
                chunk_labels=[
                    ChunkLabel(chunk_id=s["chunk_id"], relevant=False) for s in answer.sources
                ],
            ),
            actor="user",
        )
    result = tick(services)
    assert result["watch"]["status"] == "rolled_back"
    assert result["watch"]["after"]["thumbs_down_rate"] == 1.0
    assert result["watch"]["before"]["thumbs_down_rate"] < 0.5
    final = cycle.cycle_view(services, view["id"])
    assert final["state"] == "rolled_back" and final["decided_by"] == "watch"
    assert "thumbs-down rate" in final["gate"]["rollback"]["reason"]
    with services.sessions() as session:
        assert champion(session).id == view["champion_index_version_id"]


def test_full_mode_trains_one_model_and_re_embeds_the_corpus(
    with_feedback: Callable[..., Services],
) -> None:
    services = with_feedback(loop=ALWAYS_PASS, training={"mode": "full"})
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert view["state"] == "promoted", view["error"]
    version = view["embedder"]["version"]
    assert version.startswith("embedder-c0001@") and "+" not in version  # symmetric
    with services.sessions() as session:
        built = session.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "index.build",
                AuditEntry.target == f"index_version:{view['candidate_index_version_id']}",
            )
        ).one()
    assert built.details["chunks_embedded"] > 0 and built.details["chunks_reused"] == 0
    answer = ask(services, "How do I report a stolen bike?")
    assert answer.versions["embedder_version"] == version


# a learning rate too small to move any weight: no epoch can rank better than the start
STANDSTILL = {"validation_share": 0.3, "epochs": 2, "learning_rate": 1e-12}


def test_a_cycle_that_learns_nothing_is_rejected_before_indexing(
    with_feedback: Callable[..., Services],
) -> None:
    services = with_feedback(training=STANDSTILL, retrieval={"mode": "dense"}, loop=ALWAYS_PASS)
    before = _aliases(services)
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert view["state"] == "rejected"
    assert view["error"].startswith("nothing learned")
    recipe = view["recipe"]
    assert recipe["encoder"] == "kept" and recipe["best_epoch"] == 0
    assert recipe["validation_queries"] > 0
    assert [v["epoch"] for v in recipe["validation"]] == list(range(recipe["epochs_run"] + 1))
    assert view["candidate_index_version_id"] is None and view["embedder"] is None
    assert _aliases(services) == before
    assert not (services.settings.data_dir / "models" / f"embedder-c{view['id']:04d}").exists()


def test_an_encoder_that_gains_less_than_the_gates_margin_is_not_offered(
    loop_services: Callable[..., Services],
) -> None:
    # users' own words: the epochs rank the validation queries better than the start does,
    # by less than the +1.0 asked
    services, _ = _kept_encoder(
        loop_services,
        expand_documents=False,
        training={"learning_rate": 5e-5, "epochs": 2},
        retrieval={"mode": "dense"},
        loop={**ALWAYS_PASS, "min_improvement": 1.0},
    )
    before = _aliases(services)
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    recipe = view["recipe"]
    start, *epochs = recipe["validation"]
    assert epochs and max(e["ndcg_at_10"] for e in epochs) > start["ndcg_at_10"], recipe
    assert recipe["encoder"] == "kept" and recipe["best_epoch"] == 0
    assert recipe["encoder_margin"] == 1.0
    assert view["state"] == "rejected" and view["error"].startswith("nothing learned"), view
    assert "+1.0 better than the encoder it started from" in view["error"]
    assert _aliases(services) == before
    assert not (services.settings.data_dir / "models" / f"embedder-c{view['id']:04d}").exists()


def _kept_encoder(
    loop_services: Callable[..., Services],
    *,
    expand_documents: bool,
    confirm_first: bool = False,
    holdout_share: float = 0.3,
    loop: dict[str, Any] | None = None,
    **overrides: Any,
) -> tuple[Services, IngestResult]:
    """The sample corpus, every user question asked and rated, and training that cannot
    move the encoder: what a cycle offers then comes from the fusion weight or expansion.
    With `confirm_first` the user only confirms answers whose first chunk is right (a
    relevant label on it) and says nothing about the others."""
    services = loop_services(
        training={
            **STANDSTILL,
            "holdout_share": holdout_share,
            "validation_share": 0.2,
            "expand_documents": expand_documents,
            **overrides.pop("training", {}),
        },
        loop=ALWAYS_PASS if loop is None else loop,
        **overrides,
    )
    base = ingest(services, CORPUS, actor="test")
    items = [json.loads(line) for line in USER_QUESTIONS.read_text().splitlines()]
    if not confirm_first:
        replay(services, items)
        return services, base
    for item in items:
        answer = ask(services, item["question"], client="test")
        first = answer.sources[0]
        if first["document_id"] not in item["document_ids"]:
            continue
        feedback = FeedbackIn(
            interaction_id=answer.interaction_id,
            token=answer.feedback_token,
            chunk_labels=[ChunkLabel(chunk_id=first["chunk_id"], relevant=True)],
        )
        submit_feedback(services, feedback, actor="simulated-user")
    return services, base


def test_a_better_fusion_weight_alone_makes_a_candidate_with_the_same_encoder(
    loop_services: Callable[..., Services],
) -> None:
    # users' own words rank better on the dense side than the handbook's wording does
    # (README: 0.766 dense, 0.626 hybrid nDCG@10), so the validation asks for more of it
    services, _ = _kept_encoder(loop_services, expand_documents=False)
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    recipe = view["recipe"]
    assert recipe["encoder"] == "kept" and recipe["champion_dense_weight"] == 0.5, recipe
    assert recipe["dense_weight"] == 0.6  # one step, towards dense
    assert view["state"] == "promoted", view["error"]
    served = serving_index(services.engine)
    assert served.id == view["candidate_index_version_id"]
    assert served.embedder_version == services.embedder.version  # the same encoder
    assert served.retrieval.dense_weight == 0.6
    # the next ingest keeps what the loop chose
    assert not ingest(services, CORPUS, actor="test").changed


def test_document_expansion_alone_makes_a_candidate_from_training_questions_only(
    loop_services: Callable[..., Services],
) -> None:
    # a cap of two questions per chunk, below what the sample users ask of some chunks
    services, base = _kept_encoder(
        loop_services, expand_documents=True, training={"max_questions_per_chunk": 2}
    )
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    recipe = view["recipe"]
    assert recipe["encoder"] == "kept" and recipe["expansions"] > 0, recipe
    check = recipe["expansion_check"]
    assert check["validation_ndcg_at_10_with"] >= check["validation_ndcg_at_10_without"]
    # the dense side when it ranks the validation queries better than BM25 alone, or as
    # well when too few of them leave room to tell
    dense_side = cycle.takes_dense_side(
        bm25=check["validation_ndcg_at_10_with"],
        dense=check["validation_ndcg_at_10_with_dense"],
        room=recipe["validation_room"],
        floor=services.settings.loop.min_gate_queries,
    )
    assert recipe["dense_expansion"] is dense_side
    assert view["state"] == "promoted", view["error"]
    candidate = view["candidate_index_version_id"]
    served = serving_index(services.engine)
    assert served.id == candidate and served.retrieval.dense_expansion is dense_side
    with services.sessions() as session:
        training_set = session.get_one(TrainingSet, view["training_set"]["id"])
        stored = expansions.of_version(session, candidate)
        assert expansions.of_version(session, base.index_version_id) == []
    cap = recipe["max_questions_per_chunk"]
    assert cap == services.settings.training.max_questions_per_chunk
    assert stored == expansions.from_training_set(Path(training_set.path), per_chunk=cap)
    # the version holds the capped expansions: the cap bit on some chunk
    uncapped = expansions.from_training_set(Path(training_set.path), per_chunk=None)
    assert len(stored) < len(uncapped)
    assert max(Counter(chunk for chunk, _ in stored).values()) == cap == 2
    assert len(stored) == recipe["expansions"]
    # with the dense side, the questions' vectors by the candidate's encoder, stored when built
    read = expansions.of_collection(services.sessions, served.collection_name)
    assert set(read.vectors) == (set(stored) if dense_side else set())
    with services.sessions() as session:  # what `rag-loop index list` and the API show
        listed = {v["id"]: v for v in describe_versions(session)}
    assert listed[candidate]["expansions"] == len(stored)
    assert listed[base.index_version_id]["expansions"] == 0
    heldout = {
        json.loads(line)["question"]
        for line in Path(training_set.heldout_path).read_text().splitlines()
    }
    assert heldout and not heldout & {question for _, question in stored}
    # the BM25 side of the candidate finds a chunk by the words users asked it with
    served = serving_index(services.engine)
    assert served.id == candidate
    # an answer it serves walks back to the feedback its expansions came from, though the
    # encoder is the base model's, which no training set made
    walk = trace(services.sessions, ask(services, "my wheels got nicked").interaction_id)
    assert walk["index_version"]["id"] == candidate
    assert walk["index_version"]["expansions"] == len(stored)
    assert walk["embedder"]["version"] == services.embedder.version
    assert walk["embedder"]["training_set_id"] is None
    assert walk["training_set"]["id"] == training_set.id
    assert walk["promoted_by"]["loop_cycle"] == view["id"]
    chunk_id, question = stored[0]
    before = services.lexical.get(base.collection_name, 0, served.retrieval)
    after = services.lexical.get(served.collection_name, served.revision, served.retrieval)
    assert (
        after.scores(question)[after.position[chunk_id]]
        > (before.scores(question)[before.position[chunk_id]])
    )
    # a new version of the same chunks (another BM25 setting) keeps them
    services.settings.retrieval.bm25_k1 = 1.5
    again = ingest(services, CORPUS, actor="test")
    assert again.changed and again.chunks_embedded == 0
    with services.sessions() as session:
        assert expansions.of_version(session, again.index_version_id) == stored


# questions users might ask about eight passages, each worded with words none of the
# others use: BM25 cannot tie a new one to the earlier ones, their meaning can
PARAPHRASES = {
    "insurance/theft": [
        "my wheels got nicked",
        "someone pinched my ride",
        "bicycle swiped overnight",
        "a thief took it",
        "crook made off with my cycle",
        "robbed of the e-bike",
    ],
    "bike/child-seat": [
        "can my toddler come along",
        "carrying a kid behind",
        "little one riding with me",
        "baby aboard the bicycle",
        "transporting my son",
        "daughter as passenger",
    ],
    "travel/taking-your-bike-abroad": [
        "holiday in France with it",
        "riding in another country",
        "bringing it overseas",
        "vacation in Spain",
        "trip to Italy",
        "journey outside the UK",
    ],
    "account/deleting-your-account": [
        "wipe my profile completely",
        "get rid of my login forever",
        "erase everything about me",
        "remove me for good",
        "permanently close my membership",
        "make my user gone",
    ],
    "privacy/location-tracking": [
        "do you follow where I go",
        "watching my whereabouts",
        "app spying on my position",
        "can you see me all the time",
        "is my GPS monitored",
        "surveillance of trips",
    ],
    "safety/helmets": [
        "do I need a lid",
        "must I wear head protection",
        "is headgear compulsory",
        "something for my skull",
        "bonce bucket rules",
        "crash hat required",
    ],
    "billing/student-discount": [
        "cheaper price for uni people",
        "at college, any reduction",
        "deal for those studying",
        "reduced rate at university",
        "money off for pupils",
        "undergrad savings",
    ],
    "bike/tyres": [
        "my wheel is flat",
        "got a puncture",
        "rubber feels soft",
        "went down after a nail",
        "inner tube burst",
        "deflated after glass",
    ],
}


def test_questions_asked_in_other_words_bring_the_dense_side_with_its_vectors_stored(
    loop_services: Callable[..., Services], embedder: Any
) -> None:
    """Where users ask about the same passages in words no earlier question used, the fit
    part's questions find the validation questions' passages by meaning, not by words: the
    cycle chooses the dense side of the expansions, and stores their vectors by the
    candidate's encoder when it builds the version, so a process's first search of the
    promoted version embeds no question."""
    services = loop_services(
        training={
            **STANDSTILL,
            "holdout_share": 0.0,
            "validation_share": 0.34,
            "expand_documents": True,
        },
        loop=ALWAYS_PASS,
    )
    ingest(services, CORPUS, actor="test")
    replay(
        services,
        [{"question": q, "document_ids": [d]} for d, asked in PARAPHRASES.items() for q in asked],
    )
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    recipe = view["recipe"]
    assert recipe["encoder"] == "kept" and recipe["dense_expansion"] is True, recipe
    check = recipe["expansion_check"]
    assert (
        check["validation_ndcg_at_10_with_dense"]
        > check["validation_ndcg_at_10_with"]
        > check["validation_ndcg_at_10_without"]
    )
    assert view["state"] == "promoted", view["error"]
    served = serving_index(services.engine)
    assert served.id == view["candidate_index_version_id"] and served.retrieval.dense_expansion
    with services.sessions() as session:
        pairs = expansions.of_version(session, served.id)
    assert len(pairs) == recipe["expansions"]
    stored = expansions.of_collection(services.sessions, served.collection_name)
    assert stored.encoder == served.embedder_version == embedder.version
    assert set(stored.vectors) == set(pairs)
    expected = embedder.embed_queries([q for _, q in pairs])
    for pair, vector in zip(pairs, expected, strict=True):
        assert np.allclose(stored.vectors[pair], vector, atol=1e-5)
    # a process that has never searched it: the first search embeds the query alone
    fresh = LexicalIndexes(services.store, partial(expansions.of_collection, services.sessions))
    counting = CountingEmbedder(embedder)
    query = "a burglar nabbed my bike"
    hits = search(
        services.store,
        fresh,
        served,
        served.retrieval,
        query,
        embedder.embed_query(query),
        10,
        counting,
    )
    assert counting.batches == 0 and hits


def test_expansions_that_rank_no_validation_question_better_make_no_candidate(
    loop_services: Callable[..., Services],
) -> None:
    """Feedback that only confirms the chunk each answer already served first: every
    validation question is already ranked as well as it can be, so no fusion weight and no
    expansion can rank one better, and with the encoder kept there is nothing to offer the
    gate, however loose the gate (the expansions and a weight chosen with them do not
    count as learning when they rank the validation questions below the champion). No
    held-out split: its questions would have no room either, and the cycle would end
    before training (the next test)."""
    services, base = _kept_encoder(
        loop_services, expand_documents=True, confirm_first=True, holdout_share=0.0
    )
    before = _aliases(services)
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    recipe = view["recipe"]
    assert recipe["encoder"] == "kept" and recipe["expansions"] > 0, recipe
    assert recipe["validation_champion"] == 1.0, recipe
    assert recipe["validation"][0]["ndcg_at_10"] <= 1.0
    check = recipe["expansion_check"]
    assert check["validation_ndcg_at_10_with"] <= check["validation_ndcg_at_10_without"]
    assert view["state"] == "rejected", view["error"]
    assert view["error"].startswith("nothing learned"), view["error"]
    assert "the champion 1.000" in view["error"]
    assert view["candidate_index_version_id"] is None
    assert _aliases(services) == before == {"champion": base.index_version_id}


def test_held_out_questions_without_room_for_a_gain_train_nothing(
    loop_services: Callable[..., Services],
) -> None:
    """Feedback that only confirms the chunk each answer served first leaves the held-out
    questions ranked perfectly already: no candidate could pass the gate's floor on them,
    and without a golden set to judge instead the cycle ends before training, with the
    champion's run the gate would have used."""
    services, base = _kept_encoder(
        loop_services,
        expand_documents=True,
        confirm_first=True,
        loop={},
        evaluation={"golden_sets": []},
    )
    floor = services.settings.loop.min_gate_queries
    before = _aliases(services)
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert view["state"] == "rejected" and view["decided_by"] == "gate", view["error"]
    assert view["error"].startswith("the champion already scores all but 0 of the")
    assert "so nothing was trained" in view["error"], view["error"]
    assert "training" not in view["stages"] and not view["recipe"]
    assert view["embedder"] is None and view["candidate_index_version_id"] is None
    assert not (services.settings.data_dir / "models" / f"embedder-c{view['id']:04d}").exists()
    gate = view["gate"]
    assert gate["passed"] is False and gate["reasons"] == [view["error"]]
    assert gate["primary_delta"] is None  # no candidate, no delta
    assert gate["primary_room"] is not None and gate["primary_room"] < floor
    (run,) = gate["runs"].values()
    assert run["role"] == "champion" and run["kind"] == "heldout"
    assert run["index_version"] == base.index_version_id and run["n_samples"] > 0
    assert _aliases(services) == before


def _sparse_feedback(loop_services: Callable[..., Services], **overrides: Any) -> Services:
    """Users who only confirm answers whose first chunk is right: no held-out question has
    room. Training that moves the encoder, no validation split, a gate that lets anything
    with one question of room through."""
    loop = {**ALWAYS_PASS, "min_gate_queries": 1, **overrides.pop("loop", {})}
    services, _ = _kept_encoder(
        loop_services,
        expand_documents=True,
        confirm_first=True,
        loop=loop,
        training={"validation_share": 0.0, "epochs": 1, "learning_rate": 5e-5},
        **overrides,
    )
    return services


def test_when_the_held_out_questions_cannot_judge_the_golden_sets_do(
    loop_services: Callable[..., Services], golden_path: Path
) -> None:
    """The same sparse feedback with the operator's golden set configured: the held-out
    questions have no room, the golden questions have, so the cycle trains and the gate
    measures its primary metric on the golden set, the held-out questions guarding only
    (a candidate that ranked what users confirmed worse would still be turned down). No
    validation split and the golden set whole (no tuning part, which the next test takes),
    so training offers its encoder to the gate."""
    services = _sparse_feedback(loop_services, loop={"golden_tuning_share": 0.0})
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    gate = view["gate"]
    assert "training" in view["stages"], view["error"]
    assert gate["primary_kind"] == "golden", gate
    assert gate["heldout_floor"].startswith("the champion already scores all but 0 of the")
    assert gate["primary_room"] >= 1
    kinds = {(run["kind"], run["role"]) for run in gate["runs"].values()}
    assert {("heldout", "champion"), ("golden", "champion")} <= kinds
    assert view["state"] == "promoted", view["error"]  # the gate lets everything through
    assert gate["primary_measured_on"] == [golden_path.stem]
    assert "heldout_feedback.ndcg_at_10" in gate["deltas"]  # measured, guarding
    (line,) = loop_cycles([view])  # the report says where the gate measured
    assert line["primary_kind"] == "golden"


def test_a_golden_tuning_part_validates_the_choices_and_the_gate_judges_the_rest(
    loop_services: Callable[..., Services], golden_path: Path
) -> None:
    """The same sparse feedback: no validation feedback query, none with room. With the
    golden set split (each part leaves the champion room on at least `min_gate_queries`
    questions), its tuning part is what the cycle validates its choices on, and the gate
    judges the candidate on the judged part only, a file of the cycle's that holds none of
    the tuning questions; none of them becomes an expansion or a training example. (The
    champion ranks the sample golden questions all but perfectly; here each also names the
    next question's document, which leaves room on every one.)"""
    rows = [json.loads(line) for line in golden_path.read_text().splitlines()]
    for row, after in zip(rows, rows[1:] + rows[:1], strict=True):
        row["document_ids"] = sorted({*row["document_ids"], *after["document_ids"]})
    golden_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    services = _sparse_feedback(loop_services)
    share = services.settings.loop.golden_tuning_share
    assert share == 0.5  # the default
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert "training" in view["stages"], view["error"]
    gate, recipe = view["gate"], view["recipe"]
    split = gate["golden_split"]
    assert split["applied"] is True and split["share"] == share, split
    assert split["tuning_room"] >= 1 and split["judged_room"] >= 1
    tuning = {r["question"] for r in rows if golden.is_tuning(r["question"], share)}
    assert 0 < len(tuning) < len(rows)
    judged_runs = [run for run in gate["runs"].values() if run["kind"] == "golden"]
    assert {run["role"] for run in judged_runs} == {"champion", "candidate"}
    (judged,) = {Path(run["dataset"]) for run in judged_runs}
    assert judged.is_relative_to(services.settings.data_dir / "loop" / f"cycle-{view['id']:04d}")
    assert judged.name == golden_path.name  # the deltas keep the set's name
    assert [json.loads(line) for line in judged.read_text().splitlines()] == [
        r for r in rows if r["question"] not in tuning
    ]
    assert all(run["n_samples"] == len(rows) - len(tuning) for run in judged_runs)
    assert gate["primary_kind"] == "golden" and gate["primary_measured_on"] == [golden_path.stem]
    # no validation share: the validation queries are the tuning questions, with room
    assert recipe["validation_queries"] == len(tuning)
    assert recipe["validation_room"] == split["tuning_room"]
    # they are one part, the golden set's, guarded on its own as the gate guards the set
    part = f"golden:{golden_path}"
    assert list(recipe["validation_parts"]) == [part]
    assert recipe["validation_parts"][part]["queries"] == len(tuning)
    assert all(set(v["parts"]) == {part} for v in recipe["validation"]), recipe["validation"]
    assert recipe["validation"][0]["within_guard"] is True  # the champion's encoder
    with services.sessions() as session:
        training_set = session.get_one(TrainingSet, view["training_set"]["id"])
    used = {json.loads(line)["anchor"] for line in Path(training_set.path).read_text().splitlines()}
    asked = {q for _, q in expansions.from_training_set(Path(training_set.path), per_chunk=None)}
    assert not (used | asked) & tuning
    (line,) = loop_cycles([view])
    assert line["primary_kind"] == "golden"


def test_golden_questions_about_documents_the_corpus_lacks_have_no_room(
    loop_services: Callable[..., Services], golden_path: Path, tmp_path: Path
) -> None:
    """A golden set written for another corpus (here: its questions name documents this
    corpus does not hold, as the default sample set does over an operator's own corpus)
    scores 0 on every question, champion and candidate alike: no room for a gain, so under
    sparse feedback it cannot judge, and the cycle ends before training instead of training
    a candidate the gate could only turn down at +0.000."""
    elsewhere = tmp_path / "elsewhere.jsonl"
    rows = [json.loads(line) for line in golden_path.read_text().splitlines()]
    for row in rows:
        row["document_ids"] = [f"another-corpus/{d}" for d in row["document_ids"]]
    elsewhere.write_text("".join(json.dumps(row) + "\n" for row in rows))
    services = _sparse_feedback(loop_services, evaluation={"golden_sets": [str(elsewhere)]})
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert view["state"] == "rejected" and view["decided_by"] == "gate", view["error"]
    assert "training" not in view["stages"], view["error"]
    assert (
        f"measured on 0 golden questions that name a document of the corpus "
        f"({len(rows)} name none)" in view["error"]
    ), view["error"]
    assert view["error"].endswith("so nothing was trained")


@pytest.mark.parametrize("golden", [True, False])
def test_without_held_out_questions_the_golden_sets_decide_before_training(
    with_feedback: Callable[..., Services], golden_path: Path, golden: bool
) -> None:
    """No held-out split: the gate measures its primary metric on the golden sets, so the
    champion ranks them before training, and a cycle whose golden questions leave too
    little room for the gate's floor (or that has no golden set, so nothing to evaluate
    on) ends there, with nothing trained."""
    n_golden = sum(1 for line in golden_path.read_text().splitlines() if line.strip())
    services = with_feedback(
        training={"holdout_share": 0.0},
        loop={"min_gate_queries": n_golden},
        evaluation={"golden_sets": [str(golden_path)] if golden else []},
    )
    before = _aliases(services)
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert view["state"] == "rejected", view["error"]
    assert view["error"].endswith("so nothing was trained"), view["error"]
    assert "training" not in view["stages"] and view["embedder"] is None
    assert view["training_set"]["n_heldout"] == 0
    assert _aliases(services) == before
    if not golden:
        assert view["decided_by"] == "loop"
        assert view["error"].startswith("nothing to evaluate on"), view["error"]
        return
    assert view["decided_by"] == "gate"
    gate = view["gate"]
    assert gate["passed"] is False and gate["reasons"] == [view["error"]]
    room = gate["primary_room"]
    assert 0 < room < n_golden  # some golden questions are ranked perfectly already
    assert f"all but {room} of the {n_golden} golden questions perfectly" in view["error"]
    (run,) = gate["runs"].values()
    assert run["role"] == "champion" and run["kind"] == "golden"
    assert run["dataset"] == str(golden_path) and run["n_samples"] == n_golden


def test_the_gate_measures_the_champion_again_once_a_correction_changed_it(
    with_feedback: Callable[..., Services],
) -> None:
    """The champion's held-out run, made before training, is the one the gate compares
    the candidate with, unless the champion changed in place meanwhile: a correction
    approved while the cycle was cut off changes what it retrieves, so the gate measures
    it again."""
    from rag_loop.feedback.corrections import approve
    from rag_loop.registry.embedders import model_folder

    services = with_feedback(loop=ALWAYS_PASS)
    cycle_id = cycle.start_cycle(services, actor="test")
    blocker = model_folder(services, cycle_id)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where training saves its model")
    with pytest.raises(Exception):  # noqa: B017 - whatever the trainer raises
        cycle.run_cycle(services, cycle_id, actor="test")
    failed = cycle.cycle_view(services, cycle_id)
    assert failed["state"] == "failed" and failed["failed_in"] == "training", failed["error"]
    (measured,) = failed["gate"]["runs"].values()
    assert measured["role"] == "champion" and measured["kind"] == "heldout"

    answer = ask(services, "How much is the theft excess?")
    receipt = submit_feedback(
        services,
        FeedbackIn(
            interaction_id=answer.interaction_id,
            thumb="down",
            correction="The theft excess is 120 euros since 2026 (zebra-gate-17).",
        ),
        actor="test",
    )
    assert receipt.correction_id is not None
    approve(services, receipt.correction_id, reviewer="alice")
    blocker.unlink()
    done = cycle.resume(services, cycle_id, actor="test")
    assert done["state"] == "promoted", done["error"]
    runs = done["gate"]["runs"]
    again = runs[f"{measured['dataset']}|champion"]
    assert again["index_version"] == measured["index_version"]
    assert again["revision"] == measured["revision"] + 1
    assert again["eval_run_id"] != measured["eval_run_id"]


def test_a_rollback_serves_the_corrections_approved_since_its_target_served(
    with_feedback: Callable[..., Services],
) -> None:
    """A correction approved while the candidate serves goes into the candidate's
    collection; rolling back syncs the old index with the live chunks first, so the
    correction keeps serving."""
    from rag_loop.feedback.corrections import approve

    services = with_feedback(loop=ALWAYS_PASS)
    promoted = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert promoted["state"] == "promoted"
    answer = ask(services, "How much is the theft excess?")
    text = "The theft excess is 120 euros since 2026 (zebra-rollback-42)."
    receipt = submit_feedback(
        services,
        FeedbackIn(interaction_id=answer.interaction_id, thumb="down", correction=text),
        actor="test",
    )
    assert receipt.correction_id is not None
    approve(services, receipt.correction_id, reviewer="alice")

    rolled = cycle.rollback(services, actor="test", reason="test")
    assert rolled["gate"]["rollback"]["synced"].startswith("synced: 1 added"), rolled["gate"]
    with services.sessions() as session:
        serving = champion(session)
        assert serving.id == promoted["champion_index_version_id"]
        collection = serving.collection_name
    assert text in services.store.texts(collection)
    assert ask(services, "How much is the theft excess?").sources[0]["text"] == text


@pytest.mark.parametrize(
    ("chosen", "validated_with_champion", "changed", "can_tell", "offers"),
    [
        (0.80, True, "dense_side", True, True),  # the dense side alone is a candidate
        (0.80, True, "weight", True, True),
        (0.80, True, "expansions", True, True),
        (0.80, True, None, True, False),  # the champion again: nothing to offer
        (0.75, True, "dense_side", True, False),  # ranks the validation questions no better
        (0.70, True, "weight", True, False),  # worse
        (None, True, "weight", True, False),  # no validation questions: nothing chosen
        (0.80, False, "weight", True, False),  # chosen with another encoder (init_from base)
        # too few validation questions with room to tell: no worse is enough, the gate judges
        (0.75, True, "expansions", False, True),
        (0.75, True, "dense_side", False, True),
        (0.75, True, None, False, False),  # still nothing to offer
        (0.74, True, "expansions", False, False),  # worse
        (0.75, False, "expansions", False, False),
    ],
)
def test_a_kept_encoder_offers_a_candidate_only_when_a_change_ranks_validation_better(
    chosen: float | None,
    validated_with_champion: bool,
    changed: str | None,
    can_tell: bool,
    offers: bool,
) -> None:
    """The rule for a cycle that kept the champion's encoder, each change on its own: the
    dense side of the expansions alone (no new expansion, the same weight) is a candidate,
    as a new weight or new expansions are, when the validation queries rank better, or,
    when too few of them leave the champion room to tell, no worse."""
    changes = {kind: kind == changed for kind in ("weight", "expansions", "dense_side")}
    assert (
        cycle.kept_encoder_offers(
            chosen=chosen,
            champion=0.75,
            validated_with_champion=validated_with_champion,
            changes=changes,
            validation_can_tell=can_tell,
        )
        is offers
    )


@pytest.mark.parametrize(
    ("bm25", "dense", "room", "takes"),
    [
        (0.90, 0.95, 12, True),  # better
        (0.90, 0.95, 0, True),
        (0.95, 0.90, 12, False),  # worse
        (0.95, 0.90, 0, False),  # worse on the few that can move: not a tie
        (0.90, 0.90, 12, False),  # alike, and enough of them could have shown a difference
        (0.90, 0.90, 9, True),  # alike on too few with room to tell: the gate judges
        (0.90, 0.90 + 1e-9, 0, True),  # alike to the figures' six decimals
    ],
)
def test_the_dense_side_goes_to_the_gate_when_better_or_when_validation_cannot_tell(
    bm25: float, dense: float, room: int, takes: bool
) -> None:
    """Kept expansions go to the dense side too when it ranks the validation questions
    better than the BM25 side alone, or as well when fewer of them than the gate's floor
    (10 here) leave the champion room for either side to rank one better."""
    assert cycle.takes_dense_side(bm25=bm25, dense=dense, room=room, floor=10) is takes
