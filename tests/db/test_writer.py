"""The group-committing writer on a real SQLite file: refused items write nothing, a batch
that fails as a whole is retried item by item, and every answer means committed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, insert, select

from rag_loop.db.engine import (
    create_db_engine,
    create_session_factory,
    transaction,
    write_connection,
)
from rag_loop.db.writer import BatchWriter
from rag_loop.errors import InvalidInput

metadata = MetaData()
notes = Table("notes", metadata, Column("id", Integer, primary_key=True), Column("text", String))


def store(conn: Connection, texts: list[str]) -> list[Any]:
    """Refuses empty texts (before writing); a duplicate id breaks the whole statement."""
    results: list[Any] = []
    rows = []
    for text in texts:
        if not text:
            results.append(InvalidInput("empty"))
            continue
        rows.append({"id": len(text) if text.startswith("len:") else None, "text": text})
        results.append(text.upper())
    if rows:
        conn.execute(insert(notes), rows)
    return results


@pytest.fixture
def writer(tmp_path: Path) -> Any:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'w.db'}")
    metadata.create_all(engine)
    writer = BatchWriter(engine)
    yield writer
    writer.close()
    engine.dispose()


def stored(writer: BatchWriter) -> list[str]:
    with writer.engine.connect() as conn:
        return sorted(conn.scalars(select(notes.c.text)))


def test_many_items_one_batch_each_answered_after_commit(writer: BatchWriter) -> None:
    futures = [writer.submit(store, f"note {i}") for i in range(300)]
    assert [f.result() for f in futures] == [f"NOTE {i}" for i in range(300)]
    assert len(stored(writer)) == 300


def test_a_refused_item_writes_nothing_and_others_commit(writer: BatchWriter) -> None:
    futures = [writer.submit(store, text) for text in ("a", "", "b")]
    assert futures[0].result() == "A" and futures[2].result() == "B"
    with pytest.raises(InvalidInput):
        futures[1].result()
    assert stored(writer) == ["a", "b"]


def test_a_failing_batch_is_retried_item_by_item(writer: BatchWriter) -> None:
    # hold the writer on a first item so the next four are queued and go in one batch
    release = threading.Event()

    def wait(conn: Connection, payloads: list[Any]) -> list[Any]:
        release.wait(10)
        return payloads

    held = writer.submit(wait, "held")
    # "len:xx" and "len:yy" both get id 6: the batch insert fails on the primary key,
    # the writer retries each alone, so only the second of the pair fails
    futures = [writer.submit(store, text) for text in ("ok", "len:xx", "len:yy", "fine")]
    release.set()
    assert held.result() == "held"
    assert futures[0].result() == "OK" and futures[3].result() == "FINE"
    assert futures[1].result() == "LEN:XX"
    with pytest.raises(Exception, match="UNIQUE"):
        futures[2].result()
    assert stored(writer) == ["fine", "len:xx", "ok"]


CHILD_WRITER = """
import sys, time
from pathlib import Path
from rag_loop.db.engine import create_db_engine, write_connection
engine = create_db_engine(sys.argv[1])
log = Path(sys.argv[2])
with write_connection(engine):
    log.write_text("child-in\\n")
    time.sleep(1.0)
    with log.open("a") as f:
        f.write("child-out\\n")
"""


def test_writers_in_two_processes_take_turns_on_the_file_lock(tmp_path: Path) -> None:
    """SQLite writers of different processes queue on the lock file beside the database
    (handed over by the kernel, not SQLite's sleeping busy handler): a second process's
    write transaction starts only after the first one ended."""
    import subprocess
    import sys
    import time

    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = create_db_engine(url)
    metadata.create_all(engine)
    log = tmp_path / "log"
    child = subprocess.Popen([sys.executable, "-c", CHILD_WRITER, url, str(log)])
    try:
        while not log.exists() and child.poll() is None:
            time.sleep(0.01)
        assert child.poll() is None, "the child failed before taking the lock"
        with write_connection(engine) as conn:
            with log.open("a") as f:
                f.write("parent-in\n")
            conn.execute(insert(notes), {"text": "after the child"})
    finally:
        assert child.wait(timeout=60) == 0
    assert log.read_text().split() == ["child-in", "child-out", "parent-in"]
    assert (tmp_path / "w.db-writelock").exists()
    engine.dispose()


def test_a_read_cut_short_by_an_error_does_not_lock_out_later_writes(tmp_path: Path) -> None:
    """A SELECT whose rows were not all read when an error left the session still has its
    statement open on the pooled connection, and rolling back does not end it (Python 3.11+
    no longer resets statements on rollback). On SQLite in WAL mode that pins the
    connection to its snapshot: once another connection has written, every write through
    it fails at once with "database is locked", until the cursor is garbage-collected. The
    pool's reset closes such cursors before the connection serves again."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = create_db_engine(url)
    metadata.create_all(engine)
    sessions = create_session_factory(engine)
    with transaction(sessions) as session:
        session.execute(insert(notes), [{"text": f"note {i}"} for i in range(5)])
    kept = []  # what a traceback in a reference cycle keeps alive until the collector runs
    with pytest.raises(RuntimeError, match="while reading"), sessions() as session:
        rows = session.execute(select(notes.c.text))
        kept.append(rows)
        next(iter(rows))
        raise RuntimeError("an error while reading")
    other = create_db_engine(url)  # another process's writer
    with write_connection(other) as conn:
        conn.execute(insert(notes), [{"text": "from elsewhere"}])
    with transaction(sessions) as session:  # the same pooled connection as the read
        session.execute(insert(notes), [{"text": "after the error"}])
    with sessions() as session:
        assert len(session.execute(select(notes)).all()) == 7
    other.dispose()
    engine.dispose()
