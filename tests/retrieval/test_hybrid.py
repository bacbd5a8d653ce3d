"""Hybrid retrieval (BM25 fused with dense) as part of an index version, on the sample
corpus, with the real embedder, real Chroma and SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from rag_loop.corpus.ingest import ingest
from rag_loop.db.engine import transaction
from rag_loop.db.models import IndexVersion
from rag_loop.feedback.corrections import approve
from rag_loop.feedback.lineage import show
from rag_loop.feedback.schemas import FeedbackIn
from rag_loop.feedback.service import submit_feedback
from rag_loop.index import expansions
from rag_loop.index.expansions import Expanded
from rag_loop.index.retrieval_config import DENSE, RetrievalConfig
from rag_loop.index.versions import ServingIndex, champion, retrieval_of, serving_index
from rag_loop.interactions.ask import ask
from rag_loop.retrieval.lexical import LexicalIndexes
from rag_loop.retrieval.search import search
from rag_loop.services import Services
from rag_loop.settings import RetrievalSettings, Settings
from rag_loop.training.validation import FusionCheck
from tests.conftest import CORPUS, CountingEmbedder

HYBRID = {"mode": "hybrid", "dense_weight": 0.5, "hybrid_candidates": 50}


def test_hybrid_is_stored_with_the_version_and_served(
    db_backend: str, make_settings: Callable[..., Settings], embedder: Any
) -> None:
    services = Services.from_settings(make_settings(retrieval=HYBRID), embedder=embedder)
    try:
        ingest(services, CORPUS, actor="test")
        with services.sessions() as session:
            version = champion(session)
            config = retrieval_of(version)
        assert config == RetrievalConfig(mode="hybrid", dense_weight=0.5, candidates=50)
        assert version.retrieval == config.as_dict()
        run = services.tracker.get_run(version.mlflow_run_id)
        assert run.data.params["retrieval"] == config.label
        served = serving_index(services.engine)
        assert served.retrieval == config and served.revision == 0

        # a phone number: a lexical match that the fused ranking puts first
        answer = ask(services, "555 0199")
        assert answer.versions["retrieval"] == "hybrid"
        assert answer.sources[0]["document_id"] == "support/contacting-support"
        scores = [s["score"] for s in answer.sources]
        assert scores == sorted(scores, reverse=True) and 0.0 <= scores[-1] <= scores[0] <= 1.0
        view = show(services.sessions, answer.interaction_id)
        assert view["versions"]["retrieval"] == "hybrid"
        assert view["index_version"]["retrieval"]["mode"] == "hybrid"
    finally:
        services.close()


def test_without_query_terms_hybrid_keeps_the_dense_order(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    services = Services.from_settings(make_settings(retrieval=HYBRID), embedder=embedder)
    try:
        ingest(services, CORPUS, actor="test")
        served = serving_index(services.engine)
        query = "the and of"  # stopwords only: BM25 scores nothing
        vector = embedder.embed_query(query)
        dense = search(services.store, services.lexical, served, DENSE, query, vector, 5, embedder)
        hybrid = search(
            services.store, services.lexical, served, served.retrieval, query, vector, 5, embedder
        )
        assert [h.chunk_id for h in hybrid] == [h.chunk_id for h in dense]
    finally:
        services.close()


def test_an_approved_correction_reaches_the_bm25_side_in_every_process(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    settings = make_settings(retrieval=HYBRID)
    services = Services.from_settings(settings, embedder=embedder)
    other = Services.from_settings(settings, embedder=embedder)  # a second API process
    try:
        ingest(services, CORPUS, actor="test")
        first = ask(services, "How much is the theft excess?")
        before = ask(other, "ART-2 certified lock")  # builds the other's BM25 side
        receipt = submit_feedback(
            services,
            FeedbackIn.model_validate(
                {
                    "interaction_id": first.interaction_id,
                    "thumb": "down",
                    "correction": "Since 2026 the theft excess is 120 euros, or 40 euros with "
                    "an ART-2 certified lock.",
                }
            ),
            actor="test",
        )
        assert receipt.correction_id is not None
        approve(services, receipt.correction_id, reviewer="admin")
        served = serving_index(other.engine)
        assert served.revision == 1
        after = ask(other, "ART-2 certified lock")
        correction = f"correction-{receipt.correction_id}"
        assert correction not in [s["document_id"] for s in before.sources]
        assert after.sources[0]["document_id"] == correction
        lexical = other.lexical.get(served.collection_name, served.revision, served.retrieval)
        assert after.sources[0]["chunk_id"] in lexical.position
    finally:
        other.close()
        services.close()


def test_changing_the_retrieval_setting_makes_a_new_version_without_embedding(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    dense = Services.from_settings(make_settings(retrieval={"mode": "dense"}), embedder=embedder)
    try:
        first = ingest(dense, CORPUS, actor="test")
        assert serving_index(dense.engine).retrieval == DENSE
    finally:
        dense.close()
    hybrid = Services.from_settings(make_settings(retrieval=HYBRID), embedder=embedder)
    try:
        second = ingest(hybrid, CORPUS, actor="test")
        assert second.changed and second.index_version_id != first.index_version_id
        assert second.chunks_embedded == 0 and second.chunks_reused == first.chunks_total
        assert serving_index(hybrid.engine).retrieval.hybrid
        assert not ingest(hybrid, CORPUS, actor="test").changed
    finally:
        hybrid.close()


def test_a_new_version_keeps_the_weight_the_loop_chose() -> None:
    settings = RetrievalSettings(mode="hybrid", dense_weight=0.5)
    learned = RetrievalConfig(mode="hybrid", dense_weight=0.7)
    assert RetrievalConfig.for_new_version(settings, learned) == learned
    # so is its dense expansion; a version stored before the field existed reads it off
    dense_expanded = replace(learned, dense_expansion=True)
    assert RetrievalConfig.for_new_version(settings, dense_expanded) == dense_expanded
    stored = {k: v for k, v in learned.as_dict().items() if k != "dense_expansion"}  # type: ignore[union-attr]
    assert RetrievalConfig.stored(stored) == learned
    assert "dense expansion" in dense_expanded.label and "dense expansion" not in learned.label
    assert RetrievalConfig.for_new_version(settings, None).dense_weight == 0.5
    # anything else changed in the settings: the settings win, weight included
    other = RetrievalSettings(mode="hybrid", dense_weight=0.5, hybrid_candidates=50)
    assert RetrievalConfig.for_new_version(other, learned) == RetrievalConfig.from_settings(other)
    assert RetrievalConfig.for_new_version(settings, DENSE).dense_weight == 0.5
    dense = RetrievalSettings(mode="dense")
    assert RetrievalConfig.for_new_version(dense, learned) == DENSE


def test_validation_ranks_the_way_the_index_version_retrieves(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    """Training chooses epochs and weights on `FusionCheck`'s rankings; they must be the
    rankings the candidate index version will serve."""
    services = Services.from_settings(make_settings(retrieval=HYBRID), embedder=embedder)
    try:
        served, ids, bank = _ingested_bank(services)
        lexical = services.lexical.get(served.collection_name, served.revision, served.retrieval)
        queries = ["how much is the theft excess", "555 0199", "my wheels got nicked"]
        scores = [lexical.scores(q) for q in queries]
        bm25 = [np.array([s[lexical.position[i]] for i in ids], dtype=np.float32) for s in scores]
        check = FusionCheck.build(
            queries,
            [{0}] * len(queries),
            bank,
            bm25,
            incumbent=0.5,
            candidates=50,
        )
        assert check.weights == [0.4, 0.5, 0.6]  # one step either side of the champion's
        vectors = embedder.embed_queries(queries)
        for row, (query, vector) in enumerate(zip(queries, vectors, strict=True)):
            for weight in (0.4, 0.5, 0.6):
                config = replace(served.retrieval, dense_weight=weight)
                hits = search(
                    services.store, services.lexical, served, config, query, vector, 10, embedder
                )
                assert [ids[i] for i in check.rank(check.bank @ vector, row, weight)] == [
                    h.chunk_id for h in hits
                ]
    finally:
        services.close()


def test_validation_chooses_no_weight_that_trades_one_part_for_another() -> None:
    """The mean over every validation query would take a weight that ranks the golden
    tuning questions better by ranking the feedback's validation queries worse; once guarded
    by the champion's scores (as the gate guards every data set), no part may lose more than
    the tolerance, and an encoder no weight of which keeps to it selects nothing."""
    bank = np.eye(3, dtype=np.float32)  # a query's vector is its cosine with each row
    # row 0 is relevant; row 1 wins BM25 for the golden questions and the dense side for the
    # feedback's: a golden question ranks row 0 first from weight 0.55, a feedback one below
    golden = (np.array([1.0, 0.5, 0.0]), np.array([0.4, 1.0, 0.0], dtype=np.float32))
    feedback = (np.array([0.5, 1.0, 0.0]), np.array([1.0, 0.4, 0.0], dtype=np.float32))
    rows = [golden, golden, feedback]
    check = FusionCheck.build(
        ["g1", "g2", "f1"],
        [{0}] * 3,
        bank,
        [b for _, b in rows],
        incumbent=0.5,
        candidates=100,
        parts=["golden:set.jsonl", "golden:set.jsonl", "feedback"],
    )
    vectors = np.stack([v for v, _ in rows])
    champion = check.score(vectors)
    assert champion.dense_weight == 0.6  # 2 golden questions up, the feedback one down
    assert champion.parts_by_weight["0.6"] == pytest.approx(
        {"feedback": 1 / np.log2(3), "golden:set.jsonl": 1.0}
    )
    assert champion.parts_by_weight["0.5"] == pytest.approx(
        {"feedback": 1.0, "golden:set.jsonl": 1 / np.log2(3)}
    )

    guarded = check.guarded(champion, tolerance=0.01)
    kept = guarded.score(vectors)
    assert (kept.dense_weight, kept.within_guard) == (0.5, True)  # ties go to the champion's
    assert kept.selection == kept.ndcg_at_10 == pytest.approx(champion.by_weight["0.5"])
    # a tolerance wider than the feedback's loss lets the better mean through
    assert check.guarded(champion, tolerance=0.5).score(vectors).dense_weight == 0.6

    # an encoder that ranks the feedback's query worse at every weight selects nothing
    worse = vectors.copy()
    worse[2] = [0.0, 1.0, 0.0]
    scored = guarded.score(worse)
    assert not scored.within_guard and scored.selection == 0.0
    assert scored.ndcg_at_10 == max(scored.by_weight.values())


def test_dense_expansion_finds_a_chunk_by_the_questions_it_answers(
    make_settings: Callable[..., Settings], embedder: Any
) -> None:
    """A version with dense expansion scores a chunk by the best of the query's cosines with
    the chunk and with the questions it was expanded with, and `FusionCheck` (which decides
    whether a candidate gets it) ranks exactly as such a version serves."""
    services = Services.from_settings(make_settings(retrieval=HYBRID), embedder=embedder)
    try:
        served, ids, bank = _ingested_bank(services)
        hits = services.store.hits(served.collection_name)
        support = next(h.chunk_id for h in hits if h.document_id == "support/contacting-support")
        asked = "who do I ring when my bike is gone"
        expanded = {support: [asked, "a phone number for help"]}
        lexical = LexicalIndexes(services.store, lambda _collection: Expanded(expanded))
        plain = LexicalIndexes(services.store)
        config = replace(served.retrieval, dense_expansion=True)
        query = "whom should I phone once my bicycle has been stolen"
        vector = embedder.embed_query(query)
        without = search(
            services.store, lexical, served, served.retrieval, query, vector, 10, embedder
        )
        with_ = search(services.store, lexical, served, config, query, vector, 10, embedder)
        assert with_[0].chunk_id == support != without[0].chunk_id
        # without expansions the setting changes nothing
        assert [
            h.chunk_id
            for h in search(services.store, plain, served, config, query, vector, 10, embedder)
        ] == [
            h.chunk_id
            for h in search(
                services.store, plain, served, served.retrieval, query, vector, 10, embedder
            )
        ]

        index = lexical.get(served.collection_name, served.revision, config)
        queries = [query, "how much is the theft excess", "555 0199", asked]
        scores = [index.scores(q) for q in queries]
        bm25 = [np.array([s[index.position[i]] for i in ids], dtype=np.float32) for s in scores]
        check = FusionCheck.build(
            queries, [{0}] * len(queries), bank, bm25, 0.5, 50
        ).with_questions({ids.index(support): expanded[support]})
        vectors = embedder.embed_queries(queries)
        cosines = check.asked(vectors, embedder.embed_queries(check.questions))
        assert cosines is not None
        for row, (text, vector) in enumerate(zip(queries, vectors, strict=True)):
            for weight in (0.4, 0.5, 0.6):
                served_hits = search(
                    services.store,
                    lexical,
                    served,
                    replace(config, dense_weight=weight),
                    text,
                    vector,
                    10,
                    embedder,
                )
                ranked = check.rank(check.bank @ vector, row, weight, cosines[row])
                assert [ids[i] for i in ranked] == [h.chunk_id for h in served_hits]
    finally:
        services.close()


def test_a_version_s_stored_question_vectors_serve_without_embedding_its_questions(
    db_backend: str, make_settings: Callable[..., Settings], embedder: Any
) -> None:
    """The cycle stores the dense side's question vectors with the version's expansions, so
    a process's first search of the version embeds the query alone; a version stored
    without them (older ones) has its questions embedded on first use, to the same ranking.
    A re-ingest keeps the vectors with the expansions when it keeps the query encoder."""
    services = Services.from_settings(make_settings(retrieval=HYBRID), embedder=embedder)
    try:
        served, _, _ = _ingested_bank(services)
        hits = services.store.hits(served.collection_name)
        support = next(h.chunk_id for h in hits if h.document_id == "support/contacting-support")
        questions = ["who do I ring when my bike is gone", "a phone number for help"]
        pairs = [(support, q) for q in questions]
        with transaction(services.sessions) as session:
            expansions.record(session, served.id, pairs, vectors=embedder.embed_queries(questions))
        stored = expansions.of_collection(services.sessions, served.collection_name)
        assert stored.questions == {support: questions}
        assert stored.encoder == embedder.version and set(stored.vectors) == set(pairs)
        config = replace(served.retrieval, dense_expansion=True)
        query = "whom should I phone once my bicycle has been stolen"
        vector = embedder.embed_query(query)
        counting = CountingEmbedder(embedder)
        first = search(
            services.store, services.lexical, served, config, query, vector, 10, counting
        )
        assert counting.batches == 0 and first[0].chunk_id == support

        with transaction(services.sessions) as session:  # as a version built before vectors
            expansions.record(session, served.id, pairs)
        older = LexicalIndexes(
            services.store, lambda c: expansions.of_collection(services.sessions, c)
        )
        again = search(services.store, older, served, config, query, vector, 10, counting)
        assert counting.batches == 1 and again == first
        # stored by another encoder than the one searching: embedded by the searching one
        other = LexicalIndexes(
            services.store, lambda _c: Expanded(stored.questions, stored.vectors, "another@0")
        )
        search(services.store, other, served, config, query, vector, 10, counting)
        assert counting.batches == 2

        with transaction(services.sessions) as session:
            expansions.record(session, served.id, pairs, vectors=embedder.embed_queries(questions))
        services.settings.retrieval.bm25_k1 = 1.5  # a new version of the same chunks
        kept = ingest(services, CORPUS, actor="test")
        assert kept.changed and kept.chunks_embedded == 0
        with services.sessions() as session:
            row = session.get_one(IndexVersion, kept.index_version_id)
        carried = expansions.of_collection(services.sessions, row.collection_name)
        assert carried.questions == stored.questions and carried.encoder == embedder.version
        assert all(np.array_equal(carried.vectors[p], stored.vectors[p]) for p in pairs)
    finally:
        services.close()


def _ingested_bank(services: Services) -> tuple[ServingIndex, list[str], np.ndarray]:
    """The sample corpus ingested: the serving version, its chunk ids and their vectors."""
    ingest(services, CORPUS, actor="test")
    served = serving_index(services.engine)
    ids = sorted(services.store.ids(served.collection_name))
    found = services.store.get_embeddings(served.collection_name, ids)
    return served, ids, np.stack([found[i] for i in ids])
