"""The SQL store behaves the same on SQLite and PostgreSQL (run with --db to pick one)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, insert, inspect, select, text
from sqlalchemy.exc import DBAPIError

from rag_loop.corpus.ingest import ingest
from rag_loop.db.engine import (
    create_db_engine,
    insert_rows,
    transaction,
    upgrade,
    write_connection,
)
from rag_loop.db.models import (
    AuditEntry,
    Correction,
    Document,
    FeedbackEvent,
    Interaction,
    now_of,
)
from rag_loop.errors import BackendUnavailable
from rag_loop.feedback import corrections
from rag_loop.feedback.lineage import show
from rag_loop.feedback.schemas import FeedbackIn
from rag_loop.feedback.service import (
    FeedbackReceipt,
    Pending,
    check,
    record_many,
    submit_feedback,
)
from rag_loop.interactions.ask import ask
from rag_loop.services import Services
from tests.conftest import CORPUS, PG_ADMIN


def test_migrations_create_every_table_and_are_idempotent(
    services: Services, db_backend: str
) -> None:
    upgrade(services.engine)  # a second run changes nothing
    tables = set(inspect(services.engine).get_table_names())
    assert {
        "documents",
        "chunks",
        "index_versions",
        "aliases",
        "interactions",
        "retrievals",
        "feedback_submissions",
        "feedback_events",
        "corrections",
        "api_keys",
        "audit_log",
        "alembic_version",
    } <= tables
    assert services.engine.dialect.name == ("postgresql" if db_backend == "postgres" else "sqlite")


def test_audit_log_is_append_only(services: Services, db_backend: str) -> None:
    with transaction(services.sessions) as session:
        session.add(AuditEntry(actor="t", action="test", target="x"))
    for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), services.engine.begin() as conn:
            conn.execute(text(statement))
    with services.sessions() as session:
        assert session.scalars(select(AuditEntry.actor)).all() == ["t"]


def test_raw_inserts_store_what_the_orm_stores(services: Services, db_backend: str) -> None:
    """`insert_rows` (the ask path's write) and a one-row Core insert give identical rows,
    JSON, timestamps and NULLs included, and a failure leaves nothing behind."""
    row = {
        "created_at": now_of(services.engine),
        "query": "q",
        "answer": None,
        "status": "ok",
        "error": None,
        "index_version_id": None,
        "collection_name": "c",
        "embedder_version": "e",
        "prompt_version": "p",
        "generator": "extractive",
        "top_k": 5,
        "cited_ranks": [1, 3],
        "latency_ms": {"embed": 1.5, "total": 2.25},
        "api_key_id": None,
        "client": None,
    }
    with services.engine.begin() as conn:
        conn.execute(insert(Interaction), {**row, "id": "core"})
    insert_rows(services.engine, (Interaction, [{**row, "id": "raw"}]))
    with pytest.raises(DBAPIError):  # the second statement fails: the first is rolled back
        insert_rows(
            services.engine,
            (Interaction, [{**row, "id": "rolled-back"}]),
            (Interaction, [{**row, "id": "core"}]),
        )
    with services.sessions() as session:
        stored = {i.id: i for i in session.scalars(select(Interaction))}
    assert set(stored) == {"core", "raw"}
    columns = [c.key for c in Interaction.__table__.columns if c.key != "id"]
    assert [getattr(stored["raw"], c) for c in columns] == [
        getattr(stored["core"], c) for c in columns
    ]
    assert stored["raw"].latency_ms == {"embed": 1.5, "total": 2.25}
    assert stored["raw"].created_at.tzinfo is not None


def test_serve_feedback_review_round_trip(kestrel: Services, db_backend: str) -> None:
    result = ask(kestrel, "How many backup codes do I get with 2FA?")
    assert result.sources[0]["document_id"] == "account/two-factor-authentication"
    receipt = submit_feedback(
        kestrel,
        FeedbackIn(
            interaction_id=result.interaction_id,
            thumb="down",
            correction="Twelve backup codes.",
            chunk_labels=[{"chunk_id": result.sources[0]["chunk_id"], "relevant": True}],
            source={"document_id": "account/two-factor-authentication"},
        ),
        actor="test",
    )
    assert receipt.correction_id is not None
    corrections.approve(kestrel, receipt.correction_id, reviewer="alice")
    view = show(kestrel.sessions, result.interaction_id)
    assert view["labels"] == {
        "thumb": "down",
        "chunk_labels": {result.sources[0]["chunk_id"]: True},
    }
    assert view["corrections"][0]["status"] == "approved"
    assert view["created_at"].endswith("+00:00")  # aware UTC on both backends
    with kestrel.sessions() as session:
        doc = session.get(Document, f"correction-{receipt.correction_id}")
        assert doc is not None and doc.kind == "correction"


def test_concurrent_idempotent_retries_record_once(kestrel: Services, db_backend: str) -> None:
    result = ask(kestrel, "How much is the late payment fee?")
    body = FeedbackIn(interaction_id=result.interaction_id, thumb="up", idempotency_key="same")
    receipts = []

    def send() -> None:
        receipts.append(submit_feedback(kestrel, body, actor="test"))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.submission_id for r in receipts}) == 1
    assert sum(r.created for r in receipts) == 1
    with kestrel.sessions() as session:
        events = session.scalars(
            select(FeedbackEvent).where(FeedbackEvent.interaction_id == result.interaction_id)
        ).all()
        assert len(events) == 1


def test_one_batch_of_mixed_feedback_gives_each_item_its_own_result(
    kestrel: Services, db_backend: str
) -> None:
    """The writer's batch path (Core statements, ids matched by their RETURNING rows) on one
    batch that holds every kind of item: each receipt names exactly its own events and
    correction, and every refused item wrote nothing."""
    first = ask(kestrel, "How many backup codes do I get with 2FA?")
    second = ask(kestrel, "How much is the late payment fee?")
    shown = first.sources[0]["chunk_id"]
    full = FeedbackIn(
        interaction_id=first.interaction_id,
        thumb="down",
        chunk_labels=[{"chunk_id": shown, "relevant": False}],
        source={"document_id": "account/two-factor-authentication"},
        comment="wrong number",
        correction="Twelve backup codes.",
    )
    keyed = FeedbackIn(interaction_id=second.interaction_id, thumb="up", idempotency_key="k")
    items = [
        full,
        keyed,
        keyed,  # a retry in the same batch: answered from the first
        keyed.model_copy(update={"thumb": "down"}),  # same key, other feedback: 409
        FeedbackIn(interaction_id="nope", thumb="up"),  # unknown interaction: 404
        FeedbackIn(  # a chunk that was not shown: 404
            interaction_id=second.interaction_id,
            chunk_labels=[{"chunk_id": "not-shown", "relevant": True}],
        ),
        FeedbackIn(interaction_id=second.interaction_id, correction="It is 15 euros."),
    ]
    batch = [Pending(fb, check(kestrel, fb), "test") for fb in items]
    with write_connection(kestrel.engine) as conn:
        results = record_many(conn, batch)
    assert [type(r).__name__ for r in results] == [
        "FeedbackReceipt",
        "FeedbackReceipt",
        "FeedbackReceipt",
        "Conflict",
        "NotFound",
        "NotFound",
        "FeedbackReceipt",
    ]
    receipts = [r for r in results if isinstance(r, FeedbackReceipt)]
    assert [r.created for r in receipts] == [True, True, False, True]
    assert receipts[1] == replace(receipts[2], created=True)
    with kestrel.sessions() as session:
        events = session.scalars(select(FeedbackEvent).order_by(FeedbackEvent.id)).all()
        by_id = {e.id: e for e in events}
        stored = session.scalars(select(Correction).order_by(Correction.id)).all()
    assert len(events) == 5 + 1 + 1  # nothing from the refused items
    assert [by_id[i].kind for i in receipts[0].event_ids] == [
        "thumb",
        "chunk_label",
        "source_pointer",
        "comment",
        "correction",
    ]
    assert {by_id[i].submission_id for i in receipts[0].event_ids} == {receipts[0].submission_id}
    assert [by_id[i].thumb for i in receipts[1].event_ids] == ["up"]
    assert [(c.id, c.feedback_event_id, c.text, c.status) for c in stored] == [
        (receipts[0].correction_id, receipts[0].event_ids[-1], "Twelve backup codes.", "pending"),
        (receipts[3].correction_id, receipts[3].event_ids[0], "It is 15 euros.", "pending"),
    ]
    # the retry in a later batch is answered from the stored submission
    with write_connection(kestrel.engine) as conn:
        (replayed,) = record_many(conn, [batch[1]])
    assert replayed == receipts[2]


def test_generator_failure_still_records_the_interaction(
    make_settings,
    embedder,
    db_backend: str,  # type: ignore[no-untyped-def]
) -> None:
    from rag_loop.errors import BackendUnavailable

    settings = make_settings(
        generator={"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "timeout_seconds": 5}
    )
    svc = Services.from_settings(settings, embedder=embedder)
    try:
        ingest(svc, CORPUS, actor="test")
        with pytest.raises(BackendUnavailable) as caught:
            ask(svc, "What are the support chat hours?")
        interaction_id = caught.value.details[0]["interaction_id"]
        with svc.sessions() as session:
            row = session.get(Interaction, interaction_id)
            assert row is not None and row.status == "error" and row.answer is None
            assert "cannot be reached" in (row.error or "")
            assert row.failed_stage == "generation"
            assert len(row.retrievals) == 5
        assert caught.value.details[0]["failed_stage"] == "generation"
    finally:
        svc.close()


def test_ingest_serves_while_mlflow_is_down_and_the_registry_catches_up(
    make_settings, embedder, tmp_path: Path, db_backend: str
) -> None:  # type: ignore[no-untyped-def]
    """SQL decides what serves; MLflow follows through the outbox (it used to fail the
    ingest: an MLflow outage blocked serving)."""
    from rag_loop.index.versions import champion
    from rag_loop.registry.embedders import model_name
    from tests.conftest import row_counts

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where MLflow wants a folder")
    settings = make_settings(mlflow={"tracking_uri": f"sqlite:///{blocker}/mlflow.db"})
    svc = Services.from_settings(settings, embedder=embedder)
    try:
        result = ingest(svc, CORPUS, actor="test")
        counts = row_counts(svc)
        assert counts["documents"] > 0 and counts["aliases"] == 1
        with svc.sessions() as session:
            serving = champion(session)
            assert serving.id == result.index_version_id and serving.mlflow_run_id is None
        backlog = svc.outbox.backlog()
        # the base model's registration, the index version's run, the champion alias
        assert backlog["pending"] == 3 and backlog["failing"] >= 1
        assert "MLflow" in backlog["last_error"]

        blocker.unlink()  # MLflow is back
        blocker.mkdir()
        flushed = svc.outbox.flush(now_too=True)
        assert len(flushed.applied) == 3 and flushed.pending == 0
        with svc.sessions() as session:
            assert champion(session).mlflow_run_id is not None
        # the champion alias exists from the first index version on
        assert svc.tracker.model_alias(model_name(svc), "champion") == "1"
        assert svc.outbox.flush(now_too=True).applied == []  # nothing applied twice
    finally:
        svc.close()


def test_an_outbox_entry_that_fails_on_its_own_holds_up_no_other(
    services: Services, tmp_path: Path
) -> None:
    """Only MLflow not answering postpones the other MLflow entries of a flush; an entry
    whose own payload fails (here its dataset file is gone) is retried alone, and the
    entries after it reach MLflow."""
    from rag_loop.db.engine import transaction
    from rag_loop.registry import outbox

    gone = tmp_path / "gone.jsonl"
    with transaction(services.sessions) as session:
        outbox.log_run(
            session,
            "rag-loop-test",
            "broken",
            params={},
            metrics={},
            dataset={
                "rows_from": str(gone),
                "fields": ["anchor"],
                "name": "gone",
                "digest": "0" * 36,
                "source": str(gone),
                "context": "training",
            },
        )
        for n in range(2):
            outbox.log_run(session, "rag-loop-test", f"fine-{n}", params={}, metrics={"n": n})
    flushed = services.outbox.flush(now_too=True)
    assert len(flushed.failed) == 1 and len(flushed.applied) == 2, flushed
    assert flushed.postponed == [] and flushed.pending == 1
    (entry,) = services.outbox.entries(status="pending", limit=10)
    assert "gone.jsonl" in str(entry), entry

    # MLflow refusing what an entry sends (a 4xx: a metric name it does not accept) holds
    # up nothing either; MLflow not answering would (the outage tests)
    with transaction(services.sessions) as session:
        outbox.log_run(session, "rag-loop-test", "refused", params={}, metrics={"a|b": 1.0})
        outbox.log_run(session, "rag-loop-test", "fine-2", params={}, metrics={"n": 2})
    flushed = services.outbox.flush(now_too=True)
    assert len(flushed.failed) == 2 and len(flushed.applied) == 1, flushed
    assert flushed.postponed == [] and flushed.pending == 2
    refused = next(e for e in services.outbox.entries(limit=10) if e["id"] == flushed.failed[1])
    assert refused["last_error"].startswith("MLflow refused: cannot log to MLflow"), refused


@pytest.mark.parametrize(
    ("code", "alone"),
    [
        ("INVALID_PARAMETER_VALUE", True),  # 400: what was sent is wrong
        ("RESOURCE_DOES_NOT_EXIST", True),  # 404: e.g. a run deleted in MLflow
        ("UNAUTHENTICATED", False),  # 401, 403, 429: every entry would get the same
        ("PERMISSION_DENIED", False),
        ("REQUEST_LIMIT_EXCEEDED", False),
        ("INTERNAL_ERROR", False),  # 500, 503: MLflow itself
        ("TEMPORARILY_UNAVAILABLE", False),
    ],
)
def test_mlflow_refusing_a_request_fails_that_entry_alone(code: str, alone: bool) -> None:
    """MLflow's own error codes, as its client raises them: a refusal of what one entry
    sent is an UpstreamError, anything about MLflow or the credentials BackendUnavailable
    (the outbox then postpones every MLflow entry)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    from rag_loop.errors import UpstreamError
    from rag_loop.registry.tracking import registry_failure

    error = MlflowException("no", error_code=getattr(databricks_pb2, code))
    failure = registry_failure("log a run", error)
    assert isinstance(failure, UpstreamError if alone else BackendUnavailable), failure
    assert not isinstance(registry_failure("log a run", OSError("refused")), UpstreamError)


def test_a_discarded_registration_leaves_the_alias_entries_nothing_to_wait_for(
    kestrel: Services, tmp_path: Path
) -> None:
    """The champion alias waits for the serving embedder's registration while it is in
    the outbox; once an operator discarded it (its folder is gone), the alias entries are
    applied as skipped instead of waiting for ever."""
    from rag_loop.db.engine import transaction
    from rag_loop.db.models import EmbedderVersion
    from rag_loop.registry import outbox

    with transaction(kestrel.sessions) as session:
        row = session.scalars(select(EmbedderVersion)).one()
        row.mlflow_model_version = None  # as if its registration had never been applied
        outbox.register_embedder(
            session,
            row,
            run_name="gone",
            params={},
            metrics={},
            tags={},
            folder=tmp_path / "deleted-model",
            description="a model folder deleted by hand",
        )
        outbox.sync_champion_alias(session, "test")
    flushed = kestrel.outbox.flush(now_too=True)
    assert len(flushed.failed) == 2 and flushed.pending == 2, flushed  # the alias waits
    entries = {e["kind"]: e for e in kestrel.outbox.entries()}
    assert "is gone" in entries["mlflow_register"]["last_error"]
    assert "not registered in MLflow yet" in entries["mlflow_alias"]["last_error"]

    kestrel.outbox.discard(entries["mlflow_register"]["id"], actor="test", reason="deleted")
    flushed = kestrel.outbox.flush(now_too=True)
    assert flushed.applied == [entries["mlflow_alias"]["id"]] and flushed.pending == 0
    (alias,) = [e for e in kestrel.outbox.entries(status="done", limit=1)]
    assert "is not registered" in alias["outcome"]["skipped"]


def test_migrations_match_the_models_and_0006_goes_both_ways(
    services: Services, db_backend: str
) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from rag_loop.db.engine import alembic_config
    from rag_loop.db.models import Base

    def feedback_indexes() -> set[str]:
        return {
            str(index["name"])
            for index in inspect(services.engine).get_indexes("feedback_submissions")
        }

    # the unique constraint's index serves lookups by interaction_id; no second index
    assert "ix_feedback_submissions_interaction_id" not in feedback_indexes()
    with services.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []  # the models and the migrations describe the same schema
    config = alembic_config(services.engine)
    command.downgrade(config, "0005")
    assert "ix_feedback_submissions_interaction_id" in feedback_indexes()
    upgrade(services.engine)
    assert "ix_feedback_submissions_interaction_id" not in feedback_indexes()


def test_time_ordered_ids_are_uuid7_and_sort_by_time() -> None:
    import time
    import uuid

    from rag_loop.db.models import time_ordered_id

    first = [time_ordered_id() for _ in range(1000)]
    time.sleep(0.002)
    later = time_ordered_id()
    assert len(set(first)) == 1000
    for value in [*first, later]:
        parsed = uuid.UUID(value)
        assert len(value) == 32 and parsed.hex == value
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert max(first) < later  # a later millisecond sorts after
    milliseconds = int(later[:12], 16)
    assert abs(milliseconds - time.time() * 1000) < 60_000


def test_0007_moves_failed_in_from_the_stages_json_to_its_column_and_back(
    services: Services, db_backend: str
) -> None:
    from datetime import UTC, datetime

    from alembic import command
    from sqlalchemy import Column, MetaData, Table, insert, select

    from rag_loop.db.engine import alembic_config
    from rag_loop.db.models import Base

    config = alembic_config(services.engine)
    command.downgrade(config, "0006")
    # the table as it was at 0006: the model's later columns do not exist yet
    later = {"failed_in", "recipe"}
    model = Base.metadata.tables["loop_cycles"]
    table = Table(
        "loop_cycles",
        MetaData(),
        *(
            Column(c.name, c.type, primary_key=c.primary_key)
            for c in model.c
            if c.name not in later
        ),
    )
    now = datetime.now(UTC)
    stages = {"collecting": {"seconds": 1.0, "peak_rss_mb": 200.0}, "failed_in": "training"}
    with services.engine.begin() as conn:
        conn.execute(
            insert(table).values(
                state="failed",
                trigger="manual",
                trigger_details={},
                created_at=now,
                updated_at=now,
                feedback_until=now,
                gate={},
                stages=stages,
            )
        )
    upgrade(services.engine)
    with services.engine.connect() as conn:
        row = conn.execute(select(model.c.stages, model.c.failed_in)).one()
    assert row.failed_in == "training"
    assert row.stages == {"collecting": {"seconds": 1.0, "peak_rss_mb": 200.0}}
    command.downgrade(config, "0006")
    with services.engine.connect() as conn:
        assert conn.execute(select(table.c.stages)).scalar_one() == stages
    upgrade(services.engine)


def test_an_insert_is_retried_once_after_a_dropped_connection(postgres_url: str) -> None:
    """A PostgreSQL connection killed under an insert (a restart, a failover): the insert
    is tried once more on a fresh connection; killed twice, it is the 503 clients retry."""
    engine = create_db_engine(postgres_url)
    upgrade(engine)
    kills = {"left": 1}

    @event.listens_for(engine, "before_cursor_execute")
    def kill_before_insert(conn: Any, *args: Any) -> None:
        if kills["left"] and args[1].lstrip().upper().startswith("INSERT"):
            kills["left"] -= 1
            pid = conn.connection.dbapi_connection.info.backend_pid
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def row(interaction_id: str) -> dict[str, Any]:
        return {
            "id": interaction_id,
            "created_at": now_of(engine),
            "query": "q",
            "top_k": 5,
            "cited_ranks": [],
            "latency_ms": {},
        }

    try:
        insert_rows(engine, (Interaction, [row("once")]))  # killed once: stored on the retry
        assert kills["left"] == 0
        kills["left"] = 2
        with pytest.raises(BackendUnavailable):  # killed on both tries
            insert_rows(engine, (Interaction, [row("twice")]))
        with engine.connect() as conn:
            stored = conn.scalars(select(Interaction.id)).all()
        assert stored == ["once"]
    finally:
        engine.dispose()
