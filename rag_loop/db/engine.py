"""The only place that creates the database engine and the session factory."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: writers in other processes meet busy_timeout only
    fcntl = None  # type: ignore[assignment]

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.clock import CLOCK_OPTION, Clock
from rag_loop.errors import BackendUnavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
WRITE_OPTION = "rag_loop_write"
_OPEN_CURSORS = "rag_loop_open_cursors"  # per pooled SQLite connection, in its `info`


def create_db_engine(url: str, *, echo: bool = False, clock: Clock | None = None) -> Engine:
    """An engine that behaves the same on SQLite (WAL) and PostgreSQL, and carries the
    service's clock to every timestamp written through it (`rag_loop.clock`)."""
    options = {CLOCK_OPTION: clock} if clock is not None else {}
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            execution_options=options,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=20,
            max_overflow=20,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
            record.info[_OPEN_CURSORS] = weakref.WeakSet()  # see _sqlite_close_cursors
            # Let SQLAlchemy, not pysqlite, issue BEGIN, so transactions are real.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "after_cursor_execute")
        def _sqlite_track_cursor(conn: Connection, cursor: Any, *_: Any) -> None:
            if cursor.description is not None:  # only a statement with rows stays open
                conn.info[_OPEN_CURSORS].add(cursor)

        @event.listens_for(engine, "reset")
        def _sqlite_close_cursors(_dbapi_connection: Any, record: Any, _state: Any) -> None:
            # A SELECT whose rows were not all read (an error left the session mid-read)
            # keeps its statement open, and since Python 3.11 the rollback that follows no
            # longer ends it. On WAL that pins the pooled connection to its snapshot: once
            # anyone else writes, every write through it fails at once with "database is
            # locked" until the garbage collector frees the cursor. Closed here, before
            # the rollback, the connection goes back to the pool clean.
            cursors = record.info[_OPEN_CURSORS]
            for cursor in list(cursors):
                cursor.close()
            cursors.clear()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A write transaction (see `transaction`) takes the write lock up front with
            # IMMEDIATE: two writers that both started as readers cannot deadlock. Reads
            # use a plain BEGIN and never wait for writers (WAL).
            if conn.get_execution_options().get(WRITE_OPTION):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(
        url,
        echo=echo,
        execution_options=options,
        pool_pre_ping=True,
        pool_size=20,
        max_overflow=20,
    )


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    try:
        command.upgrade(alembic_config(engine), "head")
    except OperationalError as exc:
        raise BackendUnavailable(
            f"cannot reach the database at {engine.url.render_as_string(hide_password=True)}: "
            f"{exc.orig}"
        ) from exc


def _sqlite_write_lock(bind: sessionmaker[Session] | Engine) -> AbstractContextManager[object]:
    """SQLite has one writer at a time. Writers of this process queue on a Python lock,
    which hands over at once; writers in other processes (`serve --workers N`, a CLI
    command beside the server) queue on an advisory file lock beside the database, which
    the kernel hands over at once too. Without it they would meet SQLite's busy handler,
    which polls with sleeps (up to 100 ms each) and collapses throughput under contention.
    SQLite's own locking (BEGIN IMMEDIATE, busy_timeout) still guards against writers that
    do not take this lock."""
    engine = bind if isinstance(bind, Engine) else bind.kw.get("bind")
    if not isinstance(engine, Engine) or engine.dialect.name != "sqlite":
        return nullcontext()
    key = str(engine.url)
    with _LOCKS_GUARD:
        lock = _SQLITE_WRITE_LOCKS.get(key)
        if lock is None:
            lock = _SQLITE_WRITE_LOCKS[key] = _WriteLock(engine.url.database)
        return lock


class _WriteLock:
    """A thread lock, then an exclusive flock() on `<database>-writelock` (POSIX; an
    in-memory database or a system without fcntl has the thread lock only)."""

    def __init__(self, database: str | None) -> None:
        self._thread_lock = threading.Lock()
        self._path = (
            f"{database}-writelock" if database and database != ":memory:" and fcntl else None
        )
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self._path is None:
            return
        try:
            if self._fd is None or self._pid != os.getpid():  # a forked child needs its own
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # waits with the GIL released
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._fd is not None and self._path is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


_LOCKS_GUARD = threading.Lock()
_SQLITE_WRITE_LOCKS: dict[str, _WriteLock] = {}


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """A Core connection in a write transaction, for hot paths that insert rows without
    the ORM (about 1 ms less per request than a Session). Same locking as `transaction`."""
    with (
        _sqlite_write_lock(engine),
        engine.connect().execution_options(**{WRITE_OPTION: True}) as conn,
        conn.begin(),
    ):
        yield conn


def unavailable(exc: DBAPIError) -> BackendUnavailable | None:
    """A database that cannot be reached (connection refused or dropped, locked for too
    long) as the 503 a client may retry; None for any other database error (a bug)."""
    if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
        return BackendUnavailable(f"the database is unavailable: {type(exc.orig).__name__}")
    return None


RETRY_AFTER_SECONDS = 0.25


def insert_rows(engine: Engine, *inserts: tuple[type[Any], Sequence[Mapping[str, Any]]]) -> None:
    """Insert rows into the tables of mapped classes in one write transaction, with Core
    `INSERT`s (an executemany for several rows): the hottest write, an answer's interaction
    and its retrievals, skips the ORM's unit of work. Every column SQLAlchemy would fill in
    by default must be given by the rows' keys or the columns' own defaults.

    A database that is unavailable for a moment (a dropped connection, which the pool
    replaces) gets one more try; then the BackendUnavailable is raised."""
    for attempt in (1, 2):
        try:
            with write_connection(engine) as conn:
                for model, rows in inserts:
                    if rows:
                        conn.execute(insert(model), list(rows))
            return
        except DBAPIError as exc:
            error = unavailable(exc)
            if error is None:
                raise
            if attempt == 2:
                raise error from exc
            time.sleep(RETRY_AFTER_SECONDS)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any error.

    On SQLite it begins with the write lock held (BEGIN IMMEDIATE); plain sessions from the
    factory are for reads and never block on writers.
    """
    with _sqlite_write_lock(factory), factory() as session, session.begin():
        session.connection(execution_options={WRITE_OPTION: True})
        yield session
